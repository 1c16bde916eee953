"""The Swift client's HTTP behaviour, replayed byte for byte against the real server.

``clients/swift`` (VoxwireClient, URLSession) cannot be built on this machine, so this test
sends exactly the requests it makes, over raw TCP: the same methods, paths, headers (in the
order and casing CFNetwork writes them, with its own ``User-Agent``, ``Accept-Language``,
``Accept-Encoding: gzip, deflate, br``, ``Connection: keep-alive`` and ``Content-Length``),
bodies and 3200-byte chunks, paced in real time, on the connections URLSession would use:

- ``POST /api/sessions`` on a new connection; ``GET events`` then reuses it (it is idle);
- ``GET stream_audio`` on a second connection (the first is busy with the events);
- ``POST upload_audio`` one chunk at a time (``X-Sequence`` 0, 1, ...) on a third, kept alive
  between chunks, replaced only after the server answered ``Connection: close``;
- client events and the ``DELETE`` on that idle keep-alive connection.

The replay also covers what the client does on failures: a resend of a chunk whose response
was lost (204, nothing appended), a sequence gap (409, decoded as ``VoxwireError``), an audio
stream dropped mid-reply and resumed with ``?from_ms=`` the position received (stitched as
``AudioTimeline`` does: the replayed overlap dropped, so the reply is heard once, whole), an
events connection dropped and resumed after ``retry`` with ``Last-Event-ID``, and a stream
reconnect after the session is gone (404, no retry).

``test_the_replay_matches_the_swift_sources`` reads the Swift sources, so the two cannot
drift apart silently: every request in ``Requests.swift`` (method, path, header names and
literal values, query items) must be the one replayed here, and so must the chunk size.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import h11
import numpy as np
import trio

from app._errors import ApiError
from audio import WAV_HEADER_BYTES, StreamResampler
from tests.speech import synthesize
from tests.voice import wer

if TYPE_CHECKING:
    from collections.abc import Callable

    from app._models import ModelHub
    from tests.conftest import Running, StartServer

SWIFT = Path(__file__).resolve().parent.parent / "clients" / "swift" / "Sources" / "VoxwireClient"

SENTENCE = "Please turn on the kitchen lights."
API_KEY = "vx-replay-key"
INPUT_RATE = 16000
OUTPUT_RATE = 24000
CHUNK_MS = 100  # AudioUploader.chunkMilliseconds
CHUNK_BYTES = INPUT_RATE * CHUNK_MS // 1000 * 2  # 3200

# What CFNetwork adds after the app's headers (URLSession on macOS 15, HTTP/1.1); `Accept:
# */*` comes first when the app set no Accept, `Content-Length` last when there is a body.
CFNETWORK_HEADERS = (
    ("User-Agent", "VoxwireTalk/1 CFNetwork/1568.100.1 Darwin/24.0.0"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Connection", "keep-alive"),
)


@dataclass(frozen=True)
class RequestSpec:
    """One request of ``Requests.swift``.

    ``path`` is a literal path or the key of the creation response's ``urls``. ``headers``
    are what the Swift code sets, in its order: values are templates where ``{}`` stands
    for an interpolated or computed part. ``optional`` ones are set only sometimes.
    ``query`` are ``URLQueryItem`` entries appended to the path, only sometimes (when resuming).
    """

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    optional: frozenset[str] = frozenset()
    query: tuple[tuple[str, str], ...] = ()


REQUESTS = {
    "createSession": RequestSpec(
        "POST",
        "/api/sessions",
        (
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Authorization", "Bearer {}"),
        ),
        optional=frozenset({"Authorization"}),  # only with an API key
    ),
    "uploadAudio": RequestSpec(
        "POST",
        "upload_audio",
        (
            ("Content-Type", "application/octet-stream"),
            ("Authorization", "Bearer {}"),
            ("X-Sequence", "{}"),
        ),
    ),
    "events": RequestSpec(
        "GET",
        "events",
        (
            ("Authorization", "Bearer {}"),
            ("Accept", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Last-Event-ID", "{}"),
        ),
        optional=frozenset({"Last-Event-ID"}),  # only when resuming
    ),
    "streamAudio": RequestSpec(
        "GET",
        "stream_audio",
        (("Authorization", "Bearer {}"), ("Accept", "audio/wav")),
        query=(("from_ms", "{}"),),  # only when resuming
    ),
    "clientEvents": RequestSpec(
        "POST",
        "events",
        (
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Authorization", "Bearer {}"),
        ),
    ),
    "deleteSession": RequestSpec("DELETE", "session", (("Authorization", "Bearer {}"),)),
}


# ---------------------------------------------------------------------------------------
# The Swift sources, read with regexes


def swift_requests() -> dict[str, RequestSpec]:
    """The request builders of ``Requests.swift``, as :class:`RequestSpec`."""
    source = (SWIFT / "Requests.swift").read_text()
    enum = source[source.index("enum Requests {") : source.index("\nenum HTTP")]
    url_keys = swift_url_keys()
    found = {}
    for body in re.split(r"\n    static func ", enum)[1:]:
        name = re.match(r"\w+", body)
        method = re.search(r'httpMethod = "(\w+)"', body)
        assert name, body
        assert method, body
        literal = re.search(r'appendingPathComponent\("([^"]+)"\)', body)
        member = re.search(r"\burls\.(\w+)", body)
        if literal:
            path = "/" + literal.group(1)
        else:
            assert member, body
            path = url_keys[member.group(1)]
        headers, optional = [], set()
        for line in body.splitlines():
            for value, header in re.findall(
                r'setValue\((.+?), forHTTPHeaderField: "([^"]+)"\)', line
            ):
                headers.append((header, swift_template(value)))
                if line.strip().startswith("if let"):
                    optional.add(header)
        query = tuple(
            (item, swift_template(value))
            for item, value in re.findall(
                r'URLQueryItem\(name: "([^"]+)", value: ("(?:[^"\\]|\\.)*"|[\w.]+)\)', body
            )
        )
        found[name.group()] = RequestSpec(
            method.group(1), path, tuple(headers), frozenset(optional), query
        )
    return found


def swift_template(expression: str) -> str:
    """A Swift value expression as a template: literals stay, interpolations become ``{}``."""
    literal = re.fullmatch(r'"((?:[^"\\]|\\.)*)"', expression.strip())
    if not literal:
        return "{}"  # computed, e.g. String(sequence)
    return re.sub(r"\\\([^)]*\)", "{}", literal.group(1))


def swift_url_keys() -> dict[str, str]:
    """``SessionURLs`` member -> JSON key of the creation response's ``urls``."""
    source = (SWIFT / "VoxwireClient.swift").read_text()
    block = source[source.index("struct SessionURLs") :]
    keys = block[block.index("enum CodingKeys") : block.index("}", block.index("enum CodingKeys"))]
    return {m[0]: m[1] or m[0] for m in re.findall(r'case (\w+)(?: = "(\w+)")?', keys)}


