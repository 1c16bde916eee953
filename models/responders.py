"""Responders: turn the conversation into the assistant's reply text, streamed.

A responder calls ``emit`` with each text delta as it has it; the session cuts the deltas
into sentences and speaks each one. ``echo`` (the embedded default, no network) says back
what it heard; ``none`` never replies (transcription only); ``llm`` (models/llm.py) asks an
OpenAI-compatible server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Emit = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ResponseRequest:
    """What a responder gets for one response."""

    transcript: str  # the latest user text (what echo says back)
    messages: list[dict[str, Any]] = field(default_factory=list)  # OpenAI chat format
    temperature: float = 0.8
    max_output_tokens: int = 4096


class Responder(Protocol):
    """Produces one reply. Cancellation (barge-in) may end it at any await."""

    async def respond(self, request: ResponseRequest, emit: Emit) -> None: ...


class EchoResponder:
    """Speaks back the user's latest words."""

    async def respond(self, request: ResponseRequest, emit: Emit) -> None:
        if request.transcript:
            await emit(request.transcript)


class NoResponder:
    """Transcription only: never replies."""

    async def respond(self, request: ResponseRequest, emit: Emit) -> None:
        return
