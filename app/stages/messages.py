"""What flows between the stages: frozen values (and the one-shot channel a turn handed
over before its transcript carries), so no two tasks share a mutable object."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import trio

    from app._conversation import Item

PIPELINE_RATE = 16000  # VAD and STT run at 16 kHz
FRAME_SAMPLES = 512  # one Silero VAD frame (32 ms)

Int16 = np.ndarray[Any, np.dtype[np.int16]]


def new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(12)


def new_item_id() -> str:
    return new_id("item_")


@dataclass(frozen=True, slots=True)
class Frame:
    """512 samples at 16 kHz; ``start`` counts samples since the session's first one."""

    samples: Int16
    start: int
    arrived: float  # trio time the audio was taken from the upload


@dataclass(frozen=True, slots=True)
class Control:
    """Client buffer events, carried in-band so they apply after the audio sent before them."""

    kind: Literal["commit", "clear"]


@dataclass(frozen=True, slots=True)
class Scored:
    """A frame and its speech probability (``None``: not scored, push-to-talk)."""

    frame: Frame
    prob: float | None


@dataclass(frozen=True, slots=True)
class ResponseSpec:
    """What a ``response.create`` asked for; ``None`` fields take the session's config."""

    instructions: str | None = None
    modalities: tuple[str, ...] | None = None
    # "none": out of band, the output is not added to the conversation
    conversation: Literal["auto", "none"] = "auto"
    input: tuple[Item, ...] | None = None  # the context instead of the conversation
    metadata: dict[str, str] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    voice: str | None = None
    event_id: str | None = None  # the client event, named in error events


@dataclass(frozen=True, slots=True)
class UserTurn:
    """A committed, transcribed user turn (or a ``response.create``), for the responder."""

    item_id: str
    transcript: str
    speech_end_at: float
    stopped_at: float
    transcript_at: float | None  # None: still to come (``later``)
    prefetched: tuple[str, Int16] | None = None  # (first clause, its speech) for echo
    spec: ResponseSpec | None = None  # response.create's parameters
    # Handed over before its final transcript (echo): ``prefetched`` is spoken at once,
    # the (transcript, transcript_at) comes here; closed without one if the decode failed.
    later: trio.MemoryReceiveChannel[tuple[str, float]] | None = None