def swift_constant(file: str, name: str) -> int:
    source = (SWIFT / file).read_text()
    match = re.search(rf"static let {name}(?:: Int)? = (\d+)", source)
    assert match, f"{name} not in {file}"
    return int(match.group(1))


def test_the_replay_matches_the_swift_sources() -> None:
    assert swift_requests() == REQUESTS
    assert swift_constant("AudioUploader.swift", "chunkMilliseconds") == CHUNK_MS
    assert swift_constant("AudioStream.swift", "wavHeaderBytes") == WAV_HEADER_BYTES
    uploader = (SWIFT / "AudioUploader.swift").read_text()
    # chunk bytes = rate * ms / 1000 PCM16 samples, sent as whole bodies (Content-Length)
    assert "inputSampleRate * Self.chunkMilliseconds / 1000 * MemoryLayout<Int16>.size" in (
        uploader
    )
    assert "uploadTask(with: request, from: body)" in uploader
    assert 'forHTTPHeaderField: "X-Acked-Sequence"' in uploader
    assert "dataTask(with: request)" in (SWIFT / "DataTaskRouter.swift").read_text()
    # every builder is used, and the client event replayed is the one cancelResponse() sends
    callers = "".join(p.read_text() for p in SWIFT.glob("*.swift") if p.name != "Requests.swift")
    for name in REQUESTS:
        assert f"Requests.{name}(" in callers, name
    assert 'send(events: [["type": "response.cancel"]])' in callers
    # the stream resume: the headers read, the position sent back as from_ms, the overlap
    # dropped, 404 final (what StreamReader and the replay's resume mirror)
    stream = (SWIFT / "AudioStream.swift").read_text()
    for header in ("X-Stream-Position-Ms", "X-Stream-Padding-Bytes", "X-Stream-Resumed"):
        assert f'"{header}"' in stream, header
    assert "Requests.streamAudio(endpoint, fromMs: timeline.receivedMs)" in callers
    assert "return receivedSamples * 1000 / sampleRate" in stream
    assert "let position = start.positionMs * rate / 1000" in stream
    assert "overlapSamples = max(0, received - position)" in stream
    assert "paddingSamples = start.paddingBytes / MemoryLayout<Int16>.size" in stream
    statuses = re.search(r"static let retryableStatuses: Set<Int> = \[([\d, ]+)\]", stream)
    assert statuses, "retryableStatuses"
    assert 404 not in {int(n) for n in statuses.group(1).split(",")}
    # the error body the Swift decodes is the server's (event_id: the client event refused)
    errors = (SWIFT / "Errors.swift").read_text()
    inner = errors[errors.index("struct Inner") : errors.index("let error: Inner")]
    fields = set(re.findall(r"let (\w+): String\?", inner))
    assert fields == set(ApiError(400, "c", "m").error_object())
    assert fields == {"type", "code", "message", "param", "event_id"}


