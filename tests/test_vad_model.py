"""Silero VAD (the real ONNX model) plus the turn detector on Piper-made speech."""

from __future__ import annotations

import numpy as np
import pytest

from audio.turn import SpeechStarted, SpeechStopped, TurnDetector
from models.vad import FRAME_SAMPLES, SileroVad, VadState
from tests.speech import synthesize


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def test_two_sentences_give_two_turns_near_the_true_boundaries(vad: SileroVad) -> None:
    speech = synthesize(("Hello there, how are you today?", "The weather is lovely this morning."))
    det = TurnDetector(prefix_padding_ms=0, silence_duration_ms=500, min_speech_ms=250)
    state = VadState()
    events = []
    x = speech.samples
    for i in range(len(x) // FRAME_SAMPLES):
        frame = x[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        events += det.feed(vad.prob(state, frame), FRAME_SAMPLES)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * 2
    for (start, end), began, ended in zip(speech.segments, events[::2], events[1::2], strict=True):
        assert isinstance(began, SpeechStarted)
        assert isinstance(ended, SpeechStopped)
        assert abs(began.start_sample - start) < 0.25 * 16000  # within 250 ms
        assert abs(ended.end_sample - end) < 0.35 * 16000


def test_silence_and_noise_are_not_speech(vad: SileroVad) -> None:
    state = VadState()
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(16000) * 300).astype(np.int16)
    probs = [vad.prob(state, noise[i : i + 512]) for i in range(0, 16000 - 511, 512)]
    probs += [vad.prob(state, np.zeros(512, np.int16)) for _ in range(10)]
    assert max(probs) < 0.5


def test_rejects_wrong_frame_size(vad: SileroVad) -> None:
    with pytest.raises(ValueError, match="512"):
        vad.prob(VadState(), np.zeros(480, np.int16))
