"""Real-time playout: a bounded sample buffer and a pacing schedule.

The I/O shell (a trio task) asks :class:`Pacer` when the next frame is due, pulls exactly
one frame from :class:`PlayoutBuffer` (silence when it is empty) and hands it to the reader.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from audio.pcm import Samples


class PlayoutBuffer:
    """A FIFO of samples with a fixed capacity.

    ``pull`` always returns exactly the requested number of samples, padding with silence,
    so the stream never stalls; ``flush`` drops everything queued (barge-in).
    """

    def __init__(self, capacity_samples: int) -> None:
        if capacity_samples <= 0:
            raise ValueError("capacity_samples must be positive")
        self.capacity = capacity_samples
        self._chunks: deque[Samples] = deque()
        self._queued = 0

    @property
    def queued(self) -> int:
        """Samples waiting to be played."""
        return self._queued

    @property
    def space(self) -> int:
        """Samples that can still be pushed."""
        return self.capacity - self._queued

    def push(self, samples: Samples) -> None:
        """Queue ``samples``; raises ``OverflowError`` rather than exceed capacity."""
        if len(samples) > self.space:
            raise OverflowError(f"{len(samples)} samples do not fit in {self.space}")
        if len(samples):
            self._chunks.append(samples)
            self._queued += len(samples)

    def pull(self, n: int) -> tuple[Samples, int]:
        """Take ``n`` samples; return them and how many were real audio (not padding)."""
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        while filled < n and self._chunks:
            head = self._chunks[0]
            take = min(n - filled, len(head))
            out[filled : filled + take] = head[:take]
            filled += take
            if take == len(head):
                self._chunks.popleft()
            else:
                self._chunks[0] = head[take:]
        self._queued -= filled
        return out, filled

    def flush(self) -> int:
        """Drop all queued samples; return how many were dropped."""
        dropped = self._queued
        self._chunks.clear()
        self._queued = 0
        return dropped


class Pacer:
    """When each fixed-length frame of a real-time stream is due.

    Frame ``k`` covers ``[start + k*d, start + (k+1)*d)`` of play time; it is sent ``lead_s``
    early so the client always holds about ``lead_s`` of audio, no more.
    """

    def __init__(self, start: float, frame_s: float, lead_s: float) -> None:
        self.start = start
        self.frame_s = frame_s
        self.lead_s = lead_s
        self.frames_sent = 0

    def next_due(self) -> float:
        """The clock time at which the next frame should be handed out."""
        return self.start + self.frames_sent * self.frame_s - self.lead_s

    def late_by(self, now: float) -> float:
        """How far behind schedule ``now`` is for the next frame (0 when on time)."""
        return max(0.0, now - self.next_due())

    def sent(self) -> None:
        """Record that the next frame went out."""
        self.frames_sent += 1
