"""Silero VAD v6 (ONNX) from the faster-whisper wheel, run with onnxruntime directly.

Blocking code, ~0.13 ms a frame: app/_models.py scores a frame or two on the event loop
and a backlog in a worker thread. The ``InferenceSession`` is shared by every session in
the process; the recurrent state lives in :class:`VadState`, one per session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from models._errors import INFERENCE_ERRORS, ModelError
from models._onnx import CPU
from models._onnx import session as onnx_session

if TYPE_CHECKING:
    from collections.abc import Sequence

FRAME_SAMPLES = 512
CONTEXT_SAMPLES = 64
SAMPLE_RATE = 16000


def default_model_path() -> Path:
    """``faster_whisper/assets/silero_vad_v6.onnx``, shipped inside the faster-whisper wheel."""
    import faster_whisper

    return Path(os.path.dirname(faster_whisper.__file__)) / "assets" / "silero_vad_v6.onnx"


@dataclass(slots=True)
class VadState:
    """Per-stream model state: LSTM ``h``/``c``, and the model's input row, whose first 64
    samples hold the context (the last 64 samples of the previous frame)."""

    h: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((1, 1, 128), np.float32))
    c: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((1, 1, 128), np.float32))
    x: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((1, CONTEXT_SAMPLES + FRAME_SAMPLES), np.float32)
    )

    def reset(self) -> None:
        self.h[:] = 0
        self.c[:] = 0
        self.x[:] = 0


class SileroVad:
    """Speech probability per 512-sample frame at 16 kHz."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        threads: int = 1,
        providers: Sequence[str] = CPU,
    ) -> None:
        self._session = onnx_session(
            path or default_model_path(), threads=threads, providers=providers
        )

    def prob(self, state: VadState, frame: npt.NDArray[np.int16]) -> float:
        """Probability that ``frame`` (512 int16 samples) is speech; updates ``state``."""
        _check(frame)
        # Written in place: this runs for every frame of every session (on the event loop).
        x = state.x
        np.multiply(frame, 1.0 / 32768.0, out=x[0, CONTEXT_SAMPLES:], casting="unsafe")
        try:
            out, h, c = self._session.run(None, {"input": x, "h": state.h, "c": state.c})
        except INFERENCE_ERRORS as exc:
            raise ModelError("vad", str(exc)) from exc
        state.h, state.c = h, c
        x[0, :CONTEXT_SAMPLES] = x[0, -CONTEXT_SAMPLES:]
        return float(out.reshape(-1)[0])

    def probs(self, state: VadState, frames: Sequence[npt.NDArray[np.int16]]) -> list[float]:
        """:meth:`prob` of consecutive ``frames`` of one stream, in one model call.

        The graph's first axis is time: its rows are run in order through the LSTM, with
        the same probabilities and final state as one call per frame (tests/
        test_vad_model.py), for ~20 % less CPU a frame (bench/vad_hop.py). Frames of
        different streams cannot share a call: the state's batch axis is fixed at 1.
        """
        if len(frames) <= 1:
            return [self.prob(state, frame) for frame in frames]
        for frame in frames:
            _check(frame)
        audio = np.stack(frames).astype(np.float32) * np.float32(1.0 / 32768.0)
        x = np.empty((len(frames), CONTEXT_SAMPLES + FRAME_SAMPLES), np.float32)
        x[:, CONTEXT_SAMPLES:] = audio
        x[0, :CONTEXT_SAMPLES] = state.x[0, :CONTEXT_SAMPLES]
        x[1:, :CONTEXT_SAMPLES] = audio[:-1, -CONTEXT_SAMPLES:]
        try:
            out, h, c = self._session.run(None, {"input": x, "h": state.h, "c": state.c})
        except INFERENCE_ERRORS as exc:
            raise ModelError("vad", str(exc)) from exc
        state.h, state.c = h, c
        state.x[0, :CONTEXT_SAMPLES] = audio[-1, -CONTEXT_SAMPLES:]
        return [float(p) for p in np.asarray(out).reshape(-1)]


def _check(frame: npt.NDArray[np.int16]) -> None:
    if frame.shape != (FRAME_SAMPLES,):
        raise ValueError(f"expected {FRAME_SAMPLES} samples, got shape {frame.shape}")
