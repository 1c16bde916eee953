"""Inference wrappers: blocking code, called from worker threads, shared by all sessions.

``load_models`` loads and warms the embedded models once per process (nothing downloads),
on the device ``ModelPaths.device`` resolves to (:mod:`models.device`); per-session state
(the VAD's recurrent state) lives with each session.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path  # noqa: TC003 - dataclass field types resolve at runtime

import numpy as np

from models._errors import LOAD_ERRORS, ModelError
from models.device import Device, ct2_options, ort_providers, resolve_device
from models.responders import (
    EchoResponder,
    NoResponder,
    Responder,
    ResponseRequest,
    ResponseSink,
    ToolCallDelta,
    Usage,
)
from models.sentences import SentenceCutter
from models.smart_turn import SmartTurn
from models.stt import WhisperStt
from models.tts import PiperTts
from models.vad import FRAME_SAMPLES, SileroVad, VadState

__all__ = [
    "Device",
    "EchoResponder",
    "ModelError",
    "ModelPaths",
    "ModelSet",
    "NoResponder",
    "PiperTts",
    "Responder",
    "ResponseRequest",
    "ResponseSink",
    "SentenceCutter",
    "SileroVad",
    "SmartTurn",
    "ToolCallDelta",
    "Usage",
    "VadState",
    "WhisperStt",
    "load_models",
]


@dataclass(frozen=True, slots=True)
class ModelPaths:
    """Where the models are; ``None`` is the embedded default. Thread counts are fixed.

    ``device``: ``auto``, ``cpu`` or ``cuda`` (``VOXWIRE_DEVICE``, see :mod:`models.device`).
    """

    vad: Path | None = None
    stt: Path | None = None
    tts: Path | None = None
    turn: Path | None = None
    stt_threads: int = 2
    tts_threads: int = 1
    stt_workers: int = 2
    device: str = "auto"


@dataclass(frozen=True, slots=True)
class ModelSet:
    vad: SileroVad
    stt: WhisperStt
    tts: PiperTts
    turn: SmartTurn
    device: Device  # where they run, and why (for the start-up log)


_cache: dict[ModelPaths, ModelSet] = {}
# what loading and warming up on CUDA can raise (the warm-up wraps its errors in ModelError)
_CUDA_LOAD_ERRORS: tuple[type[Exception], ...] = (*LOAD_ERRORS, ModelError)
_lock = threading.Lock()


def load_models(paths: ModelPaths) -> ModelSet:
    """Load (once per process) and warm the four models. Blocking: run it in a thread.

    The first inference of each model is slow (allocations, phonemizer start-up); doing one
    here keeps that cost off the first user turn.
    """
    with _lock:
        if paths in _cache:
            return _cache[paths]
        try:
            models = _load(paths)
        except LOAD_ERRORS as exc:
            raise ModelError("load", f"{type(exc).__name__}: {exc}") from exc
        _cache[paths] = models
        return models


def _load(paths: ModelPaths) -> ModelSet:
    device = resolve_device(paths.device)
    if not device.cuda:
        return _load_on(paths, device)
    try:
        return _load_on(paths, device)
    except _CUDA_LOAD_ERRORS as exc:
        # The probe passed but a model would not load or warm up there (e.g. cuDNN
        # missing, the GPU out of memory): ``auto`` falls back, ``cuda`` fails the load.
        why = f"loading the models on CUDA failed: {type(exc).__name__}: {exc}"
        if paths.device == "cuda":
            raise ModelError("load", f"VOXWIRE_DEVICE=cuda but {why}") from exc
        return _load_on(paths, Device("cpu", f"auto: {why}"))


def _load_on(paths: ModelPaths, device: Device) -> ModelSet:
    ct2_device, compute_type = ct2_options(device)
    providers = ort_providers(device)
    vad = SileroVad(paths.vad, providers=providers)
    stt = WhisperStt(
        paths.stt,
        threads=paths.stt_threads,
        workers=paths.stt_workers,
        device=ct2_device,
        compute_type=compute_type,
    )
    tts = PiperTts(paths.tts, threads=paths.tts_threads, providers=providers)
    turn = SmartTurn(paths.turn, providers=providers)
    vad.prob(VadState(), np.zeros(FRAME_SAMPLES, np.int16))
    tts.synthesize("Hello there.")
    stt.transcribe(np.zeros(16000, np.int16))
    turn.predict(np.zeros(16000, np.int16))
    return ModelSet(vad, stt, tts, turn, device)
