"""PCM16 mono byte streams to int16 sample arrays."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]

_EMPTY: Samples = np.zeros(0, dtype=np.int16)


class PcmDecoder:
    """Decode a PCM16 mono byte stream arriving in arbitrary chunks.

    HTTP chunk boundaries mean nothing (h11 and proxies re-split bodies freely), so a
    sample can straddle two chunks: the odd trailing byte is carried into the next
    ``feed``. Output samples are always native-endian ``int16``.
    """

    def __init__(self, *, big_endian: bool = False) -> None:
        self._dtype = np.dtype(">i2" if big_endian else "<i2")
        self._carry = b""

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because they do not yet form a whole sample (0 or 1)."""
        return len(self._carry)

    def feed(self, data: bytes) -> Samples:
        """Return the whole samples that ``data`` (plus any carried byte) completes."""
        if self._carry:
            data = self._carry + data
        usable = len(data) - (len(data) % 2)
        self._carry = data[usable:]
        if usable == 0:
            return _EMPTY
        return np.frombuffer(data, dtype=self._dtype, count=usable // 2).astype(np.int16)


def pcm16_bytes(samples: Samples) -> bytes:
    """Little-endian PCM16 bytes for ``samples`` (the wire format of ``stream_audio``)."""
    return samples.astype("<i2", copy=False).tobytes()


class AudioChunk:
    """Mono int16 samples tagged with their sample rate (every chunk carries its format)."""

    __slots__ = ("sample_rate", "samples")

    def __init__(self, samples: Samples, sample_rate: int) -> None:
        self.samples = samples
        self.sample_rate = sample_rate

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate
