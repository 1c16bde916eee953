"""Liveness, readiness, metrics and the demo page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app, jsonify, send_file

from app._errors import ApiError
from app.routes._common import metrics, models, registry

if TYPE_CHECKING:
    from pathlib import Path

bp = Blueprint("health", __name__)


@bp.get("/healthz")
async def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
async def readyz() -> Response:
    if registry().draining:
        raise ApiError(
            503,
            "draining",
            "the server is shutting down",
            error_type="server_error",
            headers={"Retry-After": "5"},
        )
    error = models().unavailable()
    if error is not None:
        raise error
    return jsonify({"status": "ready", "sessions": len(registry())})


@bp.get("/metrics")
async def metrics_text() -> Response:
    return Response(generate_latest(metrics().registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/")
async def index() -> Response:
    web: Path = current_app.config["VOXWIRE_WEB_DIR"]
    return await send_file(web / "index.html", mimetype="text/html")
