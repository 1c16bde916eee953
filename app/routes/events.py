"""Server-Sent Events out, client events in."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, jsonify, request

from app._errors import ApiError
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


SUPPORTED_CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.clear",
    "input_audio_buffer.commit",
    "response.cancel",
    "conversation.item.create",
    "response.create",
)
ROLES = ("user", "assistant", "system")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")


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


def _validate_client_event(event: Any, index: int) -> dict[str, Any]:
    param = f"[{index}]"
    if not isinstance(event, dict):
        raise ApiError(400, "invalid_event", "each client event must be a JSON object", param=param)
    kind = event.get("type")
    if not isinstance(kind, str):
        raise ApiError(
            400, "invalid_event", "client events need a string 'type'", param=f"{param}.type"
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
    if kind == "conversation.item.create":
        event["_parsed"] = _parse_item(event.get("item"), f"{param}.item")
    if kind == "response.create":
        event["_parsed"] = _parse_response_create(event.get("response"), f"{param}.response")
    return event


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_event", message, param=param)


def _image_url(part: dict[str, Any], param: str) -> str:
    """An input_image part as a URL: a ``data:`` URL (base64) or an https URL."""
    limit = server_config().max_frame_bytes
    url = part.get("image_url")
    if isinstance(url, dict):  # chat-completions shape {"url": ...}
        url = url.get("url")
    if url is None and isinstance(part.get("image"), str):  # bare base64
        mime = part.get("mime_type", "image/jpeg")
        if mime not in IMAGE_TYPES:
            raise _bad(f"{param}.mime_type", f"mime_type must be one of {', '.join(IMAGE_TYPES)}")
        url = f"data:{mime};base64,{part['image']}"
    if not isinstance(url, str):
        raise _bad(param, "input_image needs 'image_url' (a data: or https: URL) or 'image'")
    if url.startswith("https://") or url.startswith("http://"):
        return url
    header, sep, payload = url.partition(",")
    mime = header.removeprefix("data:").removesuffix(";base64")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise _bad(param, "image_url must be a base64 data: URL or an http(s) URL")
    if mime not in IMAGE_TYPES:
        raise _bad(param, f"image type must be one of {', '.join(IMAGE_TYPES)}")
    try:
        size = len(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError):
        raise _bad(param, "image data is not valid base64") from None
    if size > limit:
        raise ApiError(413, "image_too_large", f"images are limited to {limit} bytes", param=param)
    return url


def _parse_item(item: Any, param: str) -> tuple[str, str, list[str]]:
    """conversation.item.create's item → (role, text, image URLs)."""
    if not isinstance(item, dict):
        raise _bad(param, "conversation.item.create needs an 'item' object")
    if item.get("type", "message") != "message":
        raise _bad(f"{param}.type", "only items of type 'message' are supported")
    role = item.get("role", "user")
    if role not in ROLES:
        raise _bad(f"{param}.role", f"role must be one of {', '.join(ROLES)}")
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise _bad(f"{param}.content", "content must be a non-empty list of parts")
    texts: list[str] = []
    images: list[str] = []
    for i, part in enumerate(content):
        where = f"{param}.content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "text"):
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.text", "a text part needs a string 'text'")
            texts.append(part["text"])
        elif kind == "input_image" and role == "user":
            images.append(_image_url(part, where))
        else:
            raise _bad(f"{where}.type", "parts are input_text (or text), or input_image for users")
    return role, " ".join(texts), images


def _parse_response_create(response: Any, param: str) -> str | None:
    """response.create's optional ``response.instructions``."""
    if response is None:
        return None
    if not isinstance(response, dict):
        raise _bad(param, "'response' must be an object")
    instructions = response.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad(f"{param}.instructions", "instructions must be a string")
    return instructions


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
        try:
            events = [_validate_client_event(e, i) for i, e in enumerate(items)]
            # Everything that can be refused is checked before anything is applied, so a
            # refused list changes nothing (commit/clear travel in-band with the audio and
            # can still meet upload backpressure).
            configs, config = [], session.config
            for event in events:
                if event["type"] == "session.update":
                    config = session.check_config(event["session"], config)
                    configs.append(config)
            creates = sum(e["type"] == "response.create" for e in events)
            if creates:
                session.check_responses(creates)
            for event in events:
                if event["type"] == "session.update":
                    session.apply_config(configs.pop(0))
                elif event["type"] == "input_audio_buffer.clear":
                    await session.clear_input()
                    session.events.emit("input_audio_buffer.cleared")
                elif event["type"] == "input_audio_buffer.commit":
                    await session.commit_input()
                elif event["type"] == "response.cancel":
                    session.cancel_response()
                elif event["type"] == "conversation.item.create":
                    session.add_user_item(*event["_parsed"])
                elif event["type"] == "response.create":
                    session.create_response(event["_parsed"])
        except ApiError as error:
            # The event stream hears about it too, as OpenAI Realtime clients expect.
            session.events.emit("error", error=error.error_object())
            raise
        return jsonify({"accepted": len(events)})
