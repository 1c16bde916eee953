"""The error model: one base class, client faults carry their HTTP status."""

from __future__ import annotations

from typing import Any


class VoiceServiceError(Exception):
    """Base of every error voxwire raises on purpose."""


class ApiError(VoiceServiceError):
    """A client-visible error, rendered OpenAI-style.

    ``{"type": "error", "error": {"type", "code", "message", "param", "event_id"}}`` with
    ``status``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        error_type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type
        self.headers = headers or {}
        self.event_id = event_id  # the client event that caused it (error events)

    def error_object(self) -> dict[str, Any]:
        """The inner ``error`` object (also used in ``error`` server events)."""
        return {
            "type": self.error_type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }

    def body(self) -> dict[str, Any]:
        """The full JSON body."""
        return {"type": "error", "error": self.error_object()}


def not_found() -> ApiError:
    """The one 404 for unknown, expired and wrongly-authorised session ids (no oracle)."""
    return ApiError(404, "session_not_found", "No such session.", param="session_id")
