"""Responders: turn a user's final transcript into the assistant's reply text, streamed.

A responder is an async iterator of text deltas; the session cuts them into sentences and
speaks each one. ``echo`` (the embedded default, no network) says back what it heard;
``none`` never replies (transcription only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator


@dataclass(frozen=True, slots=True)
class ResponseRequest:
    """What a responder gets for one turn."""

    transcript: str
    instructions: str = ""
    temperature: float = 0.8
    max_output_tokens: int = 4096


class Responder(Protocol):
    """Produces one reply as text deltas. Cancellation (barge-in) may end it at any await."""

    def respond(self, request: ResponseRequest) -> AsyncGenerator[str, None]: ...


class EchoResponder:
    """Speaks back the user's transcript."""

    async def respond(self, request: ResponseRequest) -> AsyncGenerator[str, None]:
        if request.transcript:
            yield request.transcript


class NoResponder:
    """Transcription only: never replies."""

    async def respond(self, request: ResponseRequest) -> AsyncGenerator[str, None]:
        return
        yield  # pragma: no cover - makes this an async generator
