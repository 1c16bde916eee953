"""OpenAI Realtime's two vocabularies: GA (what voxwire emits) and beta (on request).

Sessions emit GA events only. A reader that asked for the beta vocabulary (the
``OpenAI-Beta: realtime=v1`` header, on creation or on the event stream) gets each event
through :func:`to_beta` as it is written, so the replay buffer holds one copy. Pure
functions of JSON values: no I/O, no session state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app._config import SessionConfig

BETA_HEADER = "OpenAI-Beta"
BETA_VALUE = "realtime=v1"

# GA event name → the beta one (absent: same name; None: the beta API had no such event)
BETA_NAMES: dict[str, str | None] = {
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
}
# content part types inside items
BETA_PARTS = {"output_audio": "audio", "output_text": "text"}


def wants_beta(header: str | None) -> bool:
    """Whether an ``OpenAI-Beta`` header asked for the beta vocabulary (``realtime=v1``)."""
    return any(part.strip() == BETA_VALUE for part in (header or "").split(","))


def to_beta(payload: dict[str, Any]) -> dict[str, Any] | None:
    """A GA server event in the beta vocabulary; ``None`` when beta had no such event."""
    kind = payload["type"]
    name = BETA_NAMES.get(kind, kind)
    if name is None:
        return None
    out = dict(payload)
    out["type"] = name
    if "item" in out:
        out["item"] = _beta_item(out["item"])
    if kind in ("session.created", "session.updated"):
        out["session"] = beta_session(out["session"])
    if kind in ("response.created", "response.done"):
        response = dict(out["response"])
        response["output"] = [_beta_item(i) for i in response.get("output", [])]
        modalities = response.pop("output_modalities", None)
        if modalities is not None:
            response["modalities"] = ["text", "audio"] if "audio" in modalities else ["text"]
        out["response"] = response
    return out


def _beta_item(item: dict[str, Any]) -> dict[str, Any]:
    if "content" not in item:
        return item
    content = [
        p | {"type": BETA_PARTS[p["type"]]} if p.get("type") in BETA_PARTS else p
        for p in item["content"]
    ]
    return item | {"content": content}


def _pcm(rate: int) -> dict[str, Any]:
    # GA's audio/pcm names only 24 kHz; voxwire's other rates are in ``config``.
    return {"type": "audio/pcm", "rate": rate} if rate == 24000 else {"type": "audio/pcm"}


def ga_session(config: SessionConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """The GA session object (``session.created``/``updated``, GET) with voxwire's
    ``extra`` fields (id, state, stats) and its flat ``config``."""
    td = config.turn_detection
    return {
        **extra,
        "type": "realtime",
        "object": "realtime.session",
        "instructions": config.instructions,
        "output_modalities": list(config.modalities),
        "audio": {
            "input": {
                "format": _pcm(config.input_sample_rate),
                "turn_detection": None if td is None else td.to_json(),
                "transcription": {
                    "model": config.transcription_model,
                    "language": config.transcription_language,
                },
                "noise_reduction": None,
            },
            "output": {
                "format": _pcm(config.output_sample_rate),
                "voice": config.voice,
                "speed": config.speed,
            },
        },
        "tools": [dict(t) for t in config.tools],
        "tool_choice": config.tool_choice,
        "max_output_tokens": config.max_response_output_tokens,
        "config": config.to_json(),
    }


GA_ONLY_SESSION_KEYS = ("type", "output_modalities", "audio", "max_output_tokens")


def beta_session(session: dict[str, Any]) -> dict[str, Any]:
    """The beta view of :func:`ga_session`: the flat config's keys at the top level."""
    out = {k: v for k, v in session.items() if k not in GA_ONLY_SESSION_KEYS}
    flat = session["config"]
    out.update(
        modalities=flat["modalities"],
        voice=flat["voice"],
        speed=flat["speed"],
        input_audio_format="pcm16",
        output_audio_format="pcm16",
        input_audio_transcription=flat["input_audio_transcription"],
        turn_detection=flat["turn_detection"],
        temperature=flat["temperature"],
        max_response_output_tokens=flat["max_response_output_tokens"],
    )
    return out


def chat_tools(tools: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Realtime function tools (as :func:`app._config.parse_tools` made them, every key
    filled in) in chat-completions form."""
    return [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t["description"],
                "parameters": t["parameters"],
            },
        }
        for t in tools
    ]


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice
