"""WAV headers for endless streams."""

from __future__ import annotations

import struct

WAV_HEADER_BYTES = 44
_UNKNOWN = 0xFFFFFFFF


def streaming_wav_header(sample_rate: int, *, channels: int = 1, bits: int = 16) -> bytes:
    """A 44-byte RIFF/WAVE header whose sizes say "unknown" (0xFFFFFFFF).

    Players (ffplay, Safari, AVPlayer, soundfile) treat the maximal size as a stream and
    keep reading until the connection ends.
    """
    block_align = channels * bits // 8
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        _UNKNOWN,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        bits,
        b"data",
        _UNKNOWN,
    )
    assert len(header) == WAV_HEADER_BYTES
    return header
