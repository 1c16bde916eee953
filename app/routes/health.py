"""Liveness, readiness, metrics, the demo page and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app, jsonify, send_file

from app._errors import ApiError
from app.routes._common import metrics, models, refuse_if_draining, registry, require_api_key

bp = Blueprint("health", __name__)

OPENAPI_FILE = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


@bp.get("/healthz")
async def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
async def readyz() -> Response:
    refuse_if_draining()
    hub = models()
    error = hub.unavailable()
    if error is not None:
        raise error
    scheduler = hub.scheduler
    # For load balancers: the inference backlog as a fraction of "full" (1.0 and above).
    load = {"X-Voxwire-Load": f"{scheduler.load():.2f}"}
    if scheduler.full:
        raise ApiError(
            503,
            "overloaded",
            f"inference is {1000 * scheduler.lag():.0f} ms behind: send new sessions "
            "to another instance",
            error_type="server_error",
            headers={"Retry-After": "2", **load},
        )
    response = jsonify({"status": "ready", "sessions": len(registry())})
    response.headers.update(load)
    return response


def _count_tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(_count_tasks(c) for n in task.child_nurseries for c in n.child_tasks)


@bp.get("/metrics")
async def metrics_text() -> Response:
    require_api_key()  # monitoring, like the session list (scrapers send a bearer token)
    m = metrics()
    # Counted at scrape time: a leak of tasks shows as a slope (bench/soak.py).
    root = trio.lowlevel.current_root_task()
    if root is not None:
        m.tasks.set(_count_tasks(root))
    return Response(generate_latest(m.registry), content_type=CONTENT_TYPE_LATEST)


# The page's files, by name: a fixed set, so no path from the URL ever reaches the disk.
WEB_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "capture-worklet.js": "text/javascript; charset=utf-8",
    "playback-worklet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


async def _web_file(name: str) -> Response:
    web: Path = current_app.config["VOXWIRE_WEB_DIR"]
    response = await send_file(web / name, mimetype=WEB_FILES[name])
    # Always revalidate: a stale app.js against a newer server is a confusing failure.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/")
async def index() -> Response:
    return await _web_file("index.html")


@bp.get("/openapi.yaml")
async def openapi() -> Response:
    """The API's OpenAPI 3.1 description, served as written (tests/test_openapi.py)."""
    response = await send_file(OPENAPI_FILE, mimetype="application/yaml")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/web/<name>")
async def web_file(name: str) -> Response:
    if name not in WEB_FILES:
        raise ApiError(404, "not_found", f"no such file: {name}")
    return await _web_file(name)
