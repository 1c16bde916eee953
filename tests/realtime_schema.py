"""OpenAI Realtime conformance: every server event checked against the ``openai`` SDK's own
models (GA: ``openai.types.realtime``; beta: ``openai.types.beta.realtime``).

The SDK's models allow extra fields, so voxwire's additions (the latency waterfall,
``audio_ms``) pass; a missing or mistyped field, an unknown event type or a GA name in the
beta vocabulary (and the other way round) does not.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

# voxwire's own events (only sent to readers that ask: ?voxwire_events=true)
EXTENSIONS = ("voxwire.output_audio_buffer.paused", "voxwire.output_audio_buffer.resumed")


@cache
def _adapter(beta: bool) -> TypeAdapter[Any]:
    if beta:
        from openai.types.beta.realtime import RealtimeServerEvent as BetaEvent

        return TypeAdapter(BetaEvent)
    from openai.types.realtime import RealtimeServerEvent

    return TypeAdapter(RealtimeServerEvent)


def prepare(*, beta: bool = False) -> None:
    """Build the validator now (about a second, once per process). Built lazily at a
    session's first event, it held up the reader's event loop, and a stream read in the
    same loop seemed to stall by as much (bench/latency.py's barge-in read ~1 s late)."""
    _adapter(beta)


def check_event(payload: dict[str, Any], *, beta: bool = False) -> None:
    """Raise AssertionError naming the event when it is not a valid server event."""
    if payload.get("type") in EXTENSIONS:
        return
    try:
        _adapter(beta).validate_python(payload)
    except ValidationError as exc:
        vocabulary = "beta" if beta else "GA"
        raise AssertionError(
            f"not a valid OpenAI Realtime {vocabulary} server event: {payload}\n{exc}"
        ) from None