# ---------------------------------------------------------------------------------------
# The wire


@dataclass
class Wire:
    """One TCP connection, spoken to with bytes written here; h11 parses the answers."""

    stream: trio.SocketStream
    number: int
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    received: bytearray = field(default_factory=bytearray)

    async def send(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes):
        head = f"{method} {target} HTTP/1.1\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
        # h11 follows along so it can frame the responses; its own bytes are not sent.
        self.h11.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            self.h11.send(h11.Data(data=body))
        self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(head.encode() + body)

    async def event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(65536)
            self.received += data
            self.h11.receive_data(data)

    async def head(self) -> h11.Response:
        response = await self.event()
        assert isinstance(response, h11.Response), response
        return response

    async def body(self) -> bytes:
        data = b""
        while isinstance(event := await self.event(), h11.Data):
            data += event.data
        assert isinstance(event, h11.EndOfMessage), event
        return data

    def reusable(self) -> bool:
        """Kept alive after a complete exchange (not after ``Connection: close``)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False


def headers_of(response: h11.Response) -> dict[str, str]:
    return {name.decode().lower(): value.decode() for name, value in response.headers}


@dataclass
class SwiftClient:
    """Sends what VoxwireClient sends, on the connections URLSession would use."""

    host: str
    port: int
    token: str = ""
    urls: dict[str, str] = field(default_factory=dict)
    opened: list[Wire] = field(default_factory=list)
    idle: Wire | None = None  # URLSession's idle keep-alive connection
    sent: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    targets: list[tuple[str, str]] = field(default_factory=list)

    async def connection(self) -> Wire:
        """The idle keep-alive connection if there is one, else a new one."""
        if self.idle is not None:
            wire, self.idle = self.idle, None
            return wire
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.opened.append(Wire(stream, len(self.opened)))
        return self.opened[-1]

    async def done_with(self, wire: Wire) -> None:
        if wire.reusable():
            self.idle = wire
        else:
            await wire.stream.aclose()

    def wire_headers(self, name: str, values: dict[str, str], body: bytes) -> list[tuple[str, str]]:
        spec = REQUESTS[name]
        allowed = {header for header, _ in spec.headers}
        assert allowed - spec.optional <= set(values) <= allowed, values
        app = []
        for header, template in spec.headers:
            if header in values:
                pattern = ".+".join(re.escape(part) for part in template.split("{}"))
                assert re.fullmatch(pattern, values[header]), (header, values[header])
                app.append((header, values[header]))
        headers = [("Host", self.host), *app]
        if "Accept" not in values:
            headers.append(("Accept", "*/*"))
        headers += CFNETWORK_HEADERS
        if body or spec.method == "POST":
            headers.append(("Content-Length", str(len(body))))
        self.sent.append((name, headers))
        return headers

    def target(self, name: str, query: dict[str, str] | None = None) -> str:
        """The path, with ``query`` appended as URLComponents writes ``queryItems``."""
        spec = REQUESTS[name]
        path = spec.path if spec.path.startswith("/") else self.urls[spec.path]
        query = query or {}
        assert set(query) <= {item for item, _ in spec.query}, query
        items = []
        for item, template in spec.query:
            if item in query:
                pattern = ".+".join(re.escape(part) for part in template.split("{}"))
                assert re.fullmatch(pattern, query[item]), (item, query[item])
                assert re.fullmatch(r"[\w.~-]*", query[item]), "URLComponents would escape it"
                items.append(f"{item}={query[item]}")
        return path + ("?" + "&".join(items) if items else "")

    async def start(
        self,
        wire: Wire,
        name: str,
        values: dict[str, str],
        body: bytes = b"",
        query: dict[str, str] | None = None,
    ) -> h11.Response:
        """Send request ``name`` on ``wire``; return the response head."""
        target = self.target(name, query)
        await wire.send(REQUESTS[name].method, target, self.wire_headers(name, values, body), body)
        self.targets.append((name, target))
        return await wire.head()

    async def call(
        self,
        name: str,
        values: dict[str, str],
        body: bytes = b"",
        query: dict[str, str] | None = None,
    ) -> tuple[h11.Response, bytes, Wire]:
        """A request/response call on the keep-alive connection."""
        wire = await self.connection()
        response = await self.start(wire, name, values, body, query)
        data = await wire.body()
        await self.done_with(wire)
        return response, data, wire

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


# ---------------------------------------------------------------------------------------
# The two streams, decoded as the Swift receivers decode them


async def read_body(wire: Wire, feed: Callable[[bytes], None], ended: trio.Event) -> None:
    """Hand a response body's chunks to ``feed``; set ``ended`` when it ends cleanly."""
    try:
        while isinstance(event := await wire.event(), h11.Data):
            feed(event.data)
    except trio.ClosedResourceError:
        return  # this side dropped the connection (a simulated network loss)
    assert isinstance(event, h11.EndOfMessage), event
    ended.set()


