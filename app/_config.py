"""Server configuration (flat, names carry units) and strict session-config validation."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app._errors import ApiError
from models import ModelPaths

if TYPE_CHECKING:
    from collections.abc import Mapping

SUPPORTED_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
RESPONDERS = ("echo", "llm", "none", "loopback")
BACKENDS = ("local", "openai")
VOICES = ("joe",)  # the embedded voice (VOICES[0]); a TTS service has its own
TRANSCRIPTION_MODELS = ("whisper-tiny.en",)  # the embedded Whisper
TRANSCRIPTION_LANGUAGES = ("en",)
Responder = Literal["echo", "llm", "none", "loopback"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Process-wide settings. Every env var is ``VOXWIRE_<NAME>`` in upper case."""

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    api_key: str | None = field(default=None, repr=False)
    # sessions
    # measured: one process holds ~30-50 real-time sessions on one core (bench/README.md)
    max_sessions: int = 40
    # Behind a hashing proxy: the request header through which the proxy picks a new
    # session's id, so the id hashes to the instance that got the creation request
    # (deploy/nginx.conf, deploy/haproxy.cfg). Only set it when the proxy overwrites it.
    session_id_header: str = ""
    session_idle_ttl_s: float = 300.0
    reap_interval_s: float = 5.0
    default_responder: str = "echo"
    # request bodies
    max_json_bytes: int = 64 * 1024
    body_backlog_bytes: int = 1024 * 1024
    max_upload_request_bytes: int = 256 * 1024 * 1024
    max_sequenced_upload_bytes: int = 1024 * 1024
    max_session_audio_s: float = 4 * 3600.0
    upload_idle_timeout_s: float = 10.0
    upload_backpressure_timeout_s: float = 5.0
    retry_after_s: int = 1
    # pipeline channels (items)
    ingest_queue_chunks: int = 32
    frame_queue_frames: int = 64
    # models (empty path = the embedded default)
    vad_model: str = ""
    stt_model: str = ""
    tts_voice: str = ""
    turn_model: str = ""  # Smart Turn v3.2 ONNX (default: in the pipecat-ai wheel)
    stt_model_path: str = ""  # a (larger) CTranslate2 Whisper directory; same as stt_model
    stt_threads: int = 2
    tts_threads: int = 1
    # where local models run: auto (CUDA when it works, else CPU), cpu, cuda
    device: str = "auto"
    # Speech models as services (OpenAI's audio APIs: vLLM, speaches, Kokoro-FastAPI,
    # OpenAI): "local" runs the embedded models, "openai" posts to <base_url>.
    stt_backend: str = "local"
    stt_base_url: str = ""
    stt_api_key: str = field(default="", repr=False)
    stt_remote_model: str = "whisper-1"  # sent unless the session names another
    stt_timeout_s: float = 10.0  # the deadline of one remote transcription
    stt_partials: str = "local"  # partial transcripts: local (embedded), remote, off
    stt_fallback: bool = False  # a failed remote call is retried on the embedded model
    tts_backend: str = "local"
    tts_base_url: str = ""
    tts_api_key: str = field(default="", repr=False)
    tts_remote_model: str = "tts-1"
    tts_remote_voice: str = "alloy"  # sent while the session keeps the embedded voice
    tts_timeout_s: float = 10.0  # first audio byte of one remote clause
    tts_fallback: bool = False
    # STT and TTS calls running at once (one per core: more only oversubscribes the CPU)
    inference_concurrency: int = 2
    # /readyz answers 503 (overloaded) while final transcripts and first replies wait this
    # long in the inference scheduler; partials stop at half of it
    scheduler_full_lag_ms: int = 300
    model_load_wait_s: float = 60.0
    # turn taking
    vad_min_speech_ms: int = 250
    speculative_pause_ms: int = 64
    # partial transcripts: one decode of the turn so far every this many ms of speech
    partial_interval_ms: int = 200
    # semantic_vad: the first end-of-turn check at a pause this long (re-checked later)
    turn_check_pause_ms: int = 160
    # speech during a reply this long is a barge-in whatever it says (shorter: the words
    # decide; a backchannel or no words resumes the reply)
    interrupt_confirm_ms: int = 700
    max_turn_s: float = 30.0
    utterance_queue: int = 4
    turn_queue: int = 4
    sentence_queue: int = 8
    # playout
    playout_frame_ms: int = 20
    playout_lead_ms: int = 100
    # A stream is written this much audio at a time (whole frames, at least one): 40 ms
    # halves the socket writes of one per frame, for 20 ms of the lead's jitter margin (a
    # client holds lead - 20 to lead + 20 ms; bench/README.md, transport.py). Keep it under
    # the lead.
    stream_write_ms: int = 40
    playout_max_s: float = 30.0
    reader_queue_ms: int = 2000
    # How much of the audio stream is kept for `stream_audio?from_ms=` after a drop.
    stream_resume_ms: int = 3000
    # events
    event_replay_size: int = 512
    sse_ping_interval_s: float = 15.0
    # the llm responder (any OpenAI-compatible server); env OPENAI_* or VOXWIRE_OPENAI_*
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str = field(default="", repr=False)
    openai_model: str = "gpt-4o-mini"
    llm_connect_timeout_s: float = 5.0
    llm_first_token_timeout_s: float = 20.0
    llm_total_timeout_s: float = 120.0
    max_history_items: int = 200
    max_frame_bytes: int = 4 * 1024 * 1024
    # HTTP server
    response_timeout_s: float = 60.0
    keep_alive_timeout_s: float = 75.0
    graceful_timeout_s: float = 5.0
    # A connection whose peer acknowledges nothing (it stopped reading, or vanished) for
    # this long is aborted by the kernel (TCP_USER_TIMEOUT): see app/_server.py.
    send_timeout_s: float = 15.0
    # Origins allowed to call the API from a page served elsewhere: "" (off: same origin
    # only, like the bundled page), "*" or a comma-separated list of exact origins.
    cors_origins: str = ""
    # A JSON body or an image must arrive whole within this (slowloris on small bodies).
    small_body_timeout_s: float = 10.0
    # A streamed upload slower than this on average over each upload_idle_timeout_s
    # window is 408 (slowloris on uploads; 8 kHz PCM16 is 16000 B/s).
    upload_min_bytes_per_s: float = 1000.0
    # After SIGTERM, keep listening this long while /readyz, creation and new streams
    # answer 503: a load balancer's health check sees the instance leave before its
    # port closes (open streams end at once). 0 closes the port right away.
    shutdown_notice_s: float = 0.0
    # native memory (glibc; app/_memory.py): malloc arenas (0 = glibc's default of eight
    # per core) and how often freed heap pages go back to the OS (0 = never)
    malloc_arenas: int = 2
    malloc_trim_interval_s: float = 10.0

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("stt_backend", self.stt_backend, BACKENDS),
            ("tts_backend", self.tts_backend, BACKENDS),
            ("stt_partials", self.stt_partials, ("local", "remote", "off")),
            ("device", self.device, ("auto", "cpu", "cuda")),
        ):
            if value not in choices:
                raise ValueError(f"VOXWIRE_{name.upper()}={value!r}: one of {', '.join(choices)}")
        for backend, url in (("stt", self.stt_base_url), ("tts", self.tts_base_url)):
            if getattr(self, f"{backend}_backend") == "openai" and not url:
                raise ValueError(f"VOXWIRE_{backend.upper()}_BASE_URL is needed with openai")

    def caps(self) -> Caps:
        """What sessions may ask for, given the backends."""
        return Caps(
            voices=None if self.tts_backend == "openai" else VOICES,
            transcription_models=None if self.stt_backend == "openai" else TRANSCRIPTION_MODELS,
            languages=None if self.stt_backend == "openai" else TRANSCRIPTION_LANGUAGES,
            prompts=self.stt_backend == "openai",
        )

    def model_paths(self) -> ModelPaths:
        return ModelPaths(
            vad=Path(self.vad_model) if self.vad_model else None,
            stt=Path(self.stt_model_path or self.stt_model)
            if (self.stt_model_path or self.stt_model)
            else None,
            tts=Path(self.tts_voice) if self.tts_voice else None,
            turn=Path(self.turn_model) if self.turn_model else None,
            stt_threads=self.stt_threads,
            tts_threads=self.tts_threads,
            # one more than the limiter: an abandoned partial decode may still be running
            stt_workers=self.inference_concurrency + 1,
            device=self.device,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Build from ``VOXWIRE_*`` variables, then ``overrides`` (e.g. command-line flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"VOXWIRE_{f.name.upper()}")
            if not raw and f.name.startswith("openai_"):
                raw = env.get(f.name.upper())  # the names every OpenAI client reads
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls(), f.name))
            try:
                if f.name.endswith("api_key"):
                    values[f.name] = raw
                elif kind is bool:
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError("expected true or false")
                    values[f.name] = raw.lower() in ("1", "true", "yes")
                elif kind is int:
                    values[f.name] = int(raw)
                elif kind is float:
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"VOXWIRE_{f.name.upper()}={raw!r}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")
EAGERNESS = ("low", "medium", "high", "auto")


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """Turn detection settings (OpenAI Realtime names).

    ``server_vad`` ends a turn after ``silence_duration_ms``; ``semantic_vad`` judges at
    each short pause whether the user has finished (docs/architecture.md), with
    ``eagerness`` bounding the wait; the silence window applies when it is unsure.
    """

    type: str = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    eagerness: str = "auto"
    create_response: bool = True
    interrupt_response: bool = True

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.type == "server_vad":
            del data["eagerness"]
        return data


