"""Streaming sample-rate conversion (soxr), chunk-size independent."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import soxr

if TYPE_CHECKING:
    from audio.pcm import Samples


class StreamResampler:
    """Resample a mono int16 stream from ``in_rate`` to ``out_rate`` chunk by chunk.

    soxr keeps the filter state between calls, so joins between chunks are seamless; when
    the rates are equal this is the identity and costs nothing.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            # float32 in soxr: its int16 path rounds differently depending on how the
            # stream is chunked; rounding ourselves keeps output independent of chunking.
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )

    def feed(self, samples: Samples, *, last: bool = False) -> Samples:
        """Resample ``samples``; ``last=True`` flushes the filter's tail."""
        if self._stream is None:
            return samples
        out = np.asarray(
            self._stream.resample_chunk(samples.astype(np.float32), last=last), dtype=np.float32
        )
        result: Samples = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        return result
