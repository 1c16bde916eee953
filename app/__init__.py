"""The voxwire service: ``create_app(config)`` builds the Quart-Trio application."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

from quart import Response, has_request_context, request
from quart_trio import QuartTrio
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import HTTPException

from app._asgi import ShieldedEndHTTPConnection
from app._config import ServerConfig, SessionConfig, validate_session_config
from app._cors import CorsPolicy
from app._errors import ApiError, VoiceServiceError
from app._memory import limit_malloc_arenas, trim_periodically
from app._metrics import Metrics
from app._models import ModelHub, SpeechServices
from app._registry import SessionRegistry
from app._responders import Responders
from app._server import serve
from app._session import Session

__all__ = [
    "ApiError",
    "ServerConfig",
    "Session",
    "SessionConfig",
    "SessionRegistry",
    "VoiceServiceError",
    "create_app",
    "limit_malloc_arenas",
    "serve",
    "validate_session_config",
]

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class BacklogBody(TrioBody):
    """Quart's body buffer, capped on the unread backlog only.

    Quart also rejects any request whose Content-Length exceeds the cap, which would limit
    a whole ``curl -T file`` upload to the backlog size; voxwire checks declared lengths
    against its own per-request limits instead.
    """

    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(None, max_content_length)


class VoxRequest(TrioRequest):
    body_class = BacklogBody


def json_error(error: ApiError) -> Response:
    """Render an :class:`ApiError` as an OpenAI-style JSON error response."""
    response = Response(
        json.dumps(error.body()), status=error.status, content_type="application/json"
    )
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def _close_if_body_unread(response: Response) -> Response:
    """Answering before the body is read (415, 413, 409...) ends the connection.

    The client may still be sending; reusing the connection after an early answer has
    left hypercorn's keep-alive cycle waiting forever. ``Connection: close`` makes h11
    close it after this response, as nginx does for early errors.

    This holds for every answer, not only errors: a route that ignores a body (DELETE,
    stop_stream, a GET or OPTIONS sent with one) answers before its last bytes may have
    arrived. Hypercorn then cannot recycle the connection, and the next request on it is
    never answered (tests/test_openapi.py).
    Requests without a body (no Content-Length, not chunked) are never affected.
    """
    if (
        has_request_context()
        and (
            request.content_length
            or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        )
        and not request.body._complete.is_set()
    ):
        response.headers["Connection"] = "close"
    return response


def create_app(config: ServerConfig | None = None) -> QuartTrio:
    """Build the application. Sessions start when the app starts serving."""
    from app.routes import audio, events, frames, health, sessions

    config = config or ServerConfig()
    app = QuartTrio("voxwire", static_folder=None)
    app.request_class = VoxRequest
    app.asgi_http_class = ShieldedEndHTTPConnection
    # Quart buffers request bodies; this caps only the unread backlog (see BacklogBody).
    app.config["MAX_CONTENT_LENGTH"] = config.body_backlog_bytes
    app.config["RESPONSE_TIMEOUT"] = config.response_timeout_s
    metrics = Metrics()
    hub = ModelHub(
        config.model_paths(),
        concurrency=config.inference_concurrency,
        metrics=metrics,
        full_lag_s=config.scheduler_full_lag_ms / 1000,
        services=SpeechServices.from_config(config),
    )
    responders = Responders(config)
    registry = SessionRegistry(config, metrics, hub, responders)
    app.config["VOXWIRE_CONFIG"] = config
    app.config["VOXWIRE_METRICS"] = metrics
    app.config["VOXWIRE_REGISTRY"] = registry
    app.config["VOXWIRE_MODELS"] = hub
    app.config["VOXWIRE_WEB_DIR"] = WEB_DIR

    @app.before_serving
    async def start_registry() -> None:
        await app.nursery.start(hub.run)
        await app.nursery.start(responders.run)
        await app.nursery.start(registry.run)
        await app.nursery.start(
            partial(
                trim_periodically,
                config.malloc_trim_interval_s,
                on_trim=lambda released: metrics.malloc_trims.labels(str(released).lower()).inc(),
            )
        )

    @app.after_serving
    async def stop_registry() -> None:
        registry.drain()

    @app.errorhandler(ApiError)
    async def handle_api_error(error: ApiError) -> Response:
        return json_error(error)

    @app.errorhandler(HTTPException)
    async def handle_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = (error.name or "error").lower().replace(" ", "_")
        kind = "server_error" if status >= 500 else "invalid_request_error"
        # Keep the exception's own headers (405's Allow, which RFC 9110 requires).
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        api_error = ApiError(
            status, code, error.description or error.name or "", error_type=kind, headers=headers
        )
        return json_error(api_error)

    @app.after_request  # every response, error handlers' included
    async def close_if_body_unread(response: Response) -> Response:
        return _close_if_body_unread(response)

    cors = CorsPolicy(config.cors_origins)
    if cors.enabled:
        app.before_request(cors.preflight)
        app.after_request(cors.decorate)

    for bp in (sessions.bp, audio.bp, events.bp, frames.bp, health.bp):
        app.register_blueprint(bp)
    return app