@dataclass
class EventsReader:
    """``GET events`` parsed like ``SSEParser``: id/data/retry, comments, blank-line dispatch."""

    got: list[tuple[float, int | None, dict[str, Any]]] = field(default_factory=list)
    retry_ms: int | None = None
    last_id: int | None = None
    ended: trio.Event = field(default_factory=trio.Event)  # cleanly
    _line: bytes = b""
    _data: list[str] | None = None
    _changed: trio.Event = field(default_factory=trio.Event)

    def feed(self, chunk: bytes) -> None:
        self._line += chunk
        while (match := re.search(rb"\r\n|\n|\r(?=.)", self._line, re.DOTALL)) is not None:
            line, self._line = self._line[: match.start()].decode(), self._line[match.end() :]
            field_name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if not line:
                if self._data is not None:
                    payload = json.loads("\n".join(self._data))
                    self.got.append((trio.current_time(), self.last_id, payload))
                    self._changed.set()
                    self._changed = trio.Event()
                self._data = None
            elif line.startswith(":"):
                continue  # comment (": ping")
            elif field_name == "data":
                self._data = [*(self._data or []), value]
            elif field_name == "id":
                self.last_id = int(value)
            elif field_name == "retry":
                self.retry_ms = int(value)

    async def run(self, wire: Wire) -> None:
        await read_body(wire, self.feed, self.ended)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, _, e in self.got if e["type"] == kind]

    def time_of(self, kind: str) -> float:
        return next(t for t, _, e in self.got if e["type"] == kind)

    async def wait_for(self, kind: str, *, within: float = 30) -> dict[str, Any]:
        with trio.fail_after(within):
            while not self.of(kind):
                await self._changed.wait()
        return self.of(kind)[0]


