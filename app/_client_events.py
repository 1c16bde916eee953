"""Client events (OpenAI Realtime, GA and beta shapes): parsed, checked whole, applied.

:func:`parse_client_event` is pure: JSON in, a typed :class:`ClientEvent` out, or an
:class:`~app._errors.ApiError` naming the param. :func:`check_client_events` refuses a list
before anything of it applies (against the session as it is); :func:`apply_client_event`
carries each out through the session's own methods. The route (app/routes/events.py) only
reads the body and formats the answer.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app._config import (
    check_tool_choice,
    check_voice,
    parse_modalities,
    parse_tool_choice,
    parse_tools,
)
from app._conversation import Item
from app._errors import ApiError
from app.stages.messages import ResponseSpec, new_item_id

if TYPE_CHECKING:
    from app._session import Session

SUPPORTED_CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.clear",
    "input_audio_buffer.commit",
    "response.cancel",
    "response.create",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.delete",
    "conversation.item.truncate",
    "output_audio_buffer.clear",
)
ROLES = ("user", "assistant", "system")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")
ITEM_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_METADATA = 16


@dataclass(frozen=True, slots=True)
class Limits:
    """What the server allows in client events."""

    max_image_bytes: int
    voices: tuple[str, ...] | None  # None: any (a TTS service decides)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_event", message, param=param)


def _string(obj: dict[str, Any], key: str, param: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _bad(f"{param}.{key}", f"{key} must be a string")
    return value


def _item_id(obj: dict[str, Any], key: str, param: str) -> str:
    value = _string(obj, key, param)
    if not ITEM_ID.fullmatch(value):
        raise _bad(f"{param}.{key}", f"{key} is 1-64 of [A-Za-z0-9_.:-]")
    return value


def _image_url(part: dict[str, Any], param: str, limits: Limits) -> str:
    """An input_image part as a URL: a ``data:`` URL (base64) or an https URL."""
    limit = limits.max_image_bytes
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


TEXT_PARTS: dict[str, tuple[str, ...]] = {
    "user": ("input_text", "text"),
    "system": ("input_text", "text"),
    "assistant": ("output_text", "text", "input_text"),
}


def _parse_item(item: Any, param: str, limits: Limits) -> Item:
    """A client's conversation item (message, function_call or function_call_output)."""
    if not isinstance(item, dict):
        raise _bad(param, "an item must be an object")
    item_id = _item_id(item, "id", param) if item.get("id") is not None else new_item_id()
    kind = item.get("type", "message")
    if kind == "function_call_output":
        call_id, output = _string(item, "call_id", param), _string(item, "output", param)
        return Item(item_id, "user", type="function_call_output", call_id=call_id, output=output)
    if kind == "function_call":
        call_id, name = _string(item, "call_id", param), _string(item, "name", param)
        arguments = _string(item, "arguments", param)
        return Item(
            item_id,
            "assistant",
            type="function_call",
            call_id=call_id,
            name=name,
            arguments=arguments,
        )
    if kind != "message":
        raise _bad(
            f"{param}.type", "items are 'message', 'function_call' or 'function_call_output'"
        )
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
        part_type = part.get("type") if isinstance(part, dict) else None
        if part_type in TEXT_PARTS[role]:
            assert isinstance(part, dict)
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.text", "a text part needs a string 'text'")
            texts.append(part["text"])
        elif part_type == "input_image" and role == "user":
            assert isinstance(part, dict)
            images.append(_image_url(part, where, limits))
        elif part_type == "input_audio":
            raise _bad(
                f"{where}.type",
                "input_audio parts are not taken here: send the audio with upload_audio or "
                "input_audio_buffer.append",
            )
        else:
            listed = ", ".join(TEXT_PARTS[role]) + (", input_image" if role == "user" else "")
            raise _bad(f"{where}.type", f"{role} message parts are {listed}")
    return Item(item_id, role, " ".join(texts), images)


