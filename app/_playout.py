"""The trio shell around audio/playout.py: real-time pacing and the stream reader."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import trio

from audio import Pacer, PlayoutBuffer, Samples, pcm16_bytes, streaming_wav_header

if TYPE_CHECKING:
    from collections.abc import Callable

    from app._metrics import Metrics

log = logging.getLogger(__name__)

MIN_PREFILL_BYTES = 1024  # Safari wants ~1 KiB before it starts; URLSession holds 512 B.


class Reader:
    """One ``stream_audio`` response: a bounded queue of PCM byte frames."""

    def __init__(self, capacity_frames: int) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](capacity_frames)
        self.dropped_slow = False


@dataclass(frozen=True, slots=True)
class StreamStart:
    """How a ``stream_audio`` response begins (see :meth:`Playout.open_stream`)."""

    prelude: bytes  # WAV header, then padding silence or replayed frames
    reader: Reader
    position_ms: int  # stream position of the first sample after the padding
    padding_bytes: int  # silence after the header that is not part of the stream
    resumed: bool  # the prelude replays the stream from the requested position


class Playout:
    """Paces assistant audio to the current reader in real time, silence when idle.

    Audio put here is played to the attached reader at real-time speed, sent ``lead_ms``
    ahead. With no reader attached and nothing queued the task sleeps; audio queued while
    no one listens is still paced out (a live stream: nobody hears it), so the pipeline
    never blocks on listeners. A reader whose queue fills (slower than real time) is
    dropped; the pipeline never waits for it.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        frame_ms: int,
        lead_ms: int,
        max_s: float,
        reader_queue_ms: int,
        resume_ms: int = 0,
        metrics: Metrics,
        on_reader_dropped: Callable[[], None] = lambda: None,
    ) -> None:
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self.frame_s = self.frame_samples / sample_rate
        self.lead_s = lead_ms / 1000
        self._buffer = PlayoutBuffer(int(max_s * sample_rate))
        self._reader_capacity = max(1, reader_queue_ms // frame_ms)
        self._metrics = metrics
        self._on_reader_dropped = on_reader_dropped
        self._reader: Reader | None = None
        self._wake = trio.Event()
        self._space = trio.Event()
        self.audio_samples_played = 0  # assistant (non-padding) samples handed to readers
        # The stream's timeline: frame n covers [n * frame_ms, (n + 1) * frame_ms). The last
        # ``resume_ms`` of it are kept so a reader that lost its connection can resume.
        self.ticks = 0
        self._history: deque[bytes] = deque(maxlen=max(0, resume_ms // frame_ms))
        # The current response's cursor (see mark()): what of it reached a reader, and when.
        self.cursor_played = 0
        self.cursor_first_at: float | None = None
        self.paused = False  # speech during a reply: silence, the queue kept

    @property
    def queued_samples(self) -> int:
        return self._buffer.queued

    @property
    def has_reader(self) -> bool:
        return self._reader is not None

    def _poke(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def put(self, samples: Samples) -> None:
        """Queue ``samples`` for playout, waiting while the buffer is full.

        Cancellation: safe; nothing is queued once the caller's scope is cancelled, even
        when there is space (a barge-in flush must not be followed by stale audio).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        for start in range(0, len(samples), self._buffer.capacity):
            part = samples[start : start + self._buffer.capacity]
            while self._buffer.space < len(part):
                await self._space.wait()
            self._buffer.push(part)
        self._poke()

    def flush(self) -> int:
        """Drop queued audio (barge-in); return samples dropped."""
        dropped = self._buffer.flush()
        self._space.set()
        self._space = trio.Event()
        return dropped

    def pause(self) -> None:
        """Play silence from the next frame on, keeping what is queued (see resume)."""
        self.paused = True

    def resume(self) -> None:
        """Carry on with the queued audio where :meth:`pause` stopped it."""
        self.paused = False
        self._poke()

    def mark(self) -> None:
        """Start counting a new response's audio from here (buffer assumed empty)."""
        self.cursor_played = 0
        self.cursor_first_at = None

    async def drained(self) -> None:
        """Wait until everything queued has been paced out."""
        while self._buffer.queued > 0:
            await self._space.wait()

    def prelude(self) -> bytes:
        """WAV header plus ``lead`` of silence (at least 1 KiB), written at once."""
        silence_bytes = max(int(self.lead_s * self.sample_rate) * 2, MIN_PREFILL_BYTES)
        silence_bytes += silence_bytes % 2
        return streaming_wav_header(self.sample_rate) + bytes(silence_bytes)

    def open_stream(self, from_ms: int | None = None) -> StreamStart:
        """Attach a new reader (a takeover) and say how its response begins.

        With ``from_ms`` still in the resume buffer the prelude replays the stream from
        that frame to now, and live frames follow without a gap or a repeat (the reader
        is attached before the next tick). Otherwise the response starts live: the
        header and ``lead`` of padding silence.
        """
        header = streaming_wav_header(self.sample_rate)
        if from_ms is not None:
            tick = from_ms // self.frame_ms
            oldest = self.ticks - len(self._history)
            if oldest <= tick <= self.ticks:
                frames = list(self._history)[tick - oldest :]
                reader = self.attach()
                return StreamStart(header + b"".join(frames), reader, tick * self.frame_ms, 0, True)
        prelude = self.prelude()
        return StreamStart(
            prelude, self.attach(), self.ticks * self.frame_ms, len(prelude) - len(header), False
        )

    def attach(self) -> Reader:
        """Attach a new reader, ending the previous one cleanly (takeover)."""
        self.stop()
        reader = Reader(self._reader_capacity)
        self._reader = reader
        self._metrics.stream_readers.inc()
        self._poke()
        return reader

    def detach(self, reader: Reader) -> None:
        """Forget ``reader`` if it is still the current one (its response ended)."""
        reader.send.close()
        if self._reader is reader:
            self._reader = None
            self._metrics.stream_readers.dec()

    def stop(self) -> bool:
        """End the current reader's stream cleanly; return whether there was one."""
        reader = self._reader
        if reader is None:
            return False
        self.detach(reader)
        return True

    def _deliver(self, frame: bytes) -> None:
        reader = self._reader
        if reader is None:
            return
        try:
            reader.send.send_nowait(frame)
        except trio.WouldBlock:
            reader.dropped_slow = True
            self._metrics.stream_readers_dropped.inc()
            self.detach(reader)
            self._on_reader_dropped()

    async def run(self) -> None:
        """Pace frames forever. Cancellation: the only way it ends."""
        while True:
            while self._reader is None and self._buffer.queued == 0:
                await self._wake.wait()
            # The reader's prelude already holds ``lead`` of audio, so frame k is due
            # k frames after now: the client stays about ``lead`` ahead, no more.
            pacer = Pacer(trio.current_time() + self.lead_s, self.frame_s, self.lead_s)
            while self._reader is not None or self._buffer.queued > 0:
                await trio.sleep_until(pacer.next_due())
                if pacer.late_by(trio.current_time()) > self.lead_s:
                    # The loop fell behind so far the client's lead ran out; resync
                    # rather than burst the backlog.
                    self._metrics.stream_underruns.inc()
                    pacer = Pacer(trio.current_time() + self.lead_s, self.frame_s, self.lead_s)
                if self.paused:
                    frame, real = np.zeros(self.frame_samples, np.int16), 0
                else:
                    frame, real = self._buffer.pull(self.frame_samples)
                if real:
                    self._space.set()
                    self._space = trio.Event()
                pacer.sent()
                data = pcm16_bytes(frame)
                self._history.append(data)
                self.ticks += 1
                if self._reader is not None and real:
                    self.audio_samples_played += real
                    self.cursor_played += real
                    if self.cursor_first_at is None:
                        self.cursor_first_at = trio.current_time()
                self._deliver(data)
