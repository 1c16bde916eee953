"""The trio shell around audio/playout.py: real-time pacing and the stream reader.

Every session's :class:`Playout` is paced by one shared :class:`PlayoutClock` per trio run
(per frame length and lead): a single timer wakes once a frame and hands each active
playout its next frame, instead of one timer (and one task wakeup) per stream.
"""

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
    """One ``stream_audio`` response: a bounded queue of PCM byte writes.

    Each item is ``write_frames`` frames joined (one socket write).
    """

    def __init__(self, capacity_writes: int) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](capacity_writes)
        self.dropped_slow = False


@dataclass(frozen=True, slots=True)
class StreamStart:
    """How a ``stream_audio`` response begins (see :meth:`Playout.open_stream`)."""

    prelude: bytes  # WAV header, then padding silence or replayed frames
    reader: Reader
    position_ms: int  # stream position of the first sample after the padding
    padding_bytes: int  # silence after the header that is not part of the stream
    resumed: bool  # the prelude replays the stream from the requested position


class PlayoutClock:
    """The one pacing schedule of every :class:`Playout` with the same frame and lead.

    Frames are due on a shared grid, one frame length apart. The clock has no task of its
    own: each playout's :meth:`Playout.run` task *hosts* it, and while any playout is
    active (has a reader or queued audio) exactly one host drives the grid, ticking every
    active playout in turn; the others sleep. A driver that is cancelled (its session
    ended) hands the schedule on to another host without moving the grid.
    """

    def __init__(self, frame_s: float, lead_s: float) -> None:
        self.frame_s = frame_s
        self.lead_s = lead_s
        self._active: dict[Playout, None] = {}  # insertion-ordered set
        self._driving = False
        self._changed = trio.Event()
        self._pacer: Pacer | None = None

    @classmethod
    def shared(cls, frame_s: float, lead_s: float) -> PlayoutClock:
        """This trio run's clock for ``frame_s`` and ``lead_s``."""
        try:
            clocks = _CLOCKS.get()
        except LookupError:
            clocks = {}
            _CLOCKS.set(clocks)
        clock = clocks.get((frame_s, lead_s))
        if clock is None:
            clock = clocks[(frame_s, lead_s)] = cls(frame_s, lead_s)
        return clock

    @property
    def active(self) -> int:
        """Playouts being ticked."""
        return len(self._active)

    def next_due(self) -> float | None:
        """When the next frame is due on the grid (``None`` while the clock is idle)."""
        return None if self._pacer is None else self._pacer.next_due()

    def activate(self, playout: Playout) -> None:
        """Tick ``playout`` from the next frame on (it has a reader or queued audio)."""
        if playout not in self._active:
            self._active[playout] = None
            if not self._driving:  # a driver picks it up at its next frame
                self._poke()

    def deactivate(self, playout: Playout) -> None:
        self._active.pop(playout, None)

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def host(self, playout: Playout) -> None:
        """Lend this task to the clock until cancelled (``playout``'s run task).

        Cancellation: the only way it ends; ``playout`` stops being ticked, and another
        host takes over the driving if this one was driving.
        """
        try:
            while True:
                if self._driving or not self._active:
                    await self._changed.wait()
                    continue
                self._driving = True
                try:
                    await self._drive()
                finally:
                    self._driving = False
                    if self._active:  # cancelled: another host takes over
                        self._poke()
        finally:
            self.deactivate(playout)

    async def _drive(self) -> None:
        # Frame k of the grid is handed out at start + k * frame_s: the readers' preludes
        # already hold ``lead`` of audio, so a new grid starts at once.
        if self._pacer is None:
            self._pacer = Pacer(trio.current_time(), self.frame_s, 0.0)
        try:
            while self._active:
                await trio.sleep_until(self._pacer.next_due())
                now = trio.current_time()
                late = self._pacer.late_by(now) > self.lead_s
                if late:
                    # The loop fell behind so far the clients' lead ran out: resync rather
                    # than burst the backlog.
                    self._pacer = Pacer(now, self.frame_s, 0.0)
                self._pacer.sent()
                for playout in list(self._active):
                    if late:
                        playout.note_underrun()
                    if not playout.tick(now):
                        self.deactivate(playout)
        finally:
            if not self._active:
                self._pacer = None  # the next activation starts a new grid


_CLOCKS: trio.lowlevel.RunVar[dict[tuple[float, float], PlayoutClock]] = trio.lowlevel.RunVar(
    "voxwire_playout_clocks"
)


