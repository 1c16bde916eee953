"""Errors raised by the inference wrappers."""

from __future__ import annotations

from onnxruntime.capi import onnxruntime_pybind11_state as _ort

# What inference libraries raise on a bad model or a failed run. onnxruntime's errors
# derive from Exception directly, not RuntimeError.
INFERENCE_ERRORS: tuple[type[Exception], ...] = (
    RuntimeError,
    ValueError,
    _ort.Fail,
    _ort.InvalidArgument,
    _ort.RuntimeException,
    _ort.InvalidGraph,
    _ort.NoSuchFile,
    _ort.InvalidProtobuf,
)
LOAD_ERRORS: tuple[type[Exception], ...] = (*INFERENCE_ERRORS, OSError, KeyError)


class ModelError(Exception):
    """An inference call failed; the caller fails one response, never the process."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model
        self.message = message
