"""The sans-IO core shared by the async and the sync client.

Everything here is plain data and pure functions: request descriptions, response and error
parsing, PCM alignment and chunking, the streamed WAV header, the
SSE cursor, and the reconnect logic (backoff with full jitter, the window of un-acknowledged
upload pieces, the audio stream's timeline across resumed responses). The two I/O shells
(``_async`` on trio + ``httpx.AsyncClient``, ``_sync`` on
``httpx.Client``) only send what is described here and sleep where told to.
"""

from __future__ import annotations

import json
import random
import struct
import threading
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping

    from httpx_sse import ServerSentEvent

#: Mono PCM16 little-endian bytes, or an int16 (or float in [-1, 1]) array.
PcmLike = bytes | bytearray | memoryview | np.ndarray
#: What ``stream_pcm`` takes: PCM, or an iterable of PCM pieces split anywhere.
PcmSource = PcmLike | Iterable[PcmLike]
AsyncPcmSource = PcmLike | Iterable[PcmLike] | AsyncIterable[PcmLike]

#: Sample rates the server accepts for ``input_sample_rate`` and ``output_sample_rate``.
ALLOWED_RATES: frozenset[int] = frozenset(
    {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000}
)
DEFAULT_RATE = 16000
WAV_HEADER_BYTES = 44
#: Below the server's ``max_sequenced_upload_bytes`` (1 MiB): bigger uploads are split.
MAX_UPLOAD_PIECE_BYTES = 512 * 1024
#: A ``Retry-After`` longer than this is not waited out (the error is raised instead).
MAX_RETRY_AFTER_S = 10.0
#: Client-side notices that wait for the event iterator (the oldest are dropped beyond).
MAX_QUEUED_NOTICES = 256

#: Plain requests; an upload may legitimately wait ~5 s for the session (then 429).
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
#: ``stream_audio`` writes every 20 ms, so 10 s without a byte means the stream is dead.
AUDIO_TIMEOUT = httpx.Timeout(10.0)
#: ``events`` sends a ``: ping`` after 15 s of quiet.
EVENTS_TIMEOUT = httpx.Timeout(10.0, read=45.0)


class VoxwireError(Exception):
    """An error answer from the server, or a response the client cannot use.

    Attributes:
        status: The HTTP status (0 when the problem is in a stream's content).
        code: The server's error code, e.g. ``session_not_found`` or ``sequence_gap``.
        message: The server's human-readable message.
        param: What the error is about (``"turn_detection.threshold"``), if the server said.
        retry_after: Seconds from the ``Retry-After`` header, if any.
        event_id: The ``event_id`` of the client event that was refused, when it had one
            (``POST .../events``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        *,
        retry_after: float | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(status, code, message, param)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.event_id = event_id

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        event = f" (event {self.event_id})" if self.event_id else ""
        return f"{self.status} {self.code}: {self.message}{where}{event}"


# -- requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request to make, and the statuses that mean success."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    ok: tuple[int, ...] = (200,)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.(Async)Client.request``."""
        out: dict[str, Any] = {"headers": self.headers}
        if self.json is not None:
            out["json"] = self.json
        if self.content is not None:
            out["content"] = self.content
        return out


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def join_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def create_call(base_url: str, config: Mapping[str, Any], api_key: str | None) -> Call:
    """``POST /api/sessions`` with the session config (omitted when empty)."""
    return Call(
        "POST",
        join_url(base_url, "/api/sessions"),
        bearer(api_key) if api_key else {},
        json=dict(config) if config else None,
        ok=(201,),
    )


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What ``POST /api/sessions`` returned: identity, credentials and config."""

    base_url: str
    id: str
    token: str
    config: dict[str, Any]

    @classmethod
    def from_created(cls, base_url: str, body: Any) -> SessionInfo:
        if not isinstance(body, dict) or not {"id", "token", "config"} <= body.keys():
            raise VoxwireError(201, "invalid_response", "session creation answer lacks id/token")
        return cls(base_url, str(body["id"]), str(body["token"]), dict(body["config"]))

    def url(self, suffix: str = "") -> str:
        return join_url(self.base_url, f"/api/sessions/{self.id}{suffix}")

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.token)

    def describe_call(self) -> Call:
        return Call("GET", self.url(), self.auth)

    def update_call(self, config: Mapping[str, Any]) -> Call:
        return Call("PATCH", self.url(), self.auth, json=dict(config))

    def delete_call(self) -> Call:
        return Call("DELETE", self.url(), self.auth, ok=(204,))

    def events_call(self, events: tuple[Mapping[str, Any], ...]) -> Call:
        return Call("POST", self.url("/events"), self.auth, json=[dict(e) for e in events])

    def stop_stream_call(self) -> Call:
        return Call("POST", self.url("/stop_stream"), self.auth)

    def upload_call(self, sequence: int, pcm: bytes, rate: int | None = None) -> Call:
        """A sequenced upload: idempotent, so it may be retried with the same number."""
        headers = {
            **self.auth,
            "X-Sequence": str(sequence),
            # Little-endian PCM16; the rate is the session's unless given.
            "Content-Type": "application/octet-stream"
            if rate is None
            else f"audio/pcm;rate={rate}",
        }
        return Call("POST", self.url("/upload_audio"), headers, content=pcm, ok=(204,))

    def stream_audio_request(self) -> tuple[str, dict[str, str]]:
        return self.url("/stream_audio"), self.auth

    def events_request(self, last_event_id: int | None) -> tuple[str, dict[str, str]]:
        headers = dict(self.auth)
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        return self.url("/events"), headers


def response_create_event(instructions: str | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``response.create`` client event; ``fields`` are more keys of its GA ``response``
    object (``output_modalities``, ``conversation``, ``input``, ``metadata``, ``tools``,
    ``tool_choice``, ``max_output_tokens``)."""
    response = dict(fields)
    if instructions is not None:
        response["instructions"] = instructions
    event: dict[str, Any] = {"type": "response.create"}
    if response:
        event["response"] = response
    return event


