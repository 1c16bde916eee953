"""Smart Turn v3.2 (ONNX, BSD-2): is the user's turn complete at this pause?

The weights ship in the ``pipecat-ai`` wheel, installed with ``--no-deps`` for that file
alone: pipecat is never imported (it pulls loguru and much more). The features are
computed here with faster-whisper's numpy feature extractor, so neither transformers nor
torch is needed.

Preprocessing, as in pipecat's ``LocalSmartTurnAnalyzerV3`` (checked to give the same
features to within float32 rounding, and the same probabilities):

1. keep the last 8 s of 16 kHz audio; shorter audio is zero-padded at the *start*,
   so the pause being judged is always at the end of the window;
2. int16 to float in [-1, 1), then zero-mean, unit-variance over the whole padded
   window (Whisper's ``do_normalize``, variance epsilon 1e-7);
3. Whisper log-mel: 80 Slaney mel bins, 400-point periodic Hann STFT, hop 160, centred
   with reflect padding, last frame dropped, ``log10`` floored at 1e-10, clamped to 8
   below the maximum, then ``(x + 4) / 4``: an ``[80, 800]`` array;
4. the model (input ``input_features`` ``[batch, 80, 800]``, output ``logits``
   ``[batch, 1]``, which already ends in a sigmoid) gives P(turn complete).

Blocking code: call :meth:`SmartTurn.predict` from a worker thread. The session holds no
per-stream state, so one instance serves every session.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from faster_whisper.feature_extractor import FeatureExtractor

from models._errors import INFERENCE_ERRORS, ModelError
from models._onnx import CPU
from models._onnx import session as onnx_session

if TYPE_CHECKING:
    from collections.abc import Sequence

SAMPLE_RATE = 16000
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE
N_MELS = 80
N_FRAMES = WINDOW_SAMPLES // 160  # 800 frames of 10 ms
NORM_EPS = 1e-7  # transformers' WhisperFeatureExtractor variance epsilon
WHEEL = "pipecat-ai"
WHEEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def default_model_path() -> Path:
    """``smart-turn-v3.2-cpu.onnx`` inside the ``pipecat-ai`` wheel, found without importing it.

    Raises:
        FileNotFoundError: the wheel is not installed (``pip install --no-deps
            "pipecat-ai==1.14.0"``; the Makefile does it).
    """
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{WHEEL} is not installed: pip install --no-deps '{WHEEL}==1.14.0'"
        ) from None
    return Path(str(dist.locate_file(WHEEL_FILE)))


class SmartTurn:
    """P(turn complete) for the last 8 s of 16 kHz mono audio that ends at a pause."""

    window_samples = WINDOW_SAMPLES
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        path: Path | None = None,
        *,
        threads: int = 1,
        providers: Sequence[str] = CPU,
    ) -> None:
        self.path = path or default_model_path()
        self._session = onnx_session(self.path, threads=threads, providers=providers)
        self._input = self._session.get_inputs()[0].name  # "input_features"
        # Stateless after construction (only reads its filters), so threads may share it.
        self._mel = FeatureExtractor(
            feature_size=N_MELS,
            sampling_rate=SAMPLE_RATE,
            hop_length=160,
            chunk_length=WINDOW_S,
            n_fft=400,
        )

    def features(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
        """The model's input for ``samples``: normalised Whisper log-mel, ``[80, 800]``.

        Raises:
            ValueError: ``samples`` is not one-dimensional int16.
        """
        if samples.ndim != 1 or samples.dtype != np.int16:
            raise ValueError(f"expected 1-D int16 samples, got {samples.dtype} {samples.shape}")
        window = np.zeros(WINDOW_SAMPLES, np.float32)
        tail = samples[-WINDOW_SAMPLES:]
        if len(tail):
            window[-len(tail) :] = tail.astype(np.float32) / 32768.0
        window = (window - window.mean()) / np.sqrt(window.var() + NORM_EPS)
        mel: npt.NDArray[np.float32] = np.asarray(self._mel(window, padding=0), np.float32)
        if mel.shape != (N_MELS, N_FRAMES):
            raise ValueError(f"log-mel has shape {mel.shape}, expected {(N_MELS, N_FRAMES)}")
        return mel

    def predict(self, samples: npt.NDArray[np.int16]) -> float:
        """P(turn complete) in [0, 1] for 16 kHz int16 audio ending at the pause to judge.

        Only the last 8 s count. Shorter input (down to none at all) is padded with
        silence in front and still gets a probability: silence alone (or no audio)
        scores ~0.99, the model's "nothing left unfinished", so callers should ask only
        after speech.

        Raises:
            ValueError: ``samples`` is not one-dimensional int16.
            ModelError: inference failed or gave no probability.
        """
        x = self.features(samples)[None]
        try:
            (out,) = self._session.run(None, {self._input: x})
        except INFERENCE_ERRORS as exc:
            raise ModelError("turn", str(exc)) from exc
        prob = float(np.asarray(out).reshape(-1)[0])
        if not 0.0 <= prob <= 1.0:  # also NaN
            raise ModelError("turn", f"probability out of range: {prob}")
        return prob
