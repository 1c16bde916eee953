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


def test_the_input_row_written_in_place_scores_as_one_built_per_frame(vad: SileroVad) -> None:
    """``prob`` reuses one input row per stream; the model sees what a fresh row holds."""
    speech = synthesize(("Hello there, how are you today?",)).samples
    state = VadState()
    h = np.zeros((1, 1, 128), np.float32)
    c = np.zeros((1, 1, 128), np.float32)
    context = np.zeros(64, np.float32)
    for i in range(len(speech) // FRAME_SAMPLES):
        frame = speech[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        audio = frame.astype(np.float32) / 32768.0
        x = np.concatenate((context, audio))[None, :]
        out, h, c = vad._session.run(None, {"input": x, "h": h, "c": c})
        context = audio[-64:]
        expected = float(np.asarray(out).reshape(-1)[0])
        assert vad.prob(state, frame) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_frames_scored_in_one_call_score_as_one_call_each(vad: SileroVad, size: int) -> None:
    """``probs`` runs consecutive frames through the model in one call: the same
    probabilities and the same state after it as ``prob`` frame by frame."""
    rng = np.random.default_rng(size)
    speech = synthesize(("Hello there, how are you today?",)).samples
    noise = (rng.standard_normal(len(speech)) * 200).astype(np.int16)
    x = np.clip(speech.astype(np.int32) + noise, -32768, 32767).astype(np.int16)
    frames = [x[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i in range(len(x) // 512)]
    one, many = VadState(), VadState()
    expected = [vad.prob(one, f) for f in frames]
    got: list[float] = []
    for start in range(0, len(frames), size):
        got += vad.probs(many, frames[start : start + size])
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(expected) > 0.5  # (speech, so the state matters)
    # and the next frame after either sees the same state
    assert vad.prob(many, frames[3]) == pytest.approx(vad.prob(one, frames[3]), abs=1e-5)