# -- responses ---------------------------------------------------------------------------


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: not something this server sends
        return None


def error_from(status: int, headers: httpx.Headers, content: bytes) -> VoxwireError:
    """The server's JSON error body as a :class:`VoxwireError` (any other body too)."""
    retry = _retry_after(headers)
    try:
        body = json.loads(content)
        err = body["error"]
        return VoxwireError(
            status,
            str(err.get("code") or err.get("type") or f"http_{status}"),
            str(err.get("message", "")),
            err.get("param"),
            retry_after=retry,
            event_id=err.get("event_id"),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not ours (a proxy's HTML page, an empty body): keep the status and a snippet.
        text = content[:200].decode("utf-8", "replace").strip()
        return VoxwireError(status, f"http_{status}", text or "no error body", retry_after=retry)


def check(call: Call, response: httpx.Response) -> Any:
    """The parsed JSON body of a successful answer (``None`` for an empty one).

    Raises:
        VoxwireError: the status is not one ``call`` accepts.
    """
    if response.status_code not in call.ok:
        raise error_from(response.status_code, response.headers, response.content)
    return response.json() if response.content else None


# -- audio -------------------------------------------------------------------------------


def as_pcm16(data: PcmLike) -> bytes:
    """PCM16 little-endian bytes from bytes or an int16 (or float in [-1, 1]) array."""
    if isinstance(data, np.ndarray):
        if data.dtype.kind == "f":
            data = np.clip(np.round(data * 32767), -32768, 32767)
        return data.astype("<i2").tobytes()
    return bytes(data)


class PcmChunker:
    """Cuts a byte stream into whole-sample chunks of a fixed size.

    Bytes may arrive in any split (an odd byte is carried); :meth:`flush` returns what is
    left, still sample aligned (a lone trailing byte of a broken stream is dropped).
    """

    def __init__(self, chunk_bytes: int) -> None:
        if chunk_bytes <= 0 or chunk_bytes % 2:
            raise ValueError("chunk_bytes must be a positive even number")
        self.chunk_bytes = chunk_bytes
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        n = len(self._pending) // self.chunk_bytes * self.chunk_bytes
        chunks = [
            bytes(self._pending[i : i + self.chunk_bytes]) for i in range(0, n, self.chunk_bytes)
        ]
        del self._pending[:n]
        return chunks

    def flush(self) -> bytes:
        cut = len(self._pending) // 2 * 2
        out = bytes(self._pending[:cut])
        self._pending.clear()
        return out


class OddByteCarry:
    """Keeps uploads sample aligned when the caller's pieces are not."""

    def __init__(self) -> None:
        self._carry = b""

    def align(self, data: bytes) -> bytes:
        data = self._carry + data
        cut = len(data) // 2 * 2
        self._carry = data[cut:]
        return data[:cut]


def split_upload(pcm: bytes) -> list[bytes]:
    """Pieces small enough for one sequenced upload each (sample aligned)."""
    step = MAX_UPLOAD_PIECE_BYTES
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def chunk_bytes_for(rate: int, chunk_ms: int) -> int:
    samples = rate * chunk_ms // 1000
    if samples <= 0:
        raise ValueError("chunk_ms is too small for this rate")
    return 2 * samples


class WavStreamReader:
    """Strips the 44-byte header of ``stream_audio`` and yields sample-aligned PCM16."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._carry = OddByteCarry()
        self.sample_rate: int | None = None
        self.channels = 1

    @property
    def ready(self) -> bool:
        return self.sample_rate is not None

    def feed(self, data: bytes) -> bytes:
        """PCM16 bytes in ``data`` past the header (empty until the header is complete).

        Raises:
            VoxwireError: the stream does not start with a PCM16 WAV header.
        """
        if self.sample_rate is None:
            self._head += data
            if len(self._head) < WAV_HEADER_BYTES:
                return b""
            self._parse(bytes(self._head[:WAV_HEADER_BYTES]))
            data = bytes(self._head[WAV_HEADER_BYTES:])
            self._head.clear()
        return self._carry.align(data)

    def _parse(self, head: bytes) -> None:
        riff, _, wave, fmt, _, audio_format, channels, rate, _, _, bits, data = struct.unpack(
            "<4sI4s4sIHHIIHH4s", head[:40]
        )
        if (riff, wave, fmt, data) != (b"RIFF", b"WAVE", b"fmt ", b"data") or (
            audio_format,
            bits,
        ) != (1, 16):
            raise VoxwireError(
                0, "invalid_stream", "stream_audio did not start with a PCM16 WAV header"
            )
        self.sample_rate = rate
        self.channels = channels


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One server event: its ``type``, the whole JSON object, and its SSE id.

    ``event["transcript"]`` and ``event.get("delta")`` read fields of ``data``.
    """

    type: str
    data: dict[str, Any]
    id: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


class EventCursor:
    """Turns SSE messages into :class:`Event` and remembers where to resume.

    After a dropped connection the stream is reopened with ``Last-Event-ID`` (so nothing
    is lost); an event whose id is not after the last one seen is dropped (so nothing is
    repeated either).
    """

    def __init__(self) -> None:
        self.last_event_id: int | None = None
        self.retry_s = 1.0
        #: Events dropped because their id was not after :attr:`last_event_id`.
        self.duplicates = 0

    def observe(self, sse: ServerSentEvent) -> Event | None:
        if sse.retry is not None:
            self.retry_s = sse.retry / 1000
        if not sse.data:  # ``retry:`` lines and ``: ping`` comments
            return None
        try:
            data = json.loads(sse.data)
        except ValueError as exc:
            raise VoxwireError(0, "invalid_event", f"event is not JSON: {sse.data[:80]!r}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise VoxwireError(0, "invalid_event", f"event has no type: {sse.data[:80]!r}")
        event_id: int | None = None
        if sse.id:
            try:
                event_id = int(sse.id)
            except ValueError:
                event_id = None
        if event_id is not None:
            if self.last_event_id is not None and event_id <= self.last_event_id:
                self.duplicates += 1  # replayed after a reconnect: seen already
                return None
            self.last_event_id = event_id
        return Event(data["type"], data, event_id)


# -- reconnecting ------------------------------------------------------------------------

#: Statuses worth another attempt: a proxy without its upstream, backpressure, overload, an
#: earlier attempt of ours still running on the server, a body the server timed out.
RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How the streams and uploads reconnect: exponential backoff with full jitter.

    Attempt ``k`` (from 0) of a run of failures waits a uniformly random time in
    ``[0, min(max_delay_s, base_delay_s * 2**k)]``; after ``max_attempts`` failures in a
    row the last error is raised. A success starts the count again.

    Attributes:
        max_attempts: Failed attempts in a row before giving up.
        base_delay_s: The cap of the first delay.
        max_delay_s: The largest cap.
        max_unacked_s: Upload audio (at the session's input rate) held for resending while
            the server has not acknowledged it; more raises ``upload_backlog_full``.
        max_retry_after_s: A ``Retry-After`` longer than this is not waited out.
    """

    max_attempts: int = 8
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    max_unacked_s: float = 10.0
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    def delay(self, attempt: int, rng: random.Random) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        if attempt >= self.max_attempts:
            return None
        return rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2.0**attempt))


#: Never reconnect: every failure is raised at once (the behaviour of a plain request).
NO_RECONNECT = ReconnectPolicy(max_attempts=0)


def retryable(error: VoxwireError | None) -> bool:
    """Whether a failure may go away by trying again (``None``: the connection failed)."""
    if error is None:
        return True
    if error.status == 409:
        return error.code == "upload_in_progress"
    return error.status in RETRYABLE_STATUSES


class Backoff:
    """One run of reconnect attempts under a :class:`ReconnectPolicy`."""

    def __init__(self, policy: ReconnectPolicy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng
        #: Failed attempts in a row so far.
        self.failures = 0

    def next_delay(self, error: VoxwireError | None) -> float | None:
        """Seconds to wait before trying again after ``error``, or ``None`` to raise it.

        Args:
            error: The server's refusal, or ``None`` for a transport failure.
        """
        if not retryable(error):
            return None
        delay = self.policy.delay(self.failures, self.rng)
        if delay is None:
            return None
        self.failures += 1
        if error is not None and error.retry_after is not None:
            if error.retry_after > self.policy.max_retry_after_s:
                return None
            return max(delay, error.retry_after)
        return delay

    def succeeded(self) -> None:
        self.failures = 0


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, VoxwireError):
        return f"{exc.status} {exc.code}"
    return type(exc).__name__


def reconnecting_event(stream: str, attempt: int, delay_s: float, reason: str) -> Event:
    """The client-side notice ``client.reconnecting`` (``id`` is ``None``)."""
    data = {
        "type": "client.reconnecting",
        "stream": stream,
        "attempt": attempt,
        "delay_s": round(delay_s, 3),
        "reason": reason,
    }
    return Event("client.reconnecting", data)


def reconnected_event(stream: str, attempts: int, **extra: Any) -> Event:
    """The client-side notice ``client.reconnected`` (``id`` is ``None``)."""
    data = {"type": "client.reconnected", "stream": stream, "attempts": attempts, **extra}
    return Event("client.reconnected", data)


def audio_gap_event(from_ms: int, to_ms: int) -> Event:
    """``client.audio_gap``: the server could not replay ``[from_ms, to_ms)`` of the stream."""
    data = {
        "type": "client.audio_gap",
        "stream": "audio",
        "from_ms": from_ms,
        "to_ms": to_ms,
        "missing_ms": to_ms - from_ms,
    }
    return Event("client.audio_gap", data)


class Notifier:
    """Client-side notices: a callback at once, and a bounded queue for the event iterator."""

    def __init__(self, callback: Callable[[Event], None] | None = None) -> None:
        self.callback = callback
        self.queue: deque[Event] = deque(maxlen=MAX_QUEUED_NOTICES)
        #: How many notices of each type were emitted (never trimmed).
        self.counts: dict[str, int] = {}
        # The sync client's streams run in threads of their own.
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.counts[event.type] = self.counts.get(event.type, 0) + 1
            self.queue.append(event)
        if self.callback is not None:
            self.callback(event)

    def take(self) -> Event | None:
        with self._lock:
            return self.queue.popleft() if self.queue else None


class Retry:
    """One run of attempts of a stream or an upload: the delays and the notices.

    The I/O shells call :meth:`failed` after each failed attempt (sleeping for what it
    returns, or letting the error it raises go up) and :meth:`succeeded` after the one
    that worked.
    """

    def __init__(
        self, stream: str, policy: ReconnectPolicy, rng: random.Random, notifier: Notifier
    ) -> None:
        self.stream = stream
        self.backoff = Backoff(policy, rng)
        self.notifier = notifier

    def failed(self, failure: Exception) -> float:
        """Seconds to wait before the next attempt (after a ``client.reconnecting``).

        Raises:
            Exception: ``failure`` itself, when it will not go away (a refusal such as 404
                ``session_not_found``) or the policy gives up.
        """
        error = failure if isinstance(failure, VoxwireError) else None
        delay = self.backoff.next_delay(error)
        if delay is None:
            raise failure
        self.notifier.emit(
            reconnecting_event(self.stream, self.backoff.failures, delay, reason_of(failure))
        )
        return delay

    def succeeded(self, **details: Any) -> None:
        """The attempt worked: ``client.reconnected`` if it was not the first."""
        if self.backoff.failures:
            self.notifier.emit(reconnected_event(self.stream, self.backoff.failures, **details))
        self.backoff.succeeded()


class UploadWindow:
    """Sequenced upload pieces the server has not acknowledged yet, in order.

    Each piece gets the next ``X-Sequence`` when added and stays until an
    ``X-Acked-Sequence`` covers it, so after a lost connection the same pieces are resent
    with the same numbers (the server drops the ones it already holds).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.next_sequence = 0
        self.pending_bytes = 0
        self._pieces: deque[tuple[int, bytes, int | None]] = deque()

    def add(self, pcm: bytes, rate: int | None) -> int:
        """Queue ``pcm`` under the next sequence number and return it.

        Raises:
            VoxwireError: ``upload_backlog_full`` (status 0) when the pieces waiting already
                hold ``max_bytes`` (one piece is always taken into an empty window).
        """
        if self._pieces and self.pending_bytes + len(pcm) > self.max_bytes:
            raise VoxwireError(
                0,
                "upload_backlog_full",
                f"{self.pending_bytes} bytes of audio are not acknowledged yet "
                f"(at most {self.max_bytes} are held for resending): the server is unreachable",
            )
        sequence = self.next_sequence
        self._pieces.append((sequence, pcm, rate))
        self.pending_bytes += len(pcm)
        self.next_sequence += 1
        return sequence

    def fits(self, size: int) -> bool:
        """Whether :meth:`add` would take ``size`` more bytes now."""
        return not self._pieces or self.pending_bytes + size <= self.max_bytes

    def oldest(self) -> tuple[int, bytes, int | None] | None:
        return self._pieces[0] if self._pieces else None

    def ack(self, acked_sequence: int) -> None:
        """Forget every piece up to ``acked_sequence`` (the server holds them)."""
        while self._pieces and self._pieces[0][0] <= acked_sequence:
            self.pending_bytes -= len(self._pieces.popleft()[1])

    def refused(self, sequence: int) -> int:
        """The server refused piece ``sequence`` (a 4xx: it did not take it).

        That piece and any queued after it are dropped and their numbers given out again
        (the server holds nothing from ``sequence`` on); returns the bytes dropped.
        """
        dropped = 0
        while self._pieces and self._pieces[-1][0] >= sequence:
            dropped += len(self._pieces.pop()[1])
        self.pending_bytes -= dropped
        self.next_sequence = min(self.next_sequence, sequence)
        return dropped

    def __len__(self) -> int:
        return len(self._pieces)


def acked_sequence(headers: httpx.Headers, sent: int) -> int:
    """``X-Acked-Sequence`` of a 204, or the number just sent when the header is missing."""
    value = headers.get("X-Acked-Sequence")
    if value is not None and value.isdigit():
        return int(value)
    return sent


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Where one ``stream_audio`` response sits on the session's stream timeline."""

    position_ms: int
    padding_bytes: int
    resumed: bool

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> StreamStart:
        def number(name: str) -> int:
            value = headers.get(name, "0")
            return int(value) if value.isdigit() else 0

        return cls(
            number("X-Stream-Position-Ms"),
            number("X-Stream-Padding-Bytes"),
            headers.get("X-Stream-Resumed", "false").lower() == "true",
        )


class AudioTimeline:
    """Stitches ``stream_audio`` responses into one stream across reconnects.

    Positions count samples at the stream's rate from the start of the session's stream
    timeline. :meth:`feed` turns each response's PCM (header stripped) into pieces
    ``(position, pcm)``: ``position`` is ``None`` for the padding silence of a fresh
    (not resumed) response, which is not on the timeline; replayed samples the client
    already has are dropped.
    """

    def __init__(self) -> None:
        self.rate: int | None = None
        #: The timeline position of the next sample expected (``None`` before the first).
        self.next_sample: int | None = None
        #: Spans ``(from_ms, to_ms)`` the server could not replay after a reconnect.
        self.gaps: list[tuple[int, int]] = []
        self._padding = 0
        self._drop = 0

    def resume_from_ms(self) -> int | None:
        """The ``from_ms`` to reconnect with (``None`` before the first response)."""
        if self.next_sample is None or self.rate is None:
            return None
        return self.next_sample * 1000 // self.rate

    def start(self, start: StreamStart, rate: int) -> tuple[int, int] | None:
        """A new response began; returns the gap ``(from_ms, to_ms)`` it leaves, if any."""
        if self.rate is not None and rate != self.rate:
            raise VoxwireError(0, "invalid_stream", "stream_audio changed its sample rate")
        self.rate = rate
        position = start.position_ms * rate // 1000
        self._padding = start.padding_bytes
        expected = self.next_sample
        self._drop = 0 if expected is None else max(0, expected - position)
        gap = None
        if expected is not None and position > expected:
            gap = (expected * 1000 // rate, start.position_ms)
            self.gaps.append(gap)
        self.next_sample = position if expected is None else max(expected, position)
        return gap

    def feed(self, pcm: bytes) -> list[tuple[int | None, bytes]]:
        """Sample-aligned PCM of the current response as ``(position, pcm)`` pieces."""
        out: list[tuple[int | None, bytes]] = []
        if self._padding:
            pad, pcm = pcm[: self._padding], pcm[self._padding :]
            self._padding -= len(pad)
            out.append((None, pad))
        if self._drop and pcm:
            dropped = min(self._drop, len(pcm) // 2)
            self._drop -= dropped
            pcm = pcm[2 * dropped :]
        if pcm:
            if self.next_sample is None:
                raise RuntimeError("feed() before start()")
            out.append((self.next_sample, pcm))
            self.next_sample += len(pcm) // 2
        return out


class SessionCore:
    """The state both clients' sessions keep (their I/O lives in the subclasses).

    Attributes:
        info: id, token and the config the server confirmed.
        reconnect: The reconnect policy of its uploads and streams.
        notifier: Its client-side notices (``notifier.callback``, ``notifier.counts``).
    """

    def __init__(
        self,
        info: SessionInfo,
        reconnect: ReconnectPolicy | None,
        on_notice: Callable[[Event], None] | None,
        rng: random.Random | None,
    ) -> None:
        self.info = info
        self.reconnect = reconnect if reconnect is not None else ReconnectPolicy()
        self.notifier = Notifier(on_notice)
        self.rng = rng if rng is not None else random.Random()
        rate = int(info.config.get("input_sample_rate", DEFAULT_RATE))
        self._window = UploadWindow(int(self.reconnect.max_unacked_s * rate) * 2)
        self._carry = OddByteCarry()
        self._deleted = False

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def token(self) -> str:
        return self.info.token

    @property
    def config(self) -> dict[str, Any]:
        return self.info.config

    @property
    def next_sequence(self) -> int:
        """The ``X-Sequence`` the next upload piece gets."""
        return self._window.next_sequence

    @property
    def unacked_bytes(self) -> int:
        """Audio uploaded but not acknowledged by the server yet (held for resending)."""
        return self._window.pending_bytes

    def _retry(self, stream: str) -> Retry:
        return Retry(stream, self.reconnect, self.rng, self.notifier)


class AudioStreamCore:
    """The state both clients' audio streams keep across resumed responses.

    Attributes:
        timeline: Where the stream stands (see :class:`AudioTimeline`).
        bytes_received: PCM bytes handed out so far (padding silence included).
        last_position: The stream-timeline position (in samples at :attr:`sample_rate`) of
            the first sample of the chunk last handed out, or ``None`` when that chunk is
            padding silence (a fresh response's lead, not part of the timeline).
        connections: ``stream_audio`` responses opened (1 + reconnects).
    """

    def __init__(self) -> None:
        self._reader = WavStreamReader()
        self.timeline = AudioTimeline()
        self._pieces: list[tuple[int | None, bytes]] = []
        self.bytes_received = 0
        self.last_position: int | None = None
        self.connections = 0
        self._gap: tuple[int, int] | None = None

    @property
    def sample_rate(self) -> int:
        if self._reader.sample_rate is None:
            raise RuntimeError("the stream is not open")
        return self._reader.sample_rate

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """Spans ``(from_ms, to_ms)`` of the stream lost to reconnects."""
        return self.timeline.gaps

    def _resume_params(self) -> tuple[int | None, dict[str, str]]:
        """The ``from_ms`` the next response starts at, and its query parameters."""
        from_ms = self.timeline.resume_from_ms()
        return from_ms, ({} if from_ms is None else {"from_ms": str(from_ms)})

    def _opened(
        self, reader: WavStreamReader, headers: httpx.Headers, first: bytes, from_ms: int | None
    ) -> dict[str, Any]:
        """A response's WAV header is in ``reader`` (``first``: the PCM after it)."""
        assert reader.sample_rate is not None
        start = StreamStart.from_headers(headers)
        self._gap = self.timeline.start(start, reader.sample_rate)
        self._reader = reader
        self._pieces = self.timeline.feed(first)
        self.connections += 1
        return {"from_ms": from_ms, "resumed": start.resumed}

    def _feed(self, data: bytes) -> None:
        self._pieces = self.timeline.feed(self._reader.feed(data))

    def _take(self) -> bytes:
        self.last_position, data = self._pieces.pop(0)
        self.bytes_received += len(data)
        return data
