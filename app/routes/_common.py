"""Helpers shared by the blueprints: auth, JSON bodies, app state."""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

import trio
from quart import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from app._errors import ApiError

if TYPE_CHECKING:
    from app._config import ServerConfig
    from app._metrics import Metrics
    from app._models import ModelHub
    from app._registry import SessionRegistry
    from app._session import Session


# Long-lived responses (stream_audio, events): no cache, and no proxy buffering (nginx
# honours X-Accel-Buffering; deploy/ turns buffering off for the others).
LIVE_STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-store, no-transform",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}


def server_config() -> ServerConfig:
    cfg: ServerConfig = current_app.config["VOXWIRE_CONFIG"]
    return cfg


def registry() -> SessionRegistry:
    reg: SessionRegistry = current_app.config["VOXWIRE_REGISTRY"]
    return reg


def metrics() -> Metrics:
    m: Metrics = current_app.config["VOXWIRE_METRICS"]
    return m


def models() -> ModelHub:
    hub: ModelHub = current_app.config["VOXWIRE_MODELS"]
    return hub


def bearer_credential(header: str | None) -> str | None:
    """The ``Authorization: Bearer`` credential, if any (the fast path and the routes'
    ``bearer_token`` both read it here)."""
    scheme, _, credential = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def bearer_token() -> str | None:
    """The ``Authorization: Bearer`` credential, if any."""
    return bearer_credential(request.headers.get("Authorization"))


def require_api_key() -> None:
    """Guard creation and monitoring when ``VOXWIRE_API_KEY`` is set (401 otherwise)."""
    key = server_config().api_key
    if not key:
        return
    given = bearer_token() or ""
    if not secrets.compare_digest(key.encode(), given.encode()):
        raise ApiError(
            401,
            "invalid_api_key",
            "a valid API key is required",
            error_type="authentication_error",
            headers={"WWW-Authenticate": 'Bearer realm="voxwire"'},
        )


def refuse_if_draining() -> None:
    """503 for a stream opened while the server shuts down: it would only be cut off.

    Clients retry after ``Retry-After``; behind a proxy the instance is gone by then.
    """
    if registry().draining:
        raise ApiError(
            503,
            "draining",
            "the server is shutting down",
            error_type="server_error",
            headers={"Retry-After": "5"},
        )


def authorised_session(session_id: str, *, allow_query_token: bool = False) -> Session:
    """The session named in the path, if the caller holds its token; else the one 404.

    ``?token=`` is honoured only where browsers cannot set headers (EventSource,
    ``<audio src>``): the GETs of ``events`` and ``stream_audio``.
    """
    token = bearer_token()
    if token is None and allow_query_token:
        token = request.args.get("token")
    return registry().authorise(session_id, token)


async def read_small_body(limit: int, code: str, what: str) -> bytes:
    """Read a whole small body (JSON, an image): capped in size and in total time.

    The time limit is for the whole body, not between chunks: a slowloris dripping one
    byte every few seconds would otherwise hold the request open indefinitely.

    Raises:
        ApiError: 413 ``code`` over ``limit`` bytes; 408 ``body_timeout`` when the body
            takes longer than ``small_body_timeout_s``.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, code, f"{what} are limited to {limit} bytes")
    deadline = server_config().small_body_timeout_s
    data = bytearray()
    with trio.move_on_after(deadline) as timer:
        try:
            async for chunk in request.body:
                data += chunk
                if len(data) > limit:
                    raise ApiError(413, code, f"{what} are limited to {limit} bytes")
        except RequestEntityTooLarge:  # Quart's unread-backlog cap
            raise ApiError(413, code, f"{what} are limited to {limit} bytes") from None
    if timer.cancelled_caught:
        raise ApiError(408, "body_timeout", f"the body took longer than {deadline:g} s")
    return bytes(data)


async def json_body(*, allow_empty: bool = True, limit: int | None = None) -> Any:
    """Read and parse a small JSON body (size- and time-capped; 400/408/413/415)."""
    limit = limit or server_config().max_json_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, "body_too_large", f"JSON bodies are limited to {limit} bytes")
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send application/json", param="Content-Type")
    data = await read_small_body(limit, "body_too_large", "JSON bodies")
    if not data.strip():
        if allow_empty:
            return None
        raise ApiError(400, "empty_body", "a JSON body is required")
    try:
        # NaN/Infinity literals parse here; the validators reject non-finite numbers with
        # a 422 that names the field (docs/api.md).
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None


def whole_number(raw: str) -> int | None:
    """Plain ASCII digits (surrounding spaces allowed), at most 2**62; else ``None``.

    ``int()`` alone also takes ``+5``, ``1_000`` and non-ASCII digits.
    """
    raw = raw.strip(" \t")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        return None
    value = int(raw)
    return value if value <= 2**62 else None
