"""Server-Sent Events out, client events in."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, jsonify, request

from app._client_events import (
    Limits,
    apply_client_event,
    check_client_events,
    parse_client_event,
)
from app._errors import ApiError
from app._realtime import BETA_HEADER, to_beta, wants_beta
from app.routes._common import (
    LIVE_STREAM_HEADERS,
    authorised_session,
    json_body,
    refuse_if_draining,
    server_config,
    whole_number,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from app._events import ServerEvent

bp = Blueprint("events", __name__)


def format_sse(event: ServerEvent, *, beta: bool = False, extensions: bool = False) -> bytes:
    """One SSE frame in the reader's vocabulary; ``b""`` for an event it does not get
    (a GA-only event for a beta reader, a voxwire extension it did not ask for)."""
    payload: dict[str, Any] | None = event.payload
    if not extensions and event.payload["type"].startswith("voxwire."):
        return b""
    if beta:
        payload = to_beta(event.payload)
        if payload is None:
            return b""
    data = json.dumps(payload, separators=(",", ":"))
    return f"id: {event.seq}\ndata: {data}\n\n".encode()


def _error_frame(code: str, message: str) -> bytes:
    """An ``error`` event without an ``id:`` (it is not part of the replayable log)."""
    payload = {"type": "error", "error": ApiError(400, code, message).error_object()}
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _last_event_id() -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if raw is None or raw == "":
        return None
    value = whole_number(raw)
    if value is None:
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
    refuse_if_draining()
    last = _last_event_id()
    ping_s = server_config().sse_ping_interval_s
    log = session.events
    beta = session.beta or wants_beta(request.headers.get(BETA_HEADER))
    extensions = request.args.get("voxwire_events", "").lower() in ("1", "true")

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
                    frame = format_sse(event, beta=beta, extensions=extensions)
                    if frame:
                        yield frame
                    cursor = event.seq
                if log.finished and log.last_seq <= cursor:
                    return
                with trio.move_on_after(ping_s) as idle:
                    await log.wait_after(cursor)
                if idle.cancelled_caught:
                    yield b": ping\n\n"

    response = Response(
        body(), status=200, content_type="text/event-stream", headers=LIVE_STREAM_HEADERS
    )
    response.timeout = None
    return response


@bp.post("/api/sessions/<session_id>/events")
async def post_events(session_id: str) -> Response:
    session = authorised_session(session_id)
    with session.request():
        cfg = server_config()
        # room for one base64 image in conversation.item.create
        data = await json_body(
            allow_empty=False, limit=cfg.max_json_bytes + cfg.max_frame_bytes * 4 // 3
        )
        items = data if isinstance(data, list) else [data]
        current: str | None = None
        try:
            limits = Limits(cfg.max_frame_bytes, cfg.caps().voices)
            events = [parse_client_event(e, i, limits) for i, e in enumerate(items)]
            plans = check_client_events(session, events)
            # (commit, clear and append travel in-band with the audio and can still meet
            # upload backpressure: a 429 there leaves the events before it applied)
            for event, plan in zip(events, plans, strict=True):
                current = event.event_id
                await apply_client_event(session, event, plan)
        except ApiError as error:
            # The event stream hears about it too, as OpenAI Realtime clients expect.
            if error.event_id is None:
                error.event_id = current
            session.events.emit("error", error=error.error_object())
            raise
        return jsonify({"accepted": len(events)})
