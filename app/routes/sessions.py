"""Session resources: create, list, inspect, update, delete."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, jsonify, request

from app._config import validate_session_config
from app._errors import ApiError
from app._realtime import BETA_HEADER, wants_beta
from app.routes._common import (
    authorised_session,
    json_body,
    registry,
    require_api_key,
    server_config,
)

if TYPE_CHECKING:
    from app._session import Session

bp = Blueprint("sessions", __name__)

PROXY_SESSION_ID = re.compile(r"sess_[A-Za-z0-9_-]{22,64}")


def _urls(session: Session) -> dict[str, str]:
    base = f"/api/sessions/{session.id}"
    return {
        "session": base,
        "upload_audio": f"{base}/upload_audio",
        "stream_audio": f"{base}/stream_audio",
        "stop_stream": f"{base}/stop_stream",
        "events": f"{base}/events",
        "upload_frame": f"{base}/upload_frame",
    }


def proxy_session_id() -> str | None:
    """The new session's id when a trusted proxy chose it (``session_id_header``).

    A hashing proxy routes ``/api/sessions/<id>/...`` by the id; for creation it draws
    the id itself, hashes on it, and passes it on, so the session lives where its later
    requests will land.
    """
    name = server_config().session_id_header
    value = request.headers.get(name) if name else None
    if value is None:
        return None
    if not PROXY_SESSION_ID.fullmatch(value):
        raise ApiError(
            400,
            "invalid_session_id",
            f"{name} must be sess_ and 22-64 of [A-Za-z0-9_-] (a proxy misconfiguration)",
            param=name,
        )
    return value


@bp.post("/api/sessions")
async def create_session() -> tuple[Response, int]:
    require_api_key()
    data = await json_body()
    caps = server_config().caps()
    base = validate_session_config({"responder": server_config().default_responder})
    config = validate_session_config(data, base, caps=caps)
    session = await registry().create(config, proxy_session_id())
    session.beta = wants_beta(request.headers.get(BETA_HEADER))
    body: dict[str, Any] = {
        "id": session.id,
        "token": session.token,
        "config": session.config.to_json(),
        "urls": _urls(session),
        "idle_ttl_s": server_config().session_idle_ttl_s,
    }
    return jsonify(body), 201


@bp.get("/api/sessions")
async def list_sessions() -> Response:
    require_api_key()
    items = []
    for s in registry().sessions():
        d = s.describe()
        items.append({"id": s.id, "state": s.state, "age_s": d["age_s"], **d["stats"]})
    return jsonify({"object": "list", "data": items})


@bp.get("/api/sessions/<session_id>")
async def get_session(session_id: str) -> Response:
    session = authorised_session(session_id)
    with session.request():
        return jsonify(session.describe())


@bp.patch("/api/sessions/<session_id>")
async def update_session(session_id: str) -> Response:
    session = authorised_session(session_id)
    with session.request():
        data = await json_body(allow_empty=False)
        session.update_config(data)
        return jsonify(session.describe())


@bp.get("/api/sessions/<session_id>/conversation")
async def get_conversation(session_id: str) -> Response:
    """The conversation's items, and the chat messages the LLM gets for the next reply."""
    session = authorised_session(session_id)
    with session.request():
        conversation = session.pipeline.conversation
        items = []
        for item in conversation.items:
            view = item.describe()
            if item.truncated_ms is not None:  # voxwire: a reply cut by barge-in or the client
                view["truncated"] = True
                view["audio_end_ms"] = item.truncated_ms
            items.append(view)
        return jsonify(
            {
                "object": "realtime.conversation",
                "items": items,
                "max_items": conversation.max_items,
                "messages": conversation.messages(session.config.instructions),
            }
        )


@bp.delete("/api/sessions/<session_id>")
async def delete_session(session_id: str) -> tuple[str, int]:
    session = authorised_session(session_id)
    registry().delete(session)
    return "", 204
