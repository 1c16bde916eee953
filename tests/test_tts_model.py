"""Piper speech: sentence joins without clicks, resampled to any output rate."""

from __future__ import annotations

import numpy as np
import pytest

from audio import StreamResampler
from models import PiperTts
from models.tts import fade_edges


@pytest.fixture(scope="module")
def tts() -> PiperTts:
    return PiperTts()


def test_speech_is_loud_and_starts_and_ends_at_zero(tts: PiperTts) -> None:
    pcm = tts.synthesize("Please turn on the kitchen lights.")
    assert tts.sample_rate == 22050
    assert 1.0 < len(pcm) / tts.sample_rate < 3.0
    assert np.abs(pcm).max() > 5000
    assert pcm[0] == 0
    assert pcm[-1] == 0
    assert len(tts.synthesize("   ")) == 0


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_sentence_joins_are_continuous_at_every_output_rate(tts: PiperTts, rate: int) -> None:
    a = tts.synthesize("The first sentence.")
    b = tts.synthesize("And the second one!")
    # one resampler for the whole response, as the session does
    stream = StreamResampler(tts.sample_rate, rate)
    joined = np.concatenate(
        [stream.feed(a), stream.feed(b), stream.feed(np.zeros(0, np.int16), last=True)]
    )
    whole = StreamResampler(tts.sample_rate, rate).feed(np.concatenate([a, b]), last=True)
    # chunked resampling equals resampling the concatenation: no seam at the join
    assert len(joined) == len(whole)
    assert np.abs(joined.astype(int) - whole.astype(int)).max() <= 1
    # and around the join the signal is quiet (no click): |x| small, steps small
    join = len(a) * rate // tts.sample_rate
    window = joined[join - rate // 500 : join + rate // 500].astype(int)
    assert np.abs(window).max() < 2000
    assert np.abs(np.diff(window)).max() < 2000


def test_fade_edges_ramps_both_ends() -> None:
    x = np.full(1000, 10000, np.int16)
    y = fade_edges(x, 16000, ms=4)  # 64 samples
    assert y[0] == 0
    assert abs(int(y[-1])) < 200
    assert (y[64:-64] == 10000).all()
    assert np.all(np.diff(y[:64].astype(int)) >= 0)
