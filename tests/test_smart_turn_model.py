"""Smart Turn v3.2 (the real ONNX model) on Piper-made speech.

Piper samples its durations and voice noise afresh on every call, and the model's score on
one cut varies a lot with them, so the ordering tests use cuts and sentences that were
checked to stay far apart over many syntheses (the figures are in the comments).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from app._config import ServerConfig
from models import ModelError, ModelPaths, SmartTurn, load_models
from models.smart_turn import WINDOW_SAMPLES, default_model_path
from models.vad import default_model_path as silero_path
from tests.speech import synthesize

PAUSE = np.zeros(3200, np.int16)  # 0.2 s: the pause at which the turn is judged

# Cut at 75 % of the sentence's speech: mid-phrase ("... kitchen li", "... will be li",
# "... cancelled th"). Over 16 syntheses each: finished 0.74-0.99, cut 0.02-0.57.
CUT_FRACTION = 0.75
SENTENCES = (
    "Please turn on the kitchen lights.",
    "Can you tell me what the weather will be like tomorrow?",
    "The train to London was cancelled this morning.",
)


@pytest.fixture(scope="module")
def turn() -> SmartTurn:
    return SmartTurn()


def _finished_and_cut(text: str) -> tuple[np.ndarray, np.ndarray]:
    speech = synthesize((text,), gap_s=0.2, lead_s=0.3)
    start, end = speech.segments[0]
    cut = start + int((end - start) * CUT_FRACTION)
    return speech.samples, np.concatenate((speech.samples[:cut], PAUSE))


def test_finished_sentences_score_higher_than_the_same_audio_cut_mid_phrase(
    turn: SmartTurn,
) -> None:
    finished, cut = [], []
    for text in SENTENCES:
        whole, part = _finished_and_cut(text)
        finished.append(turn.predict(whole))
        cut.append(turn.predict(part))
    for text, p_finished, p_cut in zip(SENTENCES, finished, cut, strict=True):
        assert p_finished > 0.5, text
        assert p_finished > p_cut, text
    assert np.mean(finished) - np.mean(cut) > 0.4  # typically ~0.96 against ~0.1


def test_only_the_last_eight_seconds_count(turn: SmartTurn) -> None:
    speech = synthesize(
        (
            "Hello there, how are you today?",
            "The weather is lovely this morning.",
            "Please turn on the kitchen lights.",
        ),
        gap_s=1.5,
    )
    long = speech.samples
    assert len(long) > WINDOW_SAMPLES + 16000
    assert SmartTurn.window_samples == WINDOW_SAMPLES == 8 * 16000
    p = turn.predict(long)
    assert 0.0 <= p <= 1.0
    assert turn.predict(long[-WINDOW_SAMPLES:]) == pytest.approx(p, abs=1e-6)
    other_start = np.concatenate((np.full(16000, 3000, np.int16), long[-WINDOW_SAMPLES:]))
    assert turn.predict(other_start) == pytest.approx(p, abs=1e-6)


def test_shorter_audio_is_padded_with_silence_in_front(turn: SmartTurn) -> None:
    short, _ = _finished_and_cut(SENTENCES[0])
    assert len(short) < WINDOW_SAMPLES
    p = turn.predict(short)
    assert 0.0 <= p <= 1.0
    padded = np.concatenate((np.zeros(WINDOW_SAMPLES - len(short), np.int16), short))
    assert turn.predict(padded) == pytest.approx(p, abs=1e-6)
    features = turn.features(short)
    assert features.shape == (80, 800)
    assert features.dtype == np.float32
    # the front is silence (the same in every frame), the speech is at the end
    assert features[:, :100].std(axis=1).max() == pytest.approx(0.0, abs=1e-5)
    assert features[:, -200:].std(axis=1).mean() > 0.1


@pytest.mark.parametrize("n", [0, 1, 400, 16000])
def test_empty_and_silent_input_give_a_probability(turn: SmartTurn, n: int) -> None:
    # Documented: silence is "nothing left unfinished" to the model; callers only ask
    # after speech.
    p = turn.predict(np.zeros(n, np.int16))
    assert 0.9 < p <= 1.0


def test_rejects_other_dtypes_and_shapes(turn: SmartTurn) -> None:
    with pytest.raises(ValueError, match="int16"):
        turn.predict(np.zeros(16000, np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int16"):
        turn.predict(np.zeros((2, 16000), np.int16))


def test_an_inference_failure_is_a_model_error() -> None:
    wrong = SmartTurn(silero_path())  # loads, but takes other inputs
    with pytest.raises(ModelError) as info:
        wrong.predict(np.zeros(16000, np.int16))
    assert info.value.model == "turn"


def test_weights_come_from_the_wheel_without_importing_pipecat() -> None:
    path = default_model_path()
    assert path.name == "smart-turn-v3.2-cpu.onnx"
    assert path.is_file()
    assert "pipecat" not in sys.modules


def test_loaded_with_the_other_models_and_overridable_by_config() -> None:
    assert load_models(ModelPaths()).turn.path == default_model_path()
    cfg = ServerConfig.from_env({"VOXWIRE_TURN_MODEL": "/models/turn.onnx"})
    assert cfg.model_paths().turn == Path("/models/turn.onnx")
    assert ServerConfig().model_paths().turn is None
