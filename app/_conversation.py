"""A session's conversation: Realtime items in order, and the chat messages they make.

Items are what OpenAI Realtime calls them: messages (user, assistant, system), function
calls and function call outputs. :meth:`Conversation.messages` turns them into the history a
chat-completions server takes: an assistant message carries the tool calls that followed it,
each output becomes a ``tool`` message. A call is only sent together with its output (and
an output with its call), as chat-completions servers refuse one without the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

Role = Literal["user", "assistant", "system"]
ItemType = Literal["message", "function_call", "function_call_output"]
Status = Literal["in_progress", "completed", "incomplete"]


@dataclass(slots=True)
class Item:
    """One conversation item; mutable while its response or transcription is in progress."""

    id: str
    role: Role
    text: str = ""
    images: list[str] = field(default_factory=list)  # data: or https: URLs
    type: ItemType = "message"
    status: Status = "completed"
    audio: bool = False  # spoken: its content part is audio (with a transcript)
    call_id: str = ""
    name: str = ""
    arguments: str = ""  # function_call: JSON text
    output: str = ""  # function_call_output
    truncated_ms: int | None = None  # an assistant reply cut at this point of its audio
    audio_ms: int = 0  # an assistant reply's audio, as synthesized
    spoken: list[tuple[str, int]] = field(default_factory=list, repr=False)  # (piece, samples)

    def content(self) -> list[dict[str, Any]]:
        """The item's content parts (GA names; see :func:`app._realtime.to_beta`)."""
        if self.type != "message":
            return []
        if self.role == "user":
            parts: list[dict[str, Any]] = []
            if self.audio:
                transcript = self.text if self.status == "completed" else None
                parts.append({"type": "input_audio", "transcript": transcript})
            elif self.text:
                parts.append({"type": "input_text", "text": self.text})
            parts += [{"type": "input_image"} for _ in self.images]
            return parts
        if self.role == "system":
            return [{"type": "input_text", "text": self.text}]
        if self.audio:
            return [{"type": "output_audio", "transcript": self.text}]
        return [{"type": "output_text", "text": self.text}]

    def describe(self) -> dict[str, Any]:
        """OpenAI Realtime's view of the item (images by reference, not by value)."""
        base: dict[str, Any] = {
            "id": self.id,
            "object": "realtime.item",
            "type": self.type,
            "status": self.status,
        }
        if self.type == "function_call":
            return base | {"call_id": self.call_id, "name": self.name, "arguments": self.arguments}
        if self.type == "function_call_output":
            return base | {"call_id": self.call_id, "output": self.output}
        return base | {"role": self.role, "content": self.content()}

    def message(self) -> dict[str, Any]:
        """This message as one chat message (content parts only when there are images)."""
        if not self.images:
            return {"role": self.role, "content": self.text}
        parts: list[dict[str, Any]] = []
        if self.text:
            parts.append({"type": "text", "text": self.text})
        parts += [{"type": "image_url", "image_url": {"url": url}} for url in self.images]
        return {"role": self.role, "content": parts}


class Conversation:
    """Bounded history: the oldest items go first when it is full."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self.items: list[Item] = []

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert ``item`` after ``previous_item_id`` (the end by default, ``""`` the start).

        Returns the id of the item before it (``None`` at the start).

        Raises:
            KeyError: ``previous_item_id`` is not in the conversation.
        """
        if previous_item_id is None:
            at = len(self.items)
        elif previous_item_id == "":
            at = 0
        else:
            at = self.index(previous_item_id) + 1
        self.items.insert(at, item)
        if len(self.items) > self.max_items:
            del self.items[0]
            at -= 1
        return self.items[at - 1].id if at > 0 else None

    def index(self, item_id: str) -> int:
        """Raises: KeyError: no such item."""
        for i, item in enumerate(self.items):
            if item.id == item_id:
                return i
        raise KeyError(item_id)

    def get(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)

    def delete(self, item_id: str) -> bool:
        try:
            del self.items[self.index(item_id)]
        except KeyError:
            return False
        return True

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def messages(self, instructions: str, extra: list[Item] | None = None) -> list[dict[str, Any]]:
        """The chat history: ``instructions`` as the system message, then the items (or
        ``extra`` items alone, for an out-of-band response).

        Empty messages (a reply cut before anything was heard, a turn with no words) and
        calls without their output (or outputs without their call) are left out.
        """
        system = [{"role": "system", "content": instructions}] if instructions else []
        items = self.items if extra is None else extra
        calls = {i.call_id for i in items if i.type == "function_call" and i.status == "completed"}
        outputs = {i.call_id for i in items if i.type == "function_call_output"}
        paired = calls & outputs
        out: list[dict[str, Any]] = []
        for item in items:
            if item.type == "function_call":
                if item.call_id not in paired:
                    continue
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                last = out[-1] if out else None
                if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                    last["tool_calls"].append(call)
                elif (
                    last is not None
                    and last["role"] == "assistant"
                    and isinstance(last.get("content"), str)
                ):
                    last["tool_calls"] = [call]
                else:
                    out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif item.type == "function_call_output":
                if item.call_id in paired:
                    out.append(
                        {"role": "tool", "tool_call_id": item.call_id, "content": item.output}
                    )
            elif item.text or item.images:
                if item.status == "in_progress":
                    continue
                out.append(item.message())
        return system + out


def last_user_text(items: Sequence[Item]) -> str:
    """The latest user message's text (what the echo says back)."""
    for item in reversed(items):
        if item.type == "message" and item.role == "user" and item.text:
            return item.text
    return ""


def spoken_prefix(spoken: list[tuple[str, int]], played_samples: int) -> str:
    """The text the listener heard: whole sentences played, then the played share of the
    sentence that was cut, ending at a word boundary.

    ``spoken`` holds each synthesized sentence with its number of output samples.
    """
    heard: list[str] = []
    left = played_samples
    for text, samples in spoken:
        if left >= samples:
            heard.append(text)
            left -= samples
            continue
        if left > 0 and samples > 0:
            cut = len(text) * left // samples
            partial = text[:cut]
            if cut < len(text) and not text[cut].isspace():
                partial = partial.rsplit(" ", 1)[0] if " " in partial else ""
            if partial.strip():
                heard.append(partial.strip())
        break
    return " ".join(heard)
