"""VOXWIRE_DEVICE: which device the models run on, and why (models/device.py).

This machine has no usable CUDA: the tests of the real resolution skip where one is; the
others replace what the libraries report, so they run anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import models
from models import Device, ModelError, ModelPaths, load_models
from models import device as dev
from models.stt import WhisperStt

if TYPE_CHECKING:
    from app._models import ModelHub
    from tests.conftest import StartServer

NO_CUDA = dev.ct2_cuda_devices() == 0 and dev.CUDA_PROVIDER not in dev.ort_available_providers()
no_cuda_here = pytest.mark.skipif(not NO_CUDA, reason="a CUDA device is here")


@no_cuda_here
def test_auto_picks_the_cpu_and_says_what_is_missing() -> None:
    device = dev.resolve_device("auto")
    assert device.name == "cpu"
    assert device.reason.startswith("auto: no CUDA device (")
    assert "ctranslate2 sees 0 CUDA devices; onnxruntime providers: " in device.reason
    assert "CPUExecutionProvider, no CUDAExecutionProvider: that needs the onnxruntime-gpu" in (
        device.reason
    )


def test_cpu_is_the_cpu() -> None:
    assert dev.resolve_device("cpu") == Device("cpu", "VOXWIRE_DEVICE=cpu")


@no_cuda_here
def test_cuda_without_cuda_is_a_load_error() -> None:
    with pytest.raises(ModelError) as caught:
        dev.resolve_device("cuda")
    assert caught.value.model == "load"
    assert caught.value.message.startswith(
        "VOXWIRE_DEVICE=cuda but no CUDA device (ctranslate2 sees 0 CUDA devices; "
    )
    assert "no CUDAExecutionProvider" in caught.value.message


def test_other_names_are_refused() -> None:
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        dev.resolve_device("gpu")


def test_library_settings_per_device() -> None:
    cpu, cuda = Device("cpu", ""), Device("cuda", "")
    assert dev.ct2_options(cpu) == ("cpu", "int8")
    assert dev.ct2_options(cuda) == ("cuda", "float16")
    assert dev.ort_providers(cpu) == ["CPUExecutionProvider"]
    assert dev.ort_providers(cuda) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _pretend(monkeypatch: pytest.MonkeyPatch, *, count: int, providers: list[str]) -> None:
    monkeypatch.setattr(dev, "ct2_cuda_devices", lambda: count)
    monkeypatch.setattr(dev, "ort_available_providers", lambda: providers)


GPU_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_auto_needs_both_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend(monkeypatch, count=1, providers=["CPUExecutionProvider"])
    assert dev.resolve_device("auto", probe=lambda: None) == Device(
        "cpu",
        "auto: onnxruntime has no CUDAExecutionProvider (ctranslate2 sees 1 CUDA device; "
        "onnxruntime providers: CPUExecutionProvider, no CUDAExecutionProvider: that needs "
        "the onnxruntime-gpu wheel)",
    )
    _pretend(monkeypatch, count=0, providers=GPU_PROVIDERS)
    assert dev.resolve_device("auto", probe=lambda: None) == Device(
        "cpu",
        "auto: no CUDA device (ctranslate2 sees 0 CUDA devices; onnxruntime providers: "
        "CUDAExecutionProvider, CPUExecutionProvider)",
    )


def test_a_failed_probe_means_the_cpu_for_auto_and_an_error_for_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pretend(monkeypatch, count=1, providers=GPU_PROVIDERS)

    def probe() -> None:
        raise RuntimeError("CUDA failed with error no kernel image is available")

    device = dev.resolve_device("auto", probe=probe)
    assert device.name == "cpu"
    assert device.reason == (
        "auto: the CUDA probe failed: RuntimeError: CUDA failed with error no kernel image "
        "is available"
    )
    with pytest.raises(ModelError, match=r"^load: VOXWIRE_DEVICE=cuda but the CUDA probe failed"):
        dev.resolve_device("cuda", probe=probe)


def test_cuda_when_everything_works(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend(monkeypatch, count=2, providers=GPU_PROVIDERS)
    for requested, source in (("auto", "auto"), ("cuda", "VOXWIRE_DEVICE=cuda")):
        device = dev.resolve_device(requested, probe=lambda: None)
        assert device == Device(
            "cuda",
            f"{source}: ctranslate2 sees 2 CUDA devices, onnxruntime has "
            "CUDAExecutionProvider, the probe ran",
        )


@no_cuda_here
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_a_model_that_fails_on_cuda_falls_back_for_auto_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The libraries claim CUDA and the probe passes, but Whisper will not load on it
    # (here: no driver): auto loads everything on the CPU, cuda fails the load.
    monkeypatch.setattr(models, "resolve_device", lambda requested: Device("cuda", "pretend"))
    with pytest.raises(ModelError, match=r"^load: VOXWIRE_DEVICE=cuda but loading the models on"):
        models._load(ModelPaths(device="cuda"))
    loaded = models._load(ModelPaths(device="auto"))
    assert loaded.device.name == "cpu"
    assert loaded.device.reason.startswith(
        "auto: loading the models on CUDA failed: RuntimeError: CUDA failed"
    )
    assert loaded.stt.device == "cpu"


@no_cuda_here
def test_loaded_models_say_where_they_run() -> None:
    loaded = load_models(ModelPaths())
    assert loaded.device.name == "cpu"
    assert loaded.device.reason.startswith("auto: no CUDA device")
    assert loaded.stt.device == "cpu"


@no_cuda_here
async def test_server_start_up_logs_the_cpu_and_why(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app._models")
    server = await start_server(device="auto")
    assert server.config.model_paths().device == "auto"
    hub: ModelHub = server.app.config["VOXWIRE_MODELS"]
    await hub.wait_ready(120)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("models ready")]
    assert " s on cpu (auto: no CUDA device (ctranslate2 sees 0 CUDA devices; " in line, line


def test_a_larger_whisper_is_a_directory_never_a_download(tmp_path: Path) -> None:
    # faster-whisper would take "small.en" for a model name and fetch it from the Hub
    with pytest.raises(FileNotFoundError, match="not a CTranslate2 Whisper directory"):
        WhisperStt(Path("small.en"))
    with pytest.raises(ModelError, match=r"^load: FileNotFoundError: not a CTranslate2"):
        load_models(ModelPaths(stt=tmp_path / "missing", device="cpu"))
