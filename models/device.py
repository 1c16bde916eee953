"""Where the embedded models run: the CPU, or a CUDA GPU when there is a usable one.

``VOXWIRE_DEVICE`` (``ServerConfig.device``) is ``auto``, ``cpu`` or ``cuda``;
:func:`resolve_device` turns it into a :class:`Device` once per load, and the helpers here
give each library its settings for it:

* CTranslate2 (faster-whisper): ``device="cuda", compute_type="float16"`` on a GPU,
  ``"cpu"``/``"int8"`` otherwise (:func:`ct2_options`);
* onnxruntime (Silero VAD, Smart Turn, Piper): ``CUDAExecutionProvider`` first, the CPU
  behind it for any node CUDA does not take, or the CPU alone (:func:`ort_providers`).
  The CUDA provider is only in the ``onnxruntime-gpu`` wheel.

``auto`` picks CUDA only when both libraries see it *and* a small probe runs on it
(CTranslate2 lists its CUDA compute types, onnxruntime builds a session on the CUDA provider
and keeps it); otherwise the CPU, with the reason. ``cuda`` when CUDA is not usable is a
load error, never a silent CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import ctranslate2
import onnxruntime as ort

from models._errors import LOAD_ERRORS, ModelError

if TYPE_CHECKING:
    from collections.abc import Callable

DeviceName = Literal["cpu", "cuda"]
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
REQUESTS = ("auto", "cpu", "cuda")


@dataclass(frozen=True, slots=True)
class Device:
    """The device the models run on, and why it was picked (for the start-up log)."""

    name: DeviceName
    reason: str

    @property
    def cuda(self) -> bool:
        return self.name == "cuda"


def ct2_options(device: Device) -> tuple[str, str]:
    """CTranslate2's ``(device, compute_type)``: float16 on CUDA, int8 on the CPU."""
    return ("cuda", "float16") if device.cuda else ("cpu", "int8")


def ort_providers(device: Device) -> list[str]:
    """onnxruntime's execution providers, in order of preference."""
    return [CUDA_PROVIDER, CPU_PROVIDER] if device.cuda else [CPU_PROVIDER]


def ct2_cuda_devices() -> int:
    """How many CUDA devices CTranslate2 sees (0 when its CUDA runtime cannot start)."""
    try:
        return int(ctranslate2.get_cuda_device_count())
    except RuntimeError:
        return 0


def ort_available_providers() -> list[str]:
    """The providers this onnxruntime build has (``CUDAExecutionProvider`` needs
    ``onnxruntime-gpu``)."""
    return list(ort.get_available_providers())


def probe_cuda() -> None:
    """Run something tiny on CUDA in each library.

    Raises:
        RuntimeError: CTranslate2 cannot use the GPU, or onnxruntime fell back to the CPU
            (it does that with only a warning when the CUDA provider fails to load, e.g.
            without cuDNN).
    """
    # Queries the device through CTranslate2's CUDA runtime: raises on a driver too old
    # for the runtime, no device, a broken install.
    types = ctranslate2.get_supported_compute_types("cuda")
    if "float16" not in types:
        raise RuntimeError(f"ctranslate2: the GPU has no float16 ({', '.join(sorted(types))})")
    # The smallest model at hand: Silero VAD (~2 MB), shipped with faster-whisper.
    from models.vad import default_model_path

    session = ort.InferenceSession(
        str(default_model_path()), providers=[CUDA_PROVIDER, CPU_PROVIDER]
    )
    if CUDA_PROVIDER not in session.get_providers():
        raise RuntimeError("onnxruntime: a session on CUDAExecutionProvider fell back to the CPU")


def resolve_device(requested: str, *, probe: Callable[[], None] = probe_cuda) -> Device:
    """The device for ``requested`` (``auto``, ``cpu`` or ``cuda``).

    Args:
        requested: ``VOXWIRE_DEVICE``.
        probe: runs something tiny on CUDA, raising when it cannot (tests replace it).

    Raises:
        ModelError: ``cuda`` was asked for and CUDA is not usable (``model`` ``"load"``).
        ValueError: ``requested`` is none of the three.
    """
    if requested not in REQUESTS:
        raise ValueError(f"device must be one of {', '.join(REQUESTS)}, not {requested!r}")
    if requested == "cpu":
        return Device("cpu", "VOXWIRE_DEVICE=cpu")
    count = ct2_cuda_devices()
    providers = ort_available_providers()
    plural = "" if count == 1 else "s"
    if count == 0 or CUDA_PROVIDER not in providers:
        seen = f"ctranslate2 sees {count} CUDA device{plural}; onnxruntime providers: "
        seen += ", ".join(providers)
        if CUDA_PROVIDER not in providers:
            seen += f", no {CUDA_PROVIDER}: that needs the onnxruntime-gpu wheel"
        what = "no CUDA device" if count == 0 else f"onnxruntime has no {CUDA_PROVIDER}"
        if requested == "cuda":
            raise ModelError("load", f"VOXWIRE_DEVICE=cuda but {what} ({seen})")
        return Device("cpu", f"auto: {what} ({seen})")
    try:
        probe()
    except LOAD_ERRORS as exc:
        why = f"the CUDA probe failed: {type(exc).__name__}: {exc}"
        if requested == "cuda":
            raise ModelError("load", f"VOXWIRE_DEVICE=cuda but {why}") from exc
        return Device("cpu", f"auto: {why}")
    source = "auto" if requested == "auto" else "VOXWIRE_DEVICE=cuda"
    return Device(
        "cuda",
        f"{source}: ctranslate2 sees {count} CUDA device{plural}, "
        f"onnxruntime has {CUDA_PROVIDER}, the probe ran",
    )