@dataclass(frozen=True)
class StreamStart:
    """``StreamStart``: where a ``stream_audio`` response sits on the stream timeline."""

    position_ms: int
    padding_bytes: int
    resumed: bool

    @classmethod
    def of(cls, response: h11.Response) -> StreamStart:
        got = headers_of(response)
        return cls(
            int(got["x-stream-position-ms"]),
            int(got["x-stream-padding-bytes"]),
            got["x-stream-resumed"] == "true",
        )


@dataclass
class StreamReader:
    """``GET stream_audio`` decoded like ``AudioStreamReceiver``: per response, the WAV header,
    then PCM16 with odd bytes carried over whatever the reads' sizes; across responses,
    stitched like ``AudioTimeline``: the padding delivered but not on the timeline, a resumed
    response's overlap (``received - position``) dropped, a later start recorded as a gap."""

    rate: int | None = None
    parts: list[np.ndarray] = field(default_factory=list)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, samples so far)
    ended: trio.Event = field(default_factory=trio.Event)  # cleanly
    received: int | None = None  # timeline position (samples) of the next sample expected
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (from_ms, to_ms)
    _start: StreamStart | None = None
    _begun: bool = False
    _padding: int = 0  # samples
    _overlap: int = 0  # samples
    _pending: bytes = b""

    def response(self, start: StreamStart) -> None:
        """A new response's head (``receive(response:)``): a new decoder."""
        self._start, self._begun, self._pending = start, False, b""

    @property
    def received_ms(self) -> int | None:
        """``AudioTimeline.receivedMs``: the ``from_ms`` of a reconnect."""
        if self.received is None or self.rate is None:
            return None
        return self.received * 1000 // self.rate

    def begin(self, rate: int) -> None:
        assert self._start is not None
        assert self.rate in (None, rate), "the rate changed"
        self.rate = rate
        position = self._start.position_ms * rate // 1000
        self._padding, self._overlap = self._start.padding_bytes // 2, 0
        if self.received is None:
            self.received = position
            return
        self._overlap = max(0, self.received - position)
        if not self._start.resumed or position > self.received:
            self.gaps.append((self.received * 1000 // rate, self._start.position_ms))
        self.received = max(self.received, position)

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk
        if not self._begun:
            if len(self._pending) < WAV_HEADER_BYTES:
                return
            header, self._pending = (
                self._pending[:WAV_HEADER_BYTES],
                self._pending[WAV_HEADER_BYTES:],
            )
            riff, _, wave, fmt, _, pcm, channels, rate, _, _, bits, data, _ = struct.unpack(
                "<4sI4s4sIHHIIHH4sI", header
            )
            assert (riff, wave, fmt, data) == (b"RIFF", b"WAVE", b"fmt ", b"data")
            assert (pcm, channels, bits) == (1, 1, 16)
            self.begin(rate)
            self._begun = True
        whole = len(self._pending) // 2 * 2
        samples = np.frombuffer(self._pending[:whole], "<i2").copy()
        self._pending = self._pending[whole:]
        lead, samples = samples[: self._padding], samples[self._padding :]
        self._padding -= len(lead)
        repeated, samples = samples[: self._overlap], samples[self._overlap :]
        self._overlap -= len(repeated)
        assert self.received is not None
        self.received += len(samples)
        self.parts += [lead, samples]
        self.arrivals.append((trio.current_time(), self.count))

    @property
    def count(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.int16)

    def received_by(self, t: float) -> int:
        return max((n for when, n in self.arrivals if when <= t), default=0)

    def loud_ms(self) -> float:
        """How much has arrived since the first non-silent sample (0 before it)."""
        loud = np.flatnonzero(self.samples)
        if not len(loud) or self.rate is None:
            return 0.0
        return (self.count - int(loud[0])) * 1000 / self.rate

    async def run(self, wire: Wire) -> None:
        await read_body(wire, self.feed, self.ended)


async def transcribe(server: Running, samples: np.ndarray, rate: int) -> str:
    hub: ModelHub = server.app.config["VOXWIRE_MODELS"]
    pcm16k = StreamResampler(rate, 16000).feed(samples, last=True)
    return await trio.to_thread.run_sync(hub.models.stt.transcribe, pcm16k)


# ---------------------------------------------------------------------------------------
# The replay


async def test_the_swift_clients_requests_replayed_against_the_server(
    start_server: StartServer,
) -> None:
    server = await start_server(api_key=API_KEY)
    port = urlsplit(server.url).port
    assert port is not None
    client = SwiftClient(host=f"127.0.0.1:{port}", port=port)
    speech = synthesize((SENTENCE,), gap_s=0.0, lead_s=0.8).samples
    events, stream = EventsReader(), StreamReader()

    # createSession: JSONEncoder's body for ["output_sample_rate": 24000]
    config = json.dumps({"output_sample_rate": OUTPUT_RATE}, separators=(",", ":")).encode()
    create_wire = await client.connection()
    values = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Authorization": f"Bearer {API_KEY}",
    }
    response = await client.start(create_wire, "createSession", values, config)
    body = json.loads(await create_wire.body())
    assert response.status_code == 201, body
    assert headers_of(response)["content-type"] == "application/json"
    assert body["config"]["input_sample_rate"] == INPUT_RATE
    client.token, client.urls = body["token"], body["urls"]
    await client.done_with(create_wire)

    async with trio.open_nursery() as nursery:
        # events: reuses the creation's idle connection, as URLSession does
        events_wire = await client.connection()
        assert events_wire is create_wire
        values = {**client.auth, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        head = await client.start(events_wire, "events", values)
        assert head.status_code == 200
        assert headers_of(head)["content-type"].startswith("text/event-stream")
        nursery.start_soon(events.run, events_wire)

        # stream_audio: a new connection (the first is busy)
        stream_wire = await client.connection()
        head = await client.start(
            stream_wire, "streamAudio", {**client.auth, "Accept": "audio/wav"}
        )
        stream_headers = headers_of(head)
        assert head.status_code == 200
        first_start = StreamStart.of(head)
        assert not first_start.resumed  # a live start, with the lead as padding
        assert first_start.padding_bytes > 0
        stream.response(first_start)
        nursery.start_soon(stream.run, stream_wire)
        await events.wait_for("session.created")

        # uploads: 100 ms chunks in real time, one in flight, one keep-alive connection
        async def upload(sequence: int, chunk: bytes) -> tuple[h11.Response, bytes, Wire]:
            values = {
                "Content-Type": "application/octet-stream",
                **client.auth,
                "X-Sequence": str(sequence),
            }
            return await client.call("uploadAudio", values, chunk)

        whole = len(speech) // (CHUNK_BYTES // 2) * (CHUNK_BYTES // 2)  # a tail stays buffered
        chunks = [c.tobytes() for c in np.split(speech[:whole].astype("<i2"), whole // 1600)]
        t0 = trio.current_time()
        upload_wires = set()
        for sequence, chunk in enumerate(chunks):
            await trio.sleep_until(t0 + (sequence + 1) * CHUNK_MS / 1000)  # captured, then sent
            response, _, wire = await upload(sequence, chunk)
            upload_wires.add(wire.number)
            got = headers_of(response)
            assert response.status_code == 204
            assert got["x-acked-sequence"] == str(sequence)
            assert got["x-accepted-bytes"] == str(CHUNK_BYTES)
        assert len(upload_wires) == 1, "uploads reuse one keep-alive connection"
        assert upload_wires.isdisjoint({create_wire.number, stream_wire.number})

        # a resend after a lost response: same X-Sequence, acknowledged, nothing appended
        last = len(chunks) - 1
        response, _, _ = await upload(last, chunks[-1])
        got = headers_of(response)
        assert response.status_code == 204
        assert (got["x-accepted-bytes"], got["x-acked-sequence"]) == ("0", str(last))

        # a gap: 409 sequence_gap naming the expected number, as VoxwireError decodes it
        silence = bytes(CHUNK_BYTES)
        response, data, wire = await upload(last + 2, silence)
        assert response.status_code == 409
        error = json.loads(data)["error"]
        assert (error["code"], error["param"]) == ("sequence_gap", "X-Sequence")
        assert f"expected X-Sequence {last + 1}" in error["message"]
        if "close" in headers_of(response).get("connection", ""):
            assert client.idle is None, "Connection: close: the next upload opens a new one"

        # trailing silence, still paced, until the reply has been spoken; 300 ms into the
        # reply the stream connection drops, and the client resumes it 200 ms later
        sequence = last + 1
        resumed_start: StreamStart | None = None
        away_ms = 0.0
        while not events.of("response.done"):
            assert sequence - last < 250, "no reply within 25 s"
            await trio.sleep_until(t0 + (sequence + 1) * CHUNK_MS / 1000)
            response, _, _ = await upload(sequence, silence)
            assert response.status_code == 204
            assert headers_of(response)["x-acked-sequence"] == str(sequence)
            sequence += 1
            if resumed_start is None and stream.loud_ms() >= 300:
                dropped_at = trio.current_time()
                await stream_wire.stream.aclose()
                from_ms = stream.received_ms  # AudioTimeline.receivedMs
                assert from_ms is not None
                await trio.sleep(0.2)  # the reply plays on while the client is away
                stream_wire = await client.connection()  # the uploads' idle one, as URLSession
                head = await client.start(
                    stream_wire,
                    "streamAudio",
                    {**client.auth, "Accept": "audio/wav"},
                    query={"from_ms": str(from_ms)},
                )
                assert head.status_code == 200
                away_ms = (trio.current_time() - dropped_at) * 1000
                assert client.targets[-1][1] == f"{client.urls['stream_audio']}?from_ms={from_ms}"
                resumed_start = StreamStart.of(head)
                assert resumed_start.resumed, "within stream_resume_ms: replayed"
                assert resumed_start.padding_bytes == 0
                # the frame holding from_ms: at most one 20 ms frame earlier
                assert from_ms - 20 < resumed_start.position_ms <= from_ms
                stream.response(resumed_start)
                nursery.start_soon(stream.run, stream_wire)
        assert resumed_start is not None, "the reply was too short to drop the stream in it"
        await trio.sleep(0.3)  # the reply's last frames reach the stream

        # the events connection drops; the client reconnects after `retry` with
        # Last-Event-ID, and the event emitted meanwhile arrives exactly once
        await events_wire.stream.aclose()
        seen = events.last_id
        assert seen is not None
        response, data, _ = await client.call(
            "clientEvents",
            {"Content-Type": "application/json", "Accept": "application/json", **client.auth},
            json.dumps([{"type": "response.cancel"}], separators=(",", ":")).encode(),
        )
        assert response.status_code == 200
        assert json.loads(data) == {"accepted": 1}
        assert events.retry_ms is not None
        await trio.sleep(events.retry_ms / 1000)
        resumed = EventsReader(last_id=seen)
        resumed_wire = await client.connection()  # the idle one is the uploads'
        values = {
            **client.auth,
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
            "Last-Event-ID": str(seen),
        }
        head = await client.start(resumed_wire, "events", values)
        assert head.status_code == 200
        nursery.start_soon(resumed.run, resumed_wire)
        error_event = await resumed.wait_for("error")
        assert error_event["error"]["code"] == "response_cancel_not_active"
        assert error_event["error"]["event_id"] is None  # the cancel had no event_id
        assert resumed.got[0][1] == seen + 1, "resumed right after the last event seen"

        # close(): DELETE ends both streams cleanly
        response, _, _ = await client.call("deleteSession", client.auth)
        assert response.status_code == 204
        with trio.fail_after(5):
            await stream.ended.wait()
            await resumed.ended.wait()

        # a stream reconnect after the session is gone: 404, final (no retry)
        received_ms = stream.received_ms
        assert received_ms is not None
        response, data, _ = await client.call(
            "streamAudio",
            {**client.auth, "Accept": "audio/wav"},
            query={"from_ms": str(received_ms)},
        )
        assert response.status_code == 404
        assert json.loads(data)["error"]["code"] == "session_not_found"
    for wire in client.opened:
        await wire.stream.aclose()

    # every request of Requests.swift was replayed, on the connections URLSession uses
    assert {name for name, _ in client.sent} == REQUESTS.keys()
    # the stream: 200 audio/wav, chunked, never compressed despite Accept-Encoding: gzip
    assert stream_headers["content-type"] == "audio/wav"
    assert stream_headers["transfer-encoding"] == "chunked"
    assert "content-length" not in stream_headers
    assert "content-encoding" not in stream_headers
    assert bytes(stream_wire.received).endswith(b"\r\n0\r\n\r\n"), "the terminating chunk"
    assert stream.rate == OUTPUT_RATE
    # the resume: stitched with no gap (the reply checks below hear it once, whole)
    assert stream.gaps == []
    # the events: SSE with retry and consecutive ids, the turn, the transcript, the reply
    assert events.retry_ms == 1000
    ids = [i for _, i, _ in events.got]
    assert ids == list(range(1, len(ids) + 1))
    assert all(e["event_id"] == f"event_{i}" for _, i, e in events.got)
    types = [e["type"] for _, _, e in events.got]
    assert types[0] == "session.created"
    assert "input_audio_buffer.speech_started" in types
    completed = events.of("conversation.item.input_audio_transcription.completed")
    assert len(completed) == 1
    assert wer(SENTENCE, completed[0]["transcript"]) <= 0.2, completed[0]["transcript"]
    (done,) = events.of("response.done")
    assert done["response"]["status"] == "completed"
    # GA names, which VoxwireTalk prints: the echo's words in output_audio_transcript.done
    (said,) = events.of("response.output_audio_transcript.done")
    assert said["transcript"] == completed[0]["transcript"]
    assert "response.audio_transcript.done" not in types
    # the reply: silence on the stream until the user stopped, then the spoken echo
    samples = stream.samples
    quiet_until = stream.received_by(events.time_of("input_audio_buffer.speech_stopped"))
    assert not samples[:quiet_until].any()
    loud = np.flatnonzero(samples)
    a, b = int(loud[0]), int(loud[-1]) + 1
    assert a >= quiet_until
    assert np.abs(samples[a:b].astype(np.int32)).max() > 3000
    # the reply heard once, whole, across the resume. `audio_ms` counts only what was paced
    # out while a reader was attached: not the part played between the server noticing the
    # drop and the resumed GET, which the client still got, replayed from the buffer.
    heard_ms = (b - a) * 1000 / OUTPUT_RATE
    assert abs(done["response"]["audio_ms"] + away_ms - heard_ms) <= 60, (heard_ms, away_ms)
    heard = await transcribe(server, samples[a:b], OUTPUT_RATE)
    assert wer(completed[0]["transcript"], heard) <= 0.2, heard
