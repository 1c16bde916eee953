"""Helpers for end-to-end voice tests: real-time upload, event and stream recorders, WER."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import trio
from httpx_sse import aconnect_sse

from audio import WAV_HEADER_BYTES
from tests.realtime_schema import check_event, prepare

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import httpx

    from tests.conftest import SessionHandle

CHUNK_MS = 100  # what a phone or browser client typically sends


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def voiced_bounds(samples: np.ndarray, threshold: int = 500) -> tuple[int, int]:
    """First and last sample louder than ``threshold`` (the true edges of the speech)."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    return int(loud[0]), int(loud[-1]) + 1


@dataclass
class Events:
    """Records a session's SSE events with their arrival (trio) times.

    Every event is checked against the ``openai`` SDK's models as it arrives (GA, or beta
    with ``beta=True``, which also sends ``OpenAI-Beta: realtime=v1`` unless
    ``beta_header=False``, for a session created with it): an invalid one fails the test.
    ``extensions`` asks for voxwire's own events too.
    """

    got: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    beta: bool = False
    beta_header: bool = True
    extensions: bool = False
    _changed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        # here, before any stream of the session is read (see realtime_schema.prepare)
        prepare(beta=self.beta)

    async def run(self, client: httpx.AsyncClient, s: SessionHandle) -> None:
        url = f"/api/sessions/{s.id}/events"
        if self.extensions:
            url += "?voxwire_events=true"
        beta_header = self.beta and self.beta_header
        headers = s.auth | ({"OpenAI-Beta": "realtime=v1"} if beta_header else {})
        async with aconnect_sse(client, "GET", url, headers=headers) as source:
            async for sse in source.aiter_sse():
                if sse.data:
                    payload = json.loads(sse.data)
                    check_event(payload, beta=self.beta)
                    self.got.append((trio.current_time(), payload))
                    self._changed.set()
                    self._changed = trio.Event()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.got if e["type"] == kind]

    def time_of(self, event: dict[str, Any]) -> float:
        return next(t for t, e in self.got if e is event)

    async def nth(self, kind: str, n: int) -> dict[str, Any]:
        """The ``n``-th event (from 1) of ``kind``, waiting for it."""
        await self.wait_for(kind, lambda e: len(self.of(kind)) >= n)
        return self.of(kind)[n - 1]

    def types(self) -> list[str]:
        return [e["type"] for _, e in self.got]

    async def wait_for(
        self,
        kind: str,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        *,
        within: float = 30,
    ) -> dict[str, Any]:
        with trio.fail_after(within):
            while True:
                for _, e in self.got:
                    if e["type"] == kind and where(e):
                        return e
                await self._changed.wait()


class WavBody:
    """Splits a ``stream_audio`` body into samples, whatever the chunking (sans-IO)."""

    def __init__(self) -> None:
        self._pending = b""
        self._header = True

    def feed(self, data: bytes) -> np.ndarray:
        """The whole samples in ``data`` (after the 44-byte header); may be empty."""
        self._pending += data
        if self._header:
            if len(self._pending) < WAV_HEADER_BYTES:
                return np.zeros(0, np.int16)
            self._pending, self._header = self._pending[WAV_HEADER_BYTES:], False
        cut = len(self._pending) // 2 * 2
        samples = np.frombuffer(self._pending[:cut], np.int16).copy()
        self._pending = self._pending[cut:]
        return samples


@dataclass
class Stream:
    """Records ``stream_audio``: every sample, and when each chunk arrived."""

    rate: int = 16000
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (time, samples so far)
    _parts: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    first_audio: trio.Event = field(default_factory=trio.Event)
    threshold: int = 200

    async def run(self, client: httpx.AsyncClient, s: SessionHandle) -> None:
        url = f"/api/sessions/{s.id}/stream_audio"
        body = WavBody()
        async with client.stream("GET", url, headers=s.auth) as response:
            async for data in response.aiter_bytes():
                samples = body.feed(data)
                if not len(samples):
                    continue
                self._parts.append(samples)
                self.n += len(samples)
                self.chunks.append((trio.current_time(), self.n))
                if np.abs(samples.astype(np.int32)).max(initial=0) > self.threshold:
                    self.first_audio.set()

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self._parts) if self._parts else np.zeros(0, np.int16)

    def voiced_since(self, mark: int, frame_ms: int = 20) -> float:
        """Seconds of reply audio since sample ``mark``: frames not all zero.

        The playout sends exact zeros where it has nothing (between pieces when the TTS
        falls behind under load), so this is the audio played, not the time passed.
        """
        tail = self.samples[mark:]
        step = self.rate * frame_ms // 1000
        blocks = tail[: len(tail) // step * step].reshape(-1, step)
        return float(np.count_nonzero(np.any(blocks != 0, axis=1))) * frame_ms / 1000

    def received_by(self, t: float) -> int:
        """Samples that had arrived at time ``t``."""
        n = 0
        for when, total in self.chunks:
            if when > t:
                break
            n = total
        return n


async def realtime_chunks(
    samples: np.ndarray,
    *,
    rate: int = 16000,
    chunk_ms: int = CHUNK_MS,
    then_silence_s: float = 0.0,
    started: list[float] | None = None,
) -> AsyncIterator[bytes]:
    """``samples`` (then silence) as PCM16 chunks, paced like a live microphone."""
    step = rate * chunk_ms // 1000
    audio = np.concatenate([samples, np.zeros(int(then_silence_s * rate), np.int16)])
    t0 = trio.current_time()
    if started is not None:
        started.append(t0)
    for i, at in enumerate(range(0, len(audio), step)):
        yield audio[at : at + step].astype("<i2").tobytes()
        await trio.sleep_until(t0 + (i + 1) * step / rate)


async def upload(
    client: httpx.AsyncClient, s: SessionHandle, body: bytes | AsyncIterator[bytes]
) -> None:
    r = await client.post(f"/api/sessions/{s.id}/upload_audio", headers=s.auth, content=body)
    assert r.status_code == 204, r.text


def say(text: str, **item: Any) -> dict[str, Any]:
    """conversation.item.create of a user text message (``item`` adds keys, e.g. ``id``)."""
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
            **item,
        },
    }


async def post_events(client: httpx.AsyncClient, s: SessionHandle, *events: Any) -> None:
    r = await client.post(f"/api/sessions/{s.id}/events", headers=s.auth, json=list(events))
    assert r.status_code == 200, r.text


async def push_to_talk(client: httpx.AsyncClient, s: SessionHandle, samples: np.ndarray) -> None:
    """Upload a whole turn at once, then commit it."""
    await upload(client, s, samples.astype("<i2").tobytes())
    await post_events(client, s, {"type": "input_audio_buffer.commit"})