@dataclass(frozen=True, slots=True)
class Caps:
    """What a session may ask for (``None``: anything, a remote service decides)."""

    voices: tuple[str, ...] | None = VOICES
    transcription_models: tuple[str, ...] | None = TRANSCRIPTION_MODELS
    languages: tuple[str, ...] | None = TRANSCRIPTION_LANGUAGES
    prompts: bool = False


MODALITIES = ("audio", "text")
TOOL_CHOICES = ("auto", "none", "required")
MAX_TOOLS = 128
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """One session's configuration; ``turn_detection=None`` means push-to-talk.

    This is voxwire's flat shape (OpenAI Realtime's beta names plus voxwire's own keys);
    :mod:`app._realtime` maps the GA shape (``audio.input.*``, ``output_modalities``, ...)
    onto it.
    """

    instructions: str = "You are a helpful assistant."
    voice: str = VOICES[0]
    input_sample_rate: int = 16000
    output_sample_rate: int = 16000
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    responder: str = "echo"
    temperature: float = 0.8
    max_response_output_tokens: int = 4096
    modalities: tuple[str, ...] = ("audio",)  # ("text",): replies are text only, unspoken
    tools: tuple[dict[str, Any], ...] = ()  # Realtime function tools
    tool_choice: str | dict[str, Any] = "auto"
    speed: float = 1.0
    transcription_model: str = TRANSCRIPTION_MODELS[0]
    transcription_language: str = "en"
    transcription_prompt: str = ""  # remote STT only

    @property
    def speaks(self) -> bool:
        return "audio" in self.modalities

    def to_json(self) -> dict[str, Any]:
        return {
            "instructions": self.instructions,
            "voice": self.voice,
            "input_sample_rate": self.input_sample_rate,
            "output_sample_rate": self.output_sample_rate,
            "turn_detection": None
            if self.turn_detection is None
            else self.turn_detection.to_json(),
            "responder": self.responder,
            "temperature": self.temperature,
            "max_response_output_tokens": self.max_response_output_tokens,
            "modalities": ["text", "audio"] if self.speaks else ["text"],
            "tools": [dict(t) for t in self.tools],
            "tool_choice": self.tool_choice,
            "speed": self.speed,
            "input_audio_transcription": {
                "model": self.transcription_model,
                "language": self.transcription_language,
                "prompt": self.transcription_prompt,
            },
        }


