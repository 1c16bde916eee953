"""A session's conversation history, in the shape chat-completions servers take."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant", "system"]


@dataclass(slots=True)
class Item:
    id: str
    role: Role
    text: str
    images: list[str] = field(default_factory=list)  # data: or https: URLs

    def message(self) -> dict[str, Any]:
        """This item as one chat message (content parts only when there are images)."""
        if not self.images:
            return {"role": self.role, "content": self.text}
        parts: list[dict[str, Any]] = []
        if self.text:
            parts.append({"type": "text", "text": self.text})
        parts += [{"type": "image_url", "image_url": {"url": url}} for url in self.images]
        return {"role": self.role, "content": parts}

    def describe(self) -> dict[str, Any]:
        """OpenAI Realtime's view of the item (images by reference, not by value)."""
        kind = "input_text" if self.role == "user" else "text"
        content: list[dict[str, Any]] = [{"type": kind, "text": self.text}] if self.text else []
        content += [{"type": "input_image"} for _ in self.images]
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": self.role,
            "content": content,
        }


class Conversation:
    """Bounded history: the oldest items go first when it is full."""

    def __init__(self, max_items: int) -> None:
        self.items: deque[Item] = deque(maxlen=max_items)

    def add(self, item: Item) -> Item:
        self.items.append(item)
        return item

    def messages(self, instructions: str) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": instructions}] if instructions else []
        return system + [item.message() for item in self.items]

    def last_user_text(self) -> str:
        for item in reversed(self.items):
            if item.role == "user" and item.text:
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