def _parse_metadata(value: Any, param: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise _bad(param, f"metadata is an object of at most {MAX_METADATA} string values")
    for key, v in value.items():
        if len(key) > 64 or not isinstance(v, str) or len(v) > 512:
            raise _bad(f"{param}.{key}", "metadata keys are <= 64 and values <= 512 characters")
    return dict(value)


@dataclass(frozen=True, slots=True)
class _Reference:
    """An ``item_reference`` in response.create's input: resolved against the session."""

    id: str


def _parse_response(
    response: Any, param: str, limits: Limits
) -> tuple[ResponseSpec, list[Item | _Reference]]:
    """response.create's ``response`` object (GA or beta names)."""
    if response is None:
        return ResponseSpec(), []
    if not isinstance(response, dict):
        raise _bad(param, "'response' must be an object")
    fields: dict[str, Any] = {}
    inputs: list[Item | _Reference] = []
    for key, v in response.items():
        where = f"{param}.{key}"
        if key == "instructions":
            fields[key] = _string(response, key, param)
        elif key in ("output_modalities", "modalities"):
            try:
                fields["modalities"] = parse_modalities(v, where, beta=key == "modalities")
            except ApiError as error:
                raise _bad(where, error.message) from None
        elif key == "conversation":
            if v not in ("auto", "none"):
                raise _bad(where, "conversation is 'auto' or 'none'")
            fields[key] = v
        elif key == "input":
            if not isinstance(v, list):
                raise _bad(where, "input must be a list of items")
            for i, item in enumerate(v):
                at = f"{where}[{i}]"
                if isinstance(item, dict) and item.get("type") == "item_reference":
                    inputs.append(_Reference(_item_id(item, "id", at)))
                else:
                    inputs.append(_parse_item(item, at, limits))
            fields[key] = ()
        elif key == "metadata":
            fields[key] = _parse_metadata(v, where)
        elif key == "tools":
            fields[key] = parse_tools(v, where)
        elif key == "tool_choice":
            fields[key] = parse_tool_choice(v, where)
        elif key in ("max_output_tokens", "max_response_output_tokens"):
            if v == "inf":
                fields["max_output_tokens"] = 4096
            elif isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096:
                fields["max_output_tokens"] = v
            else:
                raise _bad(where, f"{key} is 1-4096 or 'inf'")
        elif key == "temperature":
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 2:
                raise _bad(where, "temperature is a number from 0 to 2")
            fields[key] = float(v)
        elif key in ("voice", "audio"):
            fields[key] = v  # checked against the session's voice and format
        else:
            raise _bad(where, f"unknown key {key!r}")
    voice, audio = fields.pop("voice", None), fields.pop("audio", None)
    fields["voice"] = _response_voice(voice, audio, param, limits)
    if "tools" in fields or "tool_choice" in fields:
        check_tool_choice(fields.get("tools", ()), fields.get("tool_choice", "auto"), param)
    return ResponseSpec(**fields), inputs


def _response_voice(voice: Any, audio: Any, param: str, limits: Limits) -> str | None:
    """The voice a response.create asks for (``None``: the session's)."""
    if audio is not None:
        if not isinstance(audio, dict) or set(audio) - {"output"}:
            raise _bad(f"{param}.audio", "audio is {'output': {'voice', 'format'}}")
        output = audio.get("output") or {}
        if not isinstance(output, dict) or set(output) - {"voice", "format"}:
            raise _bad(f"{param}.audio.output", "audio.output has 'voice' and 'format'")
        voice = output.get("voice", voice)
        if "format" in output:
            fmt = output["format"]
            if not isinstance(fmt, dict) or fmt.get("type", "audio/pcm") != "audio/pcm":
                raise ApiError(
                    422,
                    "unsupported_value",
                    "voxwire speaks audio/pcm",
                    param=f"{param}.audio.output.format",
                )
    if voice is None:
        return None
    if not isinstance(voice, str) or not 0 < len(voice) <= 64:
        raise _bad(f"{param}.voice", "voice must be a voice name")
    check_voice(voice, f"{param}.voice", limits.voices)
    return voice


@dataclass(slots=True)
class ClientEvent:
    """A validated client event; ``parsed`` holds what its type needs."""

    kind: str
    event_id: str | None
    body: dict[str, Any]
    parsed: Any = None


def parse_client_event(event: Any, index: int, limits: Limits) -> ClientEvent:
    param = f"[{index}]"
    if not isinstance(event, dict):
        raise _bad(param, "each client event must be a JSON object")
    kind = event.get("type")
    if not isinstance(kind, str):
        raise _bad(f"{param}.type", "client events need a string 'type'")
    event_id = event.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise _bad(f"{param}.event_id", "event_id must be a string")
    if kind not in SUPPORTED_CLIENT_EVENTS:
        raise ApiError(
            400,
            "unknown_event_type",
            f"unknown client event type {kind!r}",
            param=f"{param}.type",
            event_id=event_id,
        )
    out = ClientEvent(kind, event_id, event)
    try:
        if kind == "session.update" and not isinstance(event.get("session"), dict):
            raise _bad(f"{param}.session", "session.update needs a 'session' object")
        if kind == "conversation.item.create":
            previous = event.get("previous_item_id")
            if previous is not None:
                previous = "" if previous == "root" else _item_id(event, "previous_item_id", param)
            out.parsed = (_parse_item(event.get("item"), f"{param}.item", limits), previous)
        elif kind in ("conversation.item.retrieve", "conversation.item.delete"):
            out.parsed = _item_id(event, "item_id", param)
        elif kind == "conversation.item.truncate":
            end_ms = event.get("audio_end_ms")
            if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
                raise _bad(f"{param}.audio_end_ms", "audio_end_ms must be an integer >= 0")
            if event.get("content_index", 0) != 0:
                raise _bad(f"{param}.content_index", "messages have one content part: 0")
            out.parsed = (_item_id(event, "item_id", param), end_ms)
        elif kind == "input_audio_buffer.append":
            audio = event.get("audio")
            try:
                if not isinstance(audio, str):
                    raise ValueError
                out.parsed = base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                raise _bad(f"{param}.audio", "audio must be base64 PCM16") from None
        elif kind == "response.create":
            out.parsed = _parse_response(event.get("response"), f"{param}.response", limits)
    except ApiError as error:
        error.event_id = event_id
        raise
    return out


def check_client_events(session: Session, events: list[ClientEvent]) -> list[Any]:
    """Everything that can be refused, checked before anything is applied (a refused list
    changes nothing). Returns what each event applies (configs, resolved specs).

    Raises:
        ApiError: naming the param, with the ``event_id`` of the event refused.
    """
    config = session.config
    creates = 0
    known = {i.id for i in session.pipeline.conversation.items}
    plans: list[Any] = []
    for index, event in enumerate(events):
        try:
            plan: Any = None
            if event.kind == "session.update":
                config = plan = session.check_config(event.body["session"], config)
            elif event.kind == "conversation.item.create":
                item, previous = event.parsed
                if item.id in known:
                    raise ApiError(
                        400,
                        "item_id_exists",
                        f"item {item.id!r} is already in the conversation",
                        param=f"[{index}].item.id",
                    )
                if previous and previous not in known:
                    raise session.item_not_found(previous, f"[{index}].previous_item_id")
                known.add(item.id)
            elif event.kind in ("conversation.item.retrieve", "conversation.item.delete"):
                if event.parsed not in known:
                    raise session.item_not_found(event.parsed, f"[{index}].item_id")
                if event.kind == "conversation.item.delete":
                    known.discard(event.parsed)
            elif event.kind == "conversation.item.truncate":
                try:
                    session.check_truncate(*event.parsed)
                except ApiError as error:
                    error.param = f"[{index}].{error.param}"
                    raise
            elif event.kind == "response.create":
                spec, inputs = event.parsed
                if inputs or spec.input is not None:
                    resolved = []
                    for i, entry in enumerate(inputs):
                        if isinstance(entry, _Reference):
                            found = session.pipeline.conversation.get(entry.id)
                            if found is None:
                                raise session.item_not_found(
                                    entry.id, f"[{index}].response.input[{i}].id"
                                )
                            resolved.append(found)
                        else:
                            resolved.append(entry)
                    spec = dataclasses.replace(spec, input=tuple(resolved))
                tools = config.tools if spec.tools is None else spec.tools
                choice = config.tool_choice if spec.tool_choice is None else spec.tool_choice
                check_tool_choice(tools, choice, f"[{index}].response.tool_choice")
                creates += 1  # (a second one in the list is the one refused)
                session.check_responses(creates)
                plan = dataclasses.replace(spec, event_id=event.event_id)
            plans.append(plan)
        except ApiError as error:
            error.event_id = event.event_id
            raise
    return plans


async def apply_client_event(session: Session, event: ClientEvent, plan: Any) -> None:
    """Carry out one checked event (``plan``: what :func:`check_client_events` made of it)."""
    kind = event.kind
    if kind == "session.update":
        session.apply_config(plan)
    elif kind == "input_audio_buffer.append":
        await session.append_audio(event.parsed)
    elif kind == "input_audio_buffer.clear":
        await session.clear_input()
        session.events.emit("input_audio_buffer.cleared")
    elif kind == "input_audio_buffer.commit":
        await session.commit_input()
    elif kind == "response.cancel":
        session.cancel_response(event.event_id)
    elif kind == "output_audio_buffer.clear":
        session.clear_output()
    elif kind == "conversation.item.create":
        session.add_item(*event.parsed)
    elif kind == "conversation.item.retrieve":
        item = session.pipeline.conversation.get(event.parsed)
        if item is not None:
            session.events.emit("conversation.item.retrieved", item=item.describe())
    elif kind == "conversation.item.delete":
        session.delete_item(event.parsed)
    elif kind == "conversation.item.truncate":
        session.truncate_item(*event.parsed)
    elif kind == "response.create":
        session.create_response(plan)
