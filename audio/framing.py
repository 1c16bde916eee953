"""Fixed-size framing of a sample stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from audio.pcm import Samples


class Framer:
    """Cut a stream of samples into frames of exactly ``frame_samples``.

    Silero VAD wants 512-sample frames at 16 kHz; whatever sizes arrive, the frames that
    come out are the same (the property tests check every split).
    """

    def __init__(self, frame_samples: int) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self.frame_samples = frame_samples
        self._pending: Samples = np.zeros(0, dtype=np.int16)

    @property
    def pending(self) -> int:
        """Samples held until the next frame is complete."""
        return len(self._pending)

    def feed(self, samples: Samples) -> list[Samples]:
        """Append ``samples``; return every frame now complete, oldest first."""
        if len(samples) == 0:
            return []
        buf = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        n = len(buf) // self.frame_samples
        frames = [
            buf[i * self.frame_samples : (i + 1) * self.frame_samples].copy() for i in range(n)
        ]
        self._pending = buf[n * self.frame_samples :].copy()
        return frames

    def clear(self) -> int:
        """Drop the partial frame; return how many samples were dropped."""
        dropped = len(self._pending)
        self._pending = np.zeros(0, dtype=np.int16)
        return dropped

    def flush(self) -> Samples:
        """Hand out the partial frame as it is (end of a push-to-talk turn)."""
        rest = self._pending
        self._pending = np.zeros(0, dtype=np.int16)
        return rest
