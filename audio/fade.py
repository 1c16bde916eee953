"""Short linear fades at both ends of a stream of chunks (sans-IO).

A clause synthesized elsewhere arrives in pieces; its first and last few milliseconds are
faded so that clauses joined in one reply never click, as the embedded voice's are
(models/tts.py). The last ``ms`` are held back until :meth:`EdgeFade.end`, since only then
is it known that they are the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from audio.pcm import Samples


class EdgeFade:
    """Feed chunks in order; :meth:`end` gives the faded tail."""

    def __init__(self, rate: int, ms: int = 4) -> None:
        self.n = max(1, rate * ms // 1000)
        self._ramp = np.linspace(0.0, 1.0, self.n, endpoint=False, dtype=np.float32)
        self._faded_in = 0  # samples of the fade-in applied so far
        self._tail = np.zeros(0, np.int16)

    def feed(self, chunk: Samples) -> Samples:
        """The samples that can go out now (all but the last ``ms``)."""
        data = np.concatenate([self._tail, chunk]) if len(self._tail) else chunk
        cut = max(0, len(data) - self.n)
        out, self._tail = data[:cut], data[cut:]
        return self._fade_in(out)

    def end(self) -> Samples:
        """The held tail, faded out (and in, for a stream shorter than both fades)."""
        tail = self._fade_in(self._tail)
        self._tail = np.zeros(0, np.int16)
        if not len(tail):
            return tail
        faded: Samples = np.rint(tail.astype(np.float32) * self._ramp[::-1][-len(tail) :]).astype(
            np.int16
        )
        return faded

    def _fade_in(self, out: Samples) -> Samples:
        todo = min(len(out), self.n - self._faded_in)
        if todo <= 0:
            return out
        head = out[:todo].astype(np.float32) * self._ramp[self._faded_in : self._faded_in + todo]
        self._faded_in += todo
        return np.concatenate([np.rint(head).astype(np.int16), out[todo:]])