class Playout:
    """Paces assistant audio to the current reader in real time, silence when idle.

    Audio put here is played to the attached reader at real-time speed, sent ``lead_ms``
    ahead. With no reader attached and nothing queued it is not ticked at all; audio
    queued while no one listens is still paced out (a live stream: nobody hears it), so
    the pipeline never blocks on listeners. A reader whose queue fills (slower than real
    time) is dropped; the pipeline never waits for it.

    Frames are pulled one frame length apart (history, cursor and barge-in flushes work
    per frame) and handed to the reader ``write_frames`` at a time, in one write, once the
    last of them is due: the client holds at most ``lead`` + one frame (the barge-in bound),
    and at least ``lead`` - (``write_frames`` - 1) frames.
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
        write_frames: int = 1,
        metrics: Metrics,
        on_reader_dropped: Callable[[], None] = lambda: None,
    ) -> None:
        if write_frames < 1:
            raise ValueError("write_frames must be at least 1")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self.frame_s = self.frame_samples / sample_rate
        self.lead_s = lead_ms / 1000
        self.write_frames = write_frames
        self._buffer = PlayoutBuffer(int(max_s * sample_rate))
        self._reader_capacity = max(1, reader_queue_ms // (frame_ms * write_frames))
        self._metrics = metrics
        self._on_reader_dropped = on_reader_dropped
        self._reader: Reader | None = None
        self._pending: list[bytes] = []  # frames pulled for the reader, not yet handed over
        self._space = trio.Event()
        self._silence = pcm16_bytes(np.zeros(self.frame_samples, np.int16))
        self._clock: PlayoutClock | None = None
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
    def clock(self) -> PlayoutClock:
        """The shared clock that paces this playout (this trio run's)."""
        if self._clock is None:
            self._clock = PlayoutClock.shared(self.frame_s, self.lead_s)
        return self._clock

    @property
    def queued_samples(self) -> int:
        return self._buffer.queued

    @property
    def has_reader(self) -> bool:
        return self._reader is not None

    def _activate(self) -> None:
        self.clock.activate(self)

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
        if len(samples):
            self._activate()

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
        if self._buffer.queued:
            self._activate()

    def mark(self) -> None:
        """Start counting a new response's audio from here (buffer assumed empty)."""
        self.cursor_played = 0
        self.cursor_first_at = None

    async def drained(self) -> None:
        """Wait until everything queued has been paced out."""
        while self._buffer.queued > 0:
            await self._space.wait()

    def prelude(self, extra_s: float = 0.0) -> bytes:
        """WAV header plus ``lead`` (+ ``extra_s``) of silence (at least 1 KiB), written at
        once."""
        silence_bytes = max(int((self.lead_s + extra_s) * self.sample_rate) * 2, MIN_PREFILL_BYTES)
        silence_bytes += silence_bytes % 2
        return streaming_wav_header(self.sample_rate) + bytes(silence_bytes)

    def open_stream(self, from_ms: int | None = None) -> StreamStart:
        """Attach a new reader (a takeover) and say how its response begins.

        With ``from_ms`` still in the resume buffer the prelude replays the stream from
        that frame to now, and live frames follow without a gap or a repeat (the reader
        is attached before the next tick). Otherwise the response starts live: the
        header, ``lead`` of padding silence, and the time until the shared clock's next
        frame (so the reader's lead does not depend on where in a frame it joined).
        """
        header = streaming_wav_header(self.sample_rate)
        if from_ms is not None:
            tick = from_ms // self.frame_ms
            oldest = self.ticks - len(self._history)
            if oldest <= tick <= self.ticks:
                frames = list(self._history)[tick - oldest :]
                reader = self.attach()
                return StreamStart(header + b"".join(frames), reader, tick * self.frame_ms, 0, True)
        due = self.clock.next_due()
        prelude = self.prelude(0.0 if due is None else max(0.0, due - trio.current_time()))
        return StreamStart(
            prelude, self.attach(), self.ticks * self.frame_ms, len(prelude) - len(header), False
        )

    def attach(self) -> Reader:
        """Attach a new reader, ending the previous one cleanly (takeover)."""
        self.stop()
        reader = Reader(self._reader_capacity)
        self._reader = reader
        self._metrics.stream_readers.inc()
        self._activate()
        return reader

    def detach(self, reader: Reader) -> None:
        """Forget ``reader`` if it is still the current one (its response ended)."""
        reader.send.close()
        if self._reader is reader:
            self._reader = None
            self._pending.clear()
            self._metrics.stream_readers.dec()

    def stop(self) -> bool:
        """End the current reader's stream cleanly; return whether there was one."""
        reader = self._reader
        if reader is None:
            return False
        if self._pending:  # frames already paced out for it: they are its last write
            self._deliver(b"".join(self._pending))
            if self._reader is None:  # it was too slow for even that
                return True
        self.detach(reader)
        return True

    def _deliver(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            return
        self._pending.clear()
        try:
            reader.send.send_nowait(data)
        except trio.WouldBlock:
            reader.dropped_slow = True
            self._metrics.stream_readers_dropped.inc()
            self.detach(reader)
            self._on_reader_dropped()

    def note_underrun(self) -> None:
        self._metrics.stream_underruns.inc()

    def tick(self, now: float) -> bool:
        """Pace out the frame due ``now`` (the clock calls this once a frame).

        Returns whether the playout stays active (a reader, or audio still queued).
        """
        if self.paused:
            data, real = self._silence, 0
        else:
            frame, real = self._buffer.pull(self.frame_samples)
            data = pcm16_bytes(frame) if real else self._silence
        if real:
            self._space.set()
            self._space = trio.Event()
        self._history.append(data)
        self.ticks += 1
        if self._reader is not None:
            if real:
                self.audio_samples_played += real
                self.cursor_played += real
                if self.cursor_first_at is None:
                    self.cursor_first_at = now
            self._pending.append(data)
            if len(self._pending) >= self.write_frames:
                self._deliver(b"".join(self._pending))
        return self._reader is not None or self._buffer.queued > 0

    async def run(self) -> None:
        """Host the shared clock forever. Cancellation: the only way it ends."""
        await self.clock.host(self)
