"""Server configuration (flat, names carry units) and strict session-config validation."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app._errors import ApiError
from models import ModelPaths

if TYPE_CHECKING:
    from collections.abc import Mapping

SUPPORTED_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
RESPONDERS = ("echo", "llm", "none", "loopback")
VOICES = ("joe",)
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
    stt_threads: int = 2
    tts_threads: int = 1
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

    def model_paths(self) -> ModelPaths:
        return ModelPaths(
            vad=Path(self.vad_model) if self.vad_model else None,
            stt=Path(self.stt_model) if self.stt_model else None,
            tts=Path(self.tts_voice) if self.tts_voice else None,
            turn=Path(self.turn_model) if self.turn_model else None,
            stt_threads=self.stt_threads,
            tts_threads=self.tts_threads,
            # one more than the limiter: an abandoned partial decode may still be running
            stt_workers=self.inference_concurrency + 1,
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
                if f.name in ("api_key", "openai_api_key"):
                    values[f.name] = raw
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
class SessionConfig:
    """One session's configuration; ``turn_detection=None`` means push-to-talk."""

    instructions: str = "You are a helpful assistant."
    voice: str = "joe"
    input_sample_rate: int = 16000
    output_sample_rate: int = 16000
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    responder: str = "echo"
    temperature: float = 0.8
    max_response_output_tokens: int = 4096

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["turn_detection"] = (
            None if self.turn_detection is None else self.turn_detection.to_json()
        )
        return data


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


def _turn_detection(value: object, base: TurnDetection | None) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("turn_detection", "turn_detection must be an object or null")
    start = base or TurnDetection()
    out: dict[str, Any] = {}
    for key, v in value.items():
        param = f"turn_detection.{key}"
        if key == "type":
            out[key] = _choice(v, param, TURN_DETECTION_TYPES)
        elif key == "eagerness":
            out[key] = _choice(v, param, EAGERNESS)
        elif key in ("create_response", "interrupt_response"):
            if not isinstance(v, bool):
                raise _bad(param, f"{param} must be a boolean")
            out[key] = v
        elif key == "threshold":
            out[key] = _number(v, param, 0.0, 1.0)
        elif key == "prefix_padding_ms":
            out[key] = _integer(v, param, 0, 5000)
        elif key == "silence_duration_ms":
            out[key] = _integer(v, param, 0, 10000)
        else:
            raise _bad(param, f"unknown key {key!r}")
    return dataclasses.replace(start, **out)


def validate_session_config(
    data: object, base: SessionConfig | None = None, *, update: bool = False
) -> SessionConfig:
    """Check a (partial) session config strictly and merge it over ``base``.

    Raises:
        ApiError: 422 naming the offending ``param`` for unknown keys, wrong types,
            non-finite numbers and out-of-range values.
    """
    base = base or SessionConfig()
    if data is None:
        return base
    if not isinstance(data, dict):
        raise _bad("", "session config must be a JSON object")
    out: dict[str, Any] = {}
    for key, v in data.items():
        if not isinstance(key, str):
            raise _bad("", "keys must be strings")
        if update and key in IMMUTABLE_KEYS and v != getattr(base, key):
            raise _bad(key, f"{key} is fixed when the session is created")
        if key == "instructions":
            if not isinstance(v, str):
                raise _bad(key, "instructions must be a string")
            if len(v) > 16000:
                raise _bad(key, "instructions must be at most 16000 characters")
            out[key] = v
        elif key == "voice":
            out[key] = _choice(v, key, VOICES)
        elif key in ("input_sample_rate", "output_sample_rate"):
            out[key] = _integer(v, key, 0, 10**6)
            _choice(out[key], key, SUPPORTED_RATES)
        elif key == "turn_detection":
            out[key] = _turn_detection(v, base.turn_detection)
        elif key == "responder":
            out[key] = _choice(v, key, RESPONDERS)
        elif key == "temperature":
            out[key] = _number(v, key, 0.0, 2.0)
        elif key == "max_response_output_tokens":
            out[key] = 4096 if v == "inf" else _integer(v, key, 1, 4096)
        else:
            raise _bad(key, f"unknown session config key {key!r}")
    return dataclasses.replace(base, **out)
