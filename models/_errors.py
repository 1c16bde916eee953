"""Errors raised by the inference wrappers."""

from __future__ import annotations


class ModelError(Exception):
    """An inference call failed; the caller fails one response, never the process."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model
        self.message = message