# Keys that may not change once a session exists: the WAV header and the client's
# capture format are fixed when the streams open.
IMMUTABLE_KEYS = frozenset({"input_sample_rate", "output_sample_rate"})


def _bad(param: str, message: str) -> ApiError:
    return ApiError(422, "invalid_value", message, param=param)


def _number(value: object, param: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(param, f"{param} must be a number")
    try:
        number = float(value)  # a JSON integer may be far beyond any float
    except OverflowError:
        raise _bad(param, f"{param} must be between {lo:g} and {hi:g}") from None
    if not math.isfinite(number):
        raise _bad(param, f"{param} must be finite")
    if not lo <= number <= hi:
        raise _bad(param, f"{param} must be between {lo:g} and {hi:g}")
    return number


def _integer(value: object, param: str, lo: int, hi: int) -> int:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(param, f"{param} must be an integer")
    if not lo <= value <= hi:
        raise _bad(param, f"{param} must be between {lo} and {hi}")
    return value


def _choice(value: object, param: str, choices: tuple[Any, ...]) -> Any:
    if isinstance(value, bool) or value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise _bad(param, f"{param} must be one of {listed}")
    return value


def _unsupported(param: str, what: str, available: str) -> ApiError:
    return ApiError(
        422, "unsupported_value", f"{param}: {what} is not available; {available}", param=param
    )


def _turn_detection(
    value: object, base: TurnDetection | None, param: str = "turn_detection"
) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(param, f"{param} must be an object or null")
    start = base or TurnDetection()
    out: dict[str, Any] = {}
    for key, v in value.items():
        where = f"{param}.{key}"
        if key == "type":
            out[key] = _choice(v, where, TURN_DETECTION_TYPES)
        elif key == "eagerness":
            out[key] = _choice(v, where, EAGERNESS)
        elif key in ("create_response", "interrupt_response"):
            if not isinstance(v, bool):
                raise _bad(where, f"{where} must be a boolean")
            out[key] = v
        elif key == "threshold":
            out[key] = _number(v, where, 0.0, 1.0)
        elif key == "prefix_padding_ms":
            out[key] = _integer(v, where, 0, 5000)
        elif key == "silence_duration_ms":
            out[key] = _integer(v, where, 0, 10000)
        elif key == "idle_timeout_ms":
            if v is not None:
                raise _unsupported(where, "an idle timeout", "leave it null")
        else:
            raise _bad(where, f"unknown key {key!r}")
    return dataclasses.replace(start, **out)


def parse_modalities(value: object, param: str, *, beta: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise _bad(param, f"{param} must be a non-empty list of 'audio' and 'text'")
    for i, m in enumerate(value):
        _choice(m, f"{param}[{i}]", MODALITIES)
    if beta:  # beta: ["text", "audio"] speaks (with a transcript), ["text"] does not
        return ("audio",) if "audio" in value else ("text",)
    if len(set(value)) > 1:
        raise _unsupported(param, "audio and text at once", "use ['audio'] or ['text']")
    return (value[0],)


def parse_tools(value: object, param: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        raise _bad(param, f"{param} must be a list")
    if len(value) > MAX_TOOLS:
        raise _bad(param, f"{param} holds at most {MAX_TOOLS} tools")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise _bad(where, "each tool must be an object")
        kind = tool.get("type", "function")
        if kind != "function":
            raise _unsupported(f"{where}.type", repr(kind), "voxwire calls 'function' tools")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise _bad(f"{where}.name", "a tool name is 1-64 of [A-Za-z0-9_-]")
        if any(t["name"] == name for t in tools):
            raise _bad(f"{where}.name", f"tool {name!r} is defined twice")
        description = tool.get("description", "")
        if not isinstance(description, str):
            raise _bad(f"{where}.description", "description must be a string")
        parameters = tool.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise _bad(f"{where}.parameters", "parameters must be a JSON Schema object")
        for key in tool:
            if key not in ("type", "name", "description", "parameters"):
                raise _bad(f"{where}.{key}", f"unknown key {key!r}")
        tools.append(
            {"type": "function", "name": name, "description": description, "parameters": parameters}
        )
    return tuple(tools)


def parse_tool_choice(value: object, param: str) -> str | dict[str, Any]:
    if isinstance(value, str):
        return str(_choice(value, param, TOOL_CHOICES))
    if isinstance(value, dict):
        if value.get("type") != "function":
            raise _unsupported(f"{param}.type", repr(value.get("type")), "use 'function'")
        name = value.get("name")
        if not isinstance(name, str) or set(value) - {"type", "name"}:
            raise _bad(param, f"{param} is {{'type': 'function', 'name': <a tool's name>}}")
        return {"type": "function", "name": name}
    raise _bad(param, f"{param} must be auto, none, required or a function")


def check_tool_choice(tools: tuple[dict[str, Any], ...], choice: object, param: str) -> None:
    """A named tool_choice must name one of ``tools``; ``required`` needs some."""
    names = [t["name"] for t in tools]
    if isinstance(choice, dict) and choice["name"] not in names:
        listed = ", ".join(names) or "none are defined"
        raise _bad(f"{param}.name", f"tool {choice['name']!r} is not defined (tools: {listed})")
    if choice == "required" and not tools:
        raise _bad(param, "tool_choice 'required' needs tools")


def _pcm_format(value: object, param: str) -> int | None:
    """A GA ``audio.*.format``: ``{"type": "audio/pcm", "rate": N}`` → N (None: unchanged)."""
    if not isinstance(value, dict):
        raise _bad(param, f"{param} must be an object")
    kind = value.get("type", "audio/pcm")
    if kind != "audio/pcm":
        raise _unsupported(f"{param}.type", repr(kind), "voxwire speaks 'audio/pcm' (PCM16)")
    for key in value:
        if key not in ("type", "rate"):
            raise _bad(f"{param}.{key}", f"unknown key {key!r}")
    if "rate" not in value:
        return None
    rate = _integer(value["rate"], f"{param}.rate", 0, 10**6)
    _choice(rate, f"{param}.rate", SUPPORTED_RATES)
    return rate


def _transcription(value: object, param: str, base: SessionConfig, caps: Caps) -> dict[str, Any]:
    if value is None:
        raise _unsupported(param, "turning transcription off", "turns need it: omit the key")
    if not isinstance(value, dict):
        raise _bad(param, f"{param} must be an object")
    out: dict[str, Any] = {}
    for key, v in value.items():
        where = f"{param}.{key}"
        if key == "model":
            models = caps.transcription_models
            if not isinstance(v, str) or not 0 < len(v) <= 128:
                raise _bad(where, f"{where} must be a model name")
            if models is not None and v not in models:
                raise _unsupported(where, repr(v), f"models: {', '.join(models)}")
            out["transcription_model"] = v
        elif key == "language":
            languages = caps.languages
            if v is not None and not isinstance(v, str):
                raise _bad(where, f"{where} must be a language code")
            if v is not None and languages is not None and v not in languages:
                raise _unsupported(where, repr(v), f"languages: {', '.join(languages)}")
            out["transcription_language"] = v or base.transcription_language
        elif key == "prompt" and caps.prompts:
            if not isinstance(v, str) or len(v) > 1000:
                raise _bad(where, f"{where} must be a string of at most 1000 characters")
            out["transcription_prompt"] = v
        elif key in ("prompt", "keywords", "delay", "languages"):
            if v not in (None, "", []):
                raise _unsupported(where, key, "the embedded Whisper takes no hints")
        else:
            raise _bad(where, f"unknown key {key!r}")
    return out


def check_voice(voice: str, param: str, voices: tuple[str, ...] | None) -> None:
    """Raises: ApiError: 422 ``unsupported_value`` for a voice there is not (``voices``
    ``None``: a TTS service decides)."""
    if voices is not None and voice not in voices:
        raise _unsupported(param, repr(voice), f"voices: {', '.join(voices)}")


def _null_only(value: object, param: str, what: str) -> None:
    if value is not None:
        raise _unsupported(param, what, "leave it null")


def _pcm16(value: object, param: str) -> None:
    if value != "pcm16":
        raise _unsupported(param, repr(value), "voxwire speaks 'pcm16'")


def _flat_field(
    key: str, v: object, base: SessionConfig, param: str, out: dict[str, Any], caps: Caps
) -> None:
    """Validate one flat (beta and voxwire) key into ``out`` (SessionConfig fields)."""
    if key == "instructions":
        if not isinstance(v, str):
            raise _bad(param, "instructions must be a string")
        if len(v) > 16000:
            raise _bad(param, "instructions must be at most 16000 characters")
        out[key] = v
    elif key == "voice":
        if not isinstance(v, str) or not 0 < len(v) <= 64:
            raise _bad(param, f"{param} must be a voice name")
        check_voice(v, param, caps.voices)
        out[key] = v
    elif key in ("input_sample_rate", "output_sample_rate"):
        out[key] = _integer(v, param, 0, 10**6)
        _choice(out[key], param, SUPPORTED_RATES)
    elif key == "turn_detection":
        out[key] = _turn_detection(v, base.turn_detection, param)
    elif key == "responder":
        out[key] = _choice(v, param, RESPONDERS)
    elif key == "temperature":
        out[key] = _number(v, param, 0.0, 2.0)
    elif key in ("max_response_output_tokens", "max_output_tokens"):
        out["max_response_output_tokens"] = 4096 if v == "inf" else _integer(v, param, 1, 4096)
    elif key == "tools":
        out[key] = parse_tools(v, param)
    elif key == "tool_choice":
        out[key] = parse_tool_choice(v, param)
    elif key == "speed":
        out[key] = _number(v, param, 0.25, 1.5)
    else:
        raise _bad(param, f"unknown session config key {key!r}")


# OpenAI Realtime (GA) session keys voxwire does not honour: refused by name.
GA_UNSUPPORTED = ("model", "include", "parallel_tool_calls", "prompt", "reasoning", "tracing")
GA_SHAPE_KEYS = ("type", "audio", "output_modalities", "max_output_tokens")
BETA_KEYS = {
    "modalities": "output_modalities",
    "input_audio_format": "audio.input.format",
    "output_audio_format": "audio.output.format",
    "input_audio_transcription": "audio.input.transcription",
    "input_audio_noise_reduction": "audio.input.noise_reduction",
    "turn_detection": "audio.input.turn_detection",
    "voice": "audio.output.voice",
    "speed": "audio.output.speed",
    "max_response_output_tokens": "max_output_tokens",
}


def is_ga_shape(data: dict[str, Any]) -> bool:
    """Whether a session object is in OpenAI Realtime's GA shape (else beta/flat)."""
    return any(k in data for k in GA_SHAPE_KEYS)


def _ga_session(data: dict[str, Any], base: SessionConfig, out: dict[str, Any], caps: Caps) -> None:
    for key, v in data.items():
        if key == "type":
            if v != "realtime":
                raise _unsupported(
                    key, repr(v), "voxwire sessions are 'realtime' (responder 'none' transcribes)"
                )
        elif key == "output_modalities":
            out["modalities"] = parse_modalities(v, key, beta=False)
        elif key == "audio":
            if not isinstance(v, dict):
                raise _bad(key, "audio must be an object")
            _ga_audio(v, base, out, caps)
        elif key == "truncation":
            if v not in ("auto", None):
                raise _unsupported(key, repr(v), "history is truncated automatically ('auto')")
        elif key in GA_UNSUPPORTED:
            raise _unsupported(key, key, "voxwire does not take it (see docs/api.md)")
        elif key in BETA_KEYS:
            raise _bad(key, f"{key} is the beta name; in the GA shape it is {BETA_KEYS[key]}")
        else:
            _flat_field(key, v, base, key, out, caps)


def _ga_audio(audio: dict[str, Any], base: SessionConfig, out: dict[str, Any], caps: Caps) -> None:
    for side, conf in audio.items():
        where = f"audio.{side}"
        if side not in ("input", "output"):
            raise _bad(where, f"unknown key {side!r}")
        if not isinstance(conf, dict):
            raise _bad(where, f"{where} must be an object")
        for key, v in conf.items():
            param = f"{where}.{key}"
            if key == "format":
                rate = _pcm_format(v, param)
                if rate is not None:
                    out[f"{side}_sample_rate"] = rate
            elif side == "input" and key == "turn_detection":
                out[key] = _turn_detection(v, base.turn_detection, param)
            elif side == "input" and key == "transcription":
                out.update(_transcription(v, param, base, caps))
            elif side == "input" and key == "noise_reduction":
                _null_only(v, param, "noise reduction")
            elif side == "output" and key in ("voice", "speed"):
                _flat_field(key, v, base, param, out, caps)
            else:
                raise _bad(param, f"unknown key {key!r}")


def validate_session_config(
    data: object,
    base: SessionConfig | None = None,
    *,
    update: bool = False,
    caps: Caps | None = None,
) -> SessionConfig:
    """Check a (partial) session config strictly and merge it over ``base``.

    Takes OpenAI Realtime's GA shape (``type``, ``audio.input.*``, ``output_modalities``,
    ...) or the flat one (beta names and voxwire's own keys); see :func:`is_ga_shape`.

    Raises:
        ApiError: 422 naming the offending ``param`` for unknown keys, wrong types,
            non-finite numbers and out-of-range values (``invalid_value``), and for values
            voxwire understands but cannot honour (``unsupported_value``, naming what is
            available).
    """
    base = base or SessionConfig()
    caps = caps or Caps()
    if data is None:
        return base
    if not isinstance(data, dict):
        raise _bad("", "session config must be a JSON object")
    if not all(isinstance(k, str) for k in data):
        raise _bad("", "keys must be strings")
    out: dict[str, Any] = {}
    if is_ga_shape(data):
        _ga_session(data, base, out, caps)
    else:
        for key, v in data.items():
            if key == "modalities":
                out[key] = parse_modalities(v, key, beta=True)
            elif key in ("input_audio_format", "output_audio_format"):
                _pcm16(v, key)
            elif key == "input_audio_transcription":
                out.update(_transcription(v, key, base, caps))
            elif key == "input_audio_noise_reduction":
                _null_only(v, key, "noise reduction")
            else:
                _flat_field(key, v, base, key, out, caps)
    if update:
        for key in IMMUTABLE_KEYS:
            if key in out and out[key] != getattr(base, key):
                raise _bad(key, f"{key} is fixed when the session is created")
    config = dataclasses.replace(base, **out)
    check_tool_choice(config.tools, config.tool_choice, "tool_choice")
    return config
