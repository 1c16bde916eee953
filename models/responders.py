"""Responders: turn the conversation into the assistant's reply, streamed.

A responder hands its output to a :class:`ResponseSink` as it has it: text deltas (the
session cuts them into clauses and speaks each one), tool-call pieces, and the token usage
when the backend reports it. ``echo`` (the embedded default, no network) says back what it
heard; ``none`` never replies (transcription only); ``llm`` (models/llm.py) asks an
OpenAI-compatible server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """One streamed piece of a tool call, as chat completions sends them.

    ``index`` tells the calls of one response apart; ``call_id`` and ``name`` come on a
    call's first piece (``None`` on later ones), ``arguments`` is the next piece of its
    JSON arguments (possibly empty).
    """

    index: int
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the backend reported them."""

    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ResponseSink(Protocol):
    """Where a responder's output goes, in the order it is produced."""

    async def text(self, delta: str) -> None: ...

    async def tool_call(self, delta: ToolCallDelta) -> None: ...

    def usage(self, usage: Usage) -> None: ...


@dataclass(frozen=True, slots=True)
class ResponseRequest:
    """What a responder gets for one response.

    ``tools`` and ``tool_choice`` are already in chat-completions form
    (``{"type": "function", "function": {...}}``; ``"auto"``, ``"none"``, ``"required"`` or
    ``{"type": "function", "function": {"name": ...}}``); ``None``/empty means none sent.
    """

    transcript: str  # the latest user text (what echo says back)
    messages: list[dict[str, Any]] = field(default_factory=list)  # OpenAI chat format
    temperature: float = 0.8
    max_output_tokens: int = 4096
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None


class Responder(Protocol):
    """Produces one reply. Cancellation (barge-in) may end it at any await."""

    async def respond(self, request: ResponseRequest, out: ResponseSink) -> None: ...


class EchoResponder:
    """Speaks back the user's latest words."""

    async def respond(self, request: ResponseRequest, out: ResponseSink) -> None:
        if request.transcript:
            await out.text(request.transcript)


class NoResponder:
    """Transcription only: never replies."""

    async def respond(self, request: ResponseRequest, out: ResponseSink) -> None:
        return
