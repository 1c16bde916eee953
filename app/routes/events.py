"""Server-Sent Events out, client events in."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, jsonify, request

from app._errors import ApiError
from app.routes._common import authorised_session, json_body, server_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from app._events import ServerEvent

bp = Blueprint("events", __name__)

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-store, no-transform",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
}

SUPPORTED_CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.clear",
    "input_audio_buffer.commit",
    "response.cancel",
)
# Client events of the OpenAI Realtime API that arrive with the LLM work; until then they
# are refused explicitly rather than silently ignored.
PENDING_CLIENT_EVENTS = ("conversation.item.create", "response.create")


def format_sse(event: ServerEvent) -> bytes:
    data = json.dumps(event.payload, separators=(",", ":"))
    return f"id: {event.seq}\ndata: {data}\n\n".encode()


def _error_frame(code: str, message: str) -> bytes:
    """An ``error`` event without an ``id:`` (it is not part of the replayable log)."""
    payload = {"type": "error", "error": ApiError(400, code, message).error_object()}
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _last_event_id() -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ApiError(
            400,
            "invalid_last_event_id",
            "Last-Event-ID must be an integer >= 0",
            param="Last-Event-ID",
        )
    return value


@bp.get("/api/sessions/<session_id>/events")
async def events_stream(session_id: str) -> Response:
    session = authorised_session(session_id, allow_query_token=True)
    last = _last_event_id()
    ping_s = server_config().sse_ping_interval_s
    log = session.events

    async def body() -> AsyncIterator[bytes]:
        with session.request():
            yield b"retry: 1000\n\n"
            cursor = last or 0
            while True:
                batch = log.since(cursor)
                if batch is None:
                    yield _error_frame(
                        "event_replay_unavailable",
                        f"events after id {cursor} are no longer buffered; "
                        f"resuming from id {log.oldest_seq}",
                    )
                    cursor = log.oldest_seq - 1
                    batch = log.since(cursor) or []
                for event in batch:
                    yield format_sse(event)
                    cursor = event.seq
                if log.closed and log.last_seq <= cursor:
                    return
                with trio.move_on_after(ping_s) as idle:
                    await log.wait_after(cursor)
                if idle.cancelled_caught:
                    yield b": ping\n\n"

    response = Response(body(), status=200, content_type="text/event-stream", headers=SSE_HEADERS)
    response.timeout = None
    return response


def _validate_client_event(event: Any, index: int) -> dict[str, Any]:
    param = f"[{index}]"
    if not isinstance(event, dict):
        raise ApiError(400, "invalid_event", "each client event must be a JSON object", param=param)
    kind = event.get("type")
    if not isinstance(kind, str):
        raise ApiError(
            400, "invalid_event", "client events need a string 'type'", param=f"{param}.type"
        )
    if kind in PENDING_CLIENT_EVENTS:
        raise ApiError(
            400,
            "event_not_supported",
            f"{kind} is not supported by this server yet",
            param=f"{param}.type",
        )
    if kind not in SUPPORTED_CLIENT_EVENTS:
        raise ApiError(
            400, "unknown_event_type", f"unknown client event type {kind!r}", param=f"{param}.type"
        )
    if kind == "session.update" and not isinstance(event.get("session"), dict):
        raise ApiError(
            400,
            "invalid_event",
            "session.update needs a 'session' object",
            param=f"{param}.session",
        )
    return event


@bp.post("/api/sessions/<session_id>/events")
async def post_events(session_id: str) -> Response:
    session = authorised_session(session_id)
    with session.request():
        data = await json_body(allow_empty=False)
        items = data if isinstance(data, list) else [data]
        try:
            events = [_validate_client_event(e, i) for i, e in enumerate(items)]
            for event in events:
                if event["type"] == "session.update":
                    session.update_config(event["session"])
                elif event["type"] == "input_audio_buffer.clear":
                    await session.clear_input()
                    session.events.emit("input_audio_buffer.cleared")
                elif event["type"] == "input_audio_buffer.commit":
                    await session.commit_input()
                elif event["type"] == "response.cancel":
                    session.cancel_response()
        except ApiError as error:
            # The event stream hears about it too, as OpenAI Realtime clients expect.
            session.events.emit("error", error=error.error_object())
            raise
        return jsonify({"accepted": len(events)})
