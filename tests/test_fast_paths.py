"""upload_audio's own h11 path (app/_connection.py): taken, and answering as the Quart route
does; the connection going to hypercorn and back between requests.

Two servers run side by side: the app as shipped, and the same app whose connection class
has ``fast_paths = False`` (every request through hypercorn and Quart). The same raw requests go to
both and the raw responses are compared, byte for byte but for the ``date`` header.
Requests that are answered before their body is read send an incomplete body, so both
paths see it unread (Quart's own reader could otherwise race the route to the end of a
short body).
"""

from __future__ import annotations

import contextlib
import logging
import re
from functools import partial
from typing import TYPE_CHECKING

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from quart import Quart, request

from app import create_app
from app._asgi import ShieldedEndHTTPConnection
from app._config import ServerConfig
from app._errors import ApiError
from app._server import serve
from app._session import BodyMeter
from app.routes._common import bearer_credential, bearer_token
from tests.conftest import (
    Running,
    SessionHandle,
    StartServer,
    count_tasks,
    create_session,
    eventually,
    tone,
)

if TYPE_CHECKING:
    from collections.abc import Callable

ORIGIN = "https://a.example"


class QuartOnly(ShieldedEndHTTPConnection):
    fast_paths = False


def host_port(server: Running) -> tuple[str, int]:
    host, port = server.url.rsplit("/", 1)[1].split(":")
    return host, int(port)


class Raw:
    """One client connection that sends bytes and reads whole responses."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, server: Running) -> Raw:
        return cls(await trio.open_tcp_stream(*host_port(server)))

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def response(self) -> bytes:
        """The next final (non-1xx) response, its ``date`` header left out."""
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not await self._fill():
                    raise EOFError(self.buffer)
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 1"):
                break
        match = re.search(rb"\r\ncontent-length: (\d+)", head)
        length = int(match[1]) if match else 0
        while len(self.buffer) < length:
            if not await self._fill():
                raise EOFError(self.buffer)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        head = re.sub(rb"\r\ndate: [^\r]*", b"", head)
        return head + b"\r\n\r\n" + body

    async def closed(self) -> bool:
        """Whether the server closes the connection (after what has been read)."""
        with trio.move_on_after(2):
            while await self._fill():
                pass
            return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()


def chunked_head(s: SessionHandle) -> bytes:
    """The head of a chunked upload_audio POST (its chunks are sent by the test)."""
    return (
        f"POST /api/sessions/{s.id}/upload_audio HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {s.token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()


def upload_request(
    s: SessionHandle | None,
    body: bytes = bytes(640),
    *,
    declared: int | None = None,
    method: str = "POST",
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """An upload_audio request; ``declared`` > len(body) leaves the body unfinished."""
    session_id = s.id if s is not None else "sess_unknown"
    lines = [f"{method} /api/sessions/{session_id}/upload_audio HTTP/1.1", "Host: x"]
    token = token if token is not None else (s.token if s is not None else "nope")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {declared if declared is not None else len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def two_servers(start_server: StartServer, **config: object) -> tuple[Running, Running]:
    fast = await start_server(**config)
    slow = await start_server(**config)
    slow.app.asgi_http_class = QuartOnly
    return fast, slow


async def session_on(server: Running, **config: object) -> SessionHandle:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        return await create_session(client, **config)


# name: the requests, sent one after another on one connection (each gets its response).
SCENARIOS: dict[str, Callable[[SessionHandle], list[bytes]]] = {
    "204": lambda s: [upload_request(s)],
    "204 odd bytes, allowed origin": lambda s: [
        upload_request(s, bytes(333), headers={"Origin": ORIGIN})
    ],
    "204 other origin, audio/L16": lambda s: [
        upload_request(
            s,
            bytes(640),
            headers={"Origin": "https://b.example", "Content-Type": "audio/L16;rate=16000"},
        )
    ],
    "204 PUT": lambda s: [upload_request(s, method="PUT")],
    "X-Sequence, then its retry": lambda s: [
        upload_request(s, headers={"X-Sequence": "0", "Origin": ORIGIN}),
        upload_request(s, headers={"X-Sequence": "0", "Origin": ORIGIN}),
    ],
    "404 unknown session": lambda s: [
        upload_request(None, bytes(4), declared=64, headers={"Origin": ORIGIN})
    ],
    "404 wrong token": lambda s: [upload_request(s, bytes(4), declared=64, token="x" * 43)],
    "404 no Authorization": lambda s: [upload_request(s, bytes(4), declared=64, token="")],
    "415 text/plain": lambda s: [
        upload_request(
            s, bytes(4), declared=64, headers={"Content-Type": "text/plain", "Origin": ORIGIN}
        )
    ],
    "415 audio/L16 without a rate": lambda s: [
        upload_request(s, bytes(4), declared=64, headers={"Content-Type": "audio/L16"})
    ],
    "400 X-Sequence": lambda s: [
        upload_request(s, bytes(4), declared=64, headers={"X-Sequence": "+1"})
    ],
    "409 sequence gap": lambda s: [
        upload_request(s, bytes(4), declared=64, headers={"X-Sequence": "3", "Origin": ORIGIN})
    ],
    "413 Content-Length": lambda s: [upload_request(s, bytes(4), declared=10**9)],
    "413 sequenced Content-Length": lambda s: [
        upload_request(s, bytes(4), declared=2 * 1024 * 1024, headers={"X-Sequence": "0"})
    ],
}


def session_get(s: SessionHandle) -> bytes:
    """A request Quart serves (the session's description)."""
    path = s.urls["session"].split("://", 1)[-1].split("/", 1)[-1]
    return f"GET /{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.token}\r\n\r\n".encode()


@pytest.mark.parametrize("after_quart", [False, True], ids=["fresh", "after a Quart request"])
@pytest.mark.parametrize("cors", ["", ORIGIN])
async def test_fast_path_answers_exactly_as_quart_does(
    start_server: StartServer, cors: str, after_quart: bool
) -> None:
    """On a fresh connection the upload is this module's from the first byte; after a
    request Quart served, hypercorn hands the connection back for it."""
    fast, slow = await two_servers(start_server, cors_origins=cors)
    for name, requests in SCENARIOS.items():
        answers = []
        for server in (fast, slow):
            s = await session_on(server, responder="loopback")
            raw = await Raw.open(server)
            got = []
            with trio.fail_after(10):
                if after_quart:
                    await raw.stream.send_all(session_get(s))
                    assert (await raw.response()).startswith(b"HTTP/1.1 200 ")
                for data in requests(s):
                    await raw.stream.send_all(data)
                    got.append(await raw.response())
            await raw.aclose()
            answers.append(got)
        assert answers[0] == answers[1], name
        for response in answers[0]:
            unread = name[0] == "4"  # the errors were sent unfinished bodies
            assert (b"\r\nconnection: close" in response) == unread, (name, response)


async def test_the_fast_path_is_taken_and_the_rest_goes_to_quart(
    start_server: StartServer,
) -> None:
    server = await start_server(cors_origins=ORIGIN)
    seen: list[str] = []

    @server.app.before_request
    async def record() -> None:
        seen.append(f"{request.method} {request.path}")

    s = await session_on(server, responder="loopback")
    seen.clear()
    path = f"/api/sessions/{s.id}/upload_audio"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        assert (await client.post(path, headers=s.auth, content=bytes(640))).status_code == 204
        assert (await client.put(path, headers=s.auth, content=bytes(640))).status_code == 204
        assert seen == []
        r = await client.get(path, headers=s.auth)  # other methods: Quart's 405
        assert r.status_code == 405
        assert "POST" in r.headers["Allow"]
        preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        assert (await client.options(path, headers=preflight)).status_code == 204
        assert (await client.post(path + "/", headers=s.auth)).status_code == 404
        info = (await client.get(s.urls["session"], headers=s.auth)).json()
    # (the preflight was answered by the CORS hook, before the one that records)
    assert seen == [f"GET {path}", f"POST {path}/", f"GET {s.urls['session']}"]
    assert info["stats"]["bytes_in"] == 1280
    assert info["stats"]["uploads"] == 2


async def test_fast_and_quart_requests_share_a_keep_alive_connection(
    start_server: StartServer,
) -> None:
    """The connection goes to hypercorn for a Quart request and comes back for the next
    upload, also when requests are pipelined (several in one write); Quart never sees
    an upload."""
    server = await start_server()
    seen: list[str] = []

    @server.app.before_request
    async def record() -> None:
        seen.append(request.method)

    s = await session_on(server, responder="loopback")
    seen.clear()
    raw = await Raw.open(server)
    get = session_get(s)
    with trio.fail_after(10):
        for _ in range(3):
            await raw.stream.send_all(upload_request(s))
            assert (await raw.response()).startswith(b"HTTP/1.1 204 ")
            await raw.stream.send_all(get)
            assert (await raw.response()).startswith(b"HTTP/1.1 200 ")
        # pipelined: both requests in one write
        await raw.stream.send_all(upload_request(s) + upload_request(s))
        assert (await raw.response()).startswith(b"HTTP/1.1 204 ")
        assert (await raw.response()).startswith(b"HTTP/1.1 204 ")
        await raw.stream.send_all(get + upload_request(s) + get + upload_request(s))
        for status in (b"200", b"204", b"200", b"204"):
            assert (await raw.response()).startswith(b"HTTP/1.1 " + status)
    await raw.aclose()
    assert server.registry.authorise(s.id, s.token).stats.bytes_in == 7 * 640
    assert seen == ["GET"] * 5


@pytest.mark.parametrize("after_quart", [False, True], ids=["fresh", "after a Quart request"])
async def test_an_upload_runs_in_the_connection_task(
    start_server: StartServer, after_quart: bool
) -> None:
    """No task is started for an upload request (hypercorn starts an app task, and Quart
    a nursery with two more, for each)."""
    server = await start_server()
    s = await session_on(server, responder="loopback")
    session = server.registry.authorise(s.id, s.token)
    raw = await Raw.open(server)
    with trio.fail_after(10):
        if after_quart:
            await raw.stream.send_all(session_get(s))
            assert (await raw.response()).startswith(b"HTTP/1.1 200 ")
        await raw.stream.send_all(upload_request(s))
        assert (await raw.response()).startswith(b"HTTP/1.1 204 ")
        await trio.testing.wait_all_tasks_blocked()
        between = count_tasks()
        await raw.stream.send_all(upload_request(s, bytes(640), declared=6400))  # held open
        await eventually(lambda: session.stats.bytes_in == 1280)
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == between
        await raw.stream.send_all(bytes(5760))
        response = await raw.response()
    assert response.startswith(b"HTTP/1.1 204 ")
    assert b"\r\nx-accepted-bytes: 6400\r\n" in response
    await raw.aclose()


async def test_an_idle_upload_connection_is_closed_after_the_keep_alive_timeout(
    start_server: StartServer,
) -> None:
    server = await start_server(keep_alive_timeout_s=0.5)
    s = await session_on(server, responder="loopback")
    raw = await Raw.open(server)
    with trio.fail_after(10):
        for _ in range(3):
            await raw.stream.send_all(upload_request(s))
            assert (await raw.response()).startswith(b"HTTP/1.1 204 ")
        assert await raw.closed()
        # a head that never ends is idle too
        raw2 = await Raw.open(server)
        await raw2.stream.send_all(f"POST /api/sessions/{s.id}/upload_audio HTTP/1.1\r\n".encode())
        assert await raw2.closed()
    await raw.aclose()
    await raw2.aclose()


async def test_a_chunk_header_dripping_in_gets_408(start_server: StartServer) -> None:
    """The body's idle timeout waits for body data, not for any byte: a chunk header
    sent a byte at a time must not hold the session's upload."""
    server = await start_server(upload_idle_timeout_s=0.5)
    s = await session_on(server, responder="loopback")
    raw = await Raw.open(server)
    head = chunked_head(s)
    await raw.stream.send_all(head + b"280;")
    response = b""

    async def drip() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            for _ in range(100):
                await raw.stream.send_all(b"x")  # a chunk extension that never ends
                await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip)
        with trio.fail_after(5):
            response = await raw.response()
        nursery.cancel_scope.cancel()
    await raw.aclose()
    assert response.startswith(b"HTTP/1.1 408 ")
    assert b'"code": "upload_idle_timeout"' in response


async def test_a_malformed_body_is_400_and_keeps_what_came_before(
    start_server: StartServer,
) -> None:
    server = await start_server()
    s = await session_on(server, responder="loopback")
    raw = await Raw.open(server)
    head = chunked_head(s)
    with trio.fail_after(10):
        await raw.stream.send_all(head + b"280\r\n" + bytes(640) + b"\r\n")
        await eventually(lambda: server.registry.authorise(s.id, s.token).stats.bytes_in == 640)
        await raw.stream.send_all(b"zz\r\n")  # not a chunk size
        response = await raw.response()
        assert await raw.closed()
    await raw.aclose()
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b'"code": "malformed_body"' in response
    assert b"\r\nx-accepted-bytes: 640\r\n" in response
    assert b"\r\nconnection: close\r\n" in response
    # a head h11 cannot parse gets hypercorn's bare 400
    raw = await Raw.open(server)
    with trio.fail_after(10):
        await raw.stream.send_all(
            f"POST /api/sessions/{s.id}/upload_audio HTTP/1.1\r\nno colon\r\n\r\n".encode()
        )
        response = await raw.response()
        assert await raw.closed()
    await raw.aclose()
    assert response.startswith(b"HTTP/1.1 400 ")


async def test_shutting_down_closes_idle_upload_connections_and_finishes_busy_ones(
    nursery: trio.Nursery,
) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, shutdown_notice_s=0)
    app = create_app(config)
    stop = trio.Event()
    binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
    server = Running(binds[0], app, config)
    s = await session_on(server, responder="loopback")
    idle, busy = await Raw.open(server), await Raw.open(server)
    with trio.fail_after(10):
        for raw in (idle, busy):
            await raw.stream.send_all(upload_request(s))
            assert (await raw.response()).startswith(b"HTTP/1.1 204 ")
        await busy.stream.send_all(upload_request(s, bytes(640), declared=1280))
        await eventually(lambda: server.registry.authorise(s.id, s.token).stats.bytes_in == 1920)
        stop.set()
        assert await idle.closed()
        await busy.stream.send_all(bytes(640))
        assert (await busy.response()).startswith(b"HTTP/1.1 204 ")
        assert await busy.closed()
    await idle.aclose()
    await busy.aclose()


async def test_curl_style_chunked_put_with_expect_100_continue(start_server: StartServer) -> None:
    server = await start_server()
    s = await session_on(server, responder="loopback")
    raw = await Raw.open(server)
    head = (
        f"PUT /api/sessions/{s.id}/upload_audio HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {s.token}\r\nTransfer-Encoding: chunked\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    with trio.fail_after(10):
        await raw.stream.send_all(head.encode())
        while b"\r\n\r\n" not in raw.buffer:
            await raw._fill()
        assert raw.buffer.startswith(b"HTTP/1.1 100 ")
        pcm = tone(0.3).astype("<i2").tobytes()  # 9600 bytes, sent in odd pieces
        for start in range(0, len(pcm), 999):
            piece = pcm[start : start + 999]
            await raw.stream.send_all(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await trio.sleep(0.01)
        await raw.stream.send_all(b"0\r\n\r\n")
        response = await raw.response()
    assert response.startswith(b"HTTP/1.1 204 ")
    assert b"\r\nx-accepted-bytes: 9600\r\n" in response
    assert b"connection: close" not in response
    await raw.aclose()


async def test_a_client_gone_mid_body_leaves_the_session_clean(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start_server()
    s = await session_on(server, responder="loopback")
    session = server.registry.authorise(s.id, s.token)
    baseline = count_tasks()
    raw = await Raw.open(server)
    await raw.stream.send_all(upload_request(s, bytes(640), declared=64000))
    with trio.fail_after(5):
        await eventually(lambda: session.open_requests == 1)
        await raw.aclose()
        await eventually(lambda: session.open_requests == 0 and count_tasks() <= baseline)
    assert session.stats.bytes_in == 640  # what arrived was kept
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:  # lock released
        r = await client.post(s.urls["upload_audio"], headers=s.auth, content=bytes(640))
    assert r.status_code == 204
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_early_answer_to_a_big_body_closes_without_leaking(
    start_server: StartServer,
) -> None:
    # 413 once the sequenced body passes 32 KiB, with a MiB more being sent: the rest is
    # drained while the answer goes out, and the connection ends.
    server = await start_server(max_sequenced_upload_bytes=32 * 1024)
    s = await session_on(server, responder="loopback")
    baseline = count_tasks()
    raw = await Raw.open(server)
    head = (
        f"POST /api/sessions/{s.id}/upload_audio HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {s.token}\r\nX-Sequence: 0\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    response = b""

    async def send_body() -> None:
        await raw.stream.send_all(head.encode())
        try:
            for _ in range(256):
                await raw.stream.send_all(b"1000\r\n" + bytes(4096) + b"\r\n")
        except trio.BrokenResourceError:
            pass  # the server closed the connection, as it said it would

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_body)
        with trio.fail_after(10):
            response = await raw.response()
            assert await raw.closed()
        nursery.cancel_scope.cancel()
    await raw.aclose()
    assert response.startswith(b"HTTP/1.1 413 ")
    assert b'"code": "upload_too_large"' in response
    assert b"\r\nconnection: close\r\n" in response
    with trio.fail_after(5):
        await eventually(lambda: count_tasks() <= baseline)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        r = await client.post(
            s.urls["upload_audio"], headers=s.auth | {"X-Sequence": "0"}, content=bytes(640)
        )
    assert (r.status_code, r.headers["X-Acked-Sequence"]) == (204, "0")


async def test_an_answer_while_hypercorn_holds_a_full_queue_of_body(
    start_server: StartServer,
) -> None:
    # The 409 (another upload holds the session) comes after 0.3 s of waiting, by which time
    # hypercorn has queued all the messages it will hold for the app and stopped reading.
    # It hands the app the disconnect inside the answer's last send: that must not wait
    # for room in a queue nobody reads.
    server = await start_server(upload_backpressure_timeout_s=0.3)
    s = await session_on(server, responder="loopback")
    baseline = count_tasks()
    holder, raw = await Raw.open(server), await Raw.open(server)
    head = chunked_head(s)
    await holder.stream.send_all(head + b"280\r\n" + bytes(640) + b"\r\n")
    session = server.registry.authorise(s.id, s.token)
    with trio.fail_after(10):
        await eventually(lambda: session.stats.bytes_in == 640)
        # small chunks: hypercorn hands the app one message per chunk
        await raw.stream.send_all(head + (b"400\r\n" + bytes(1024) + b"\r\n") * 64)
        response = await raw.response()
        assert await raw.closed()
    await raw.aclose()
    assert response.startswith(b"HTTP/1.1 409 ")
    assert b'"code": "upload_in_progress"' in response
    assert b"\r\nretry-after: 1\r\n" in response
    assert b"\r\nconnection: close\r\n" in response
    await holder.stream.send_all(b"0\r\n\r\n")
    with trio.fail_after(5):
        assert (await holder.response()).startswith(b"HTTP/1.1 204 ")
        await holder.aclose()
        await eventually(lambda: count_tasks() <= baseline)


async def test_backpressure_429_matches_quart(start_server: StartServer) -> None:
    fast, slow = await two_servers(
        start_server,
        cors_origins=ORIGIN,
        playout_max_s=0.2,
        ingest_queue_chunks=1,
        frame_queue_frames=1,
        upload_backpressure_timeout_s=0.3,
        retry_after_s=2,
    )
    big = tone(5.0).astype("<i2").tobytes()
    answers = []
    for server in (fast, slow):
        s = await session_on(server, responder="loopback")
        raw = await Raw.open(server)
        with trio.fail_after(10):
            await raw.stream.send_all(upload_request(s, big, headers={"Origin": ORIGIN}))
            response = await raw.response()
        await raw.aclose()
        accepted = int(re.search(rb"\r\nx-accepted-bytes: (\d+)", response)[1])  # type: ignore[index]
        assert 0 < accepted < len(big)
        assert server.registry.authorise(s.id, s.token).stats.bytes_in == accepted
        # How much got in before the queue filled, and whether the whole body had arrived
        # when the answer went (the fast path does not wait for it), vary: the rest is equal.
        answers.append(re.sub(rb"\r\n(x-accepted-bytes: \d+|connection: close)", b"", response))
    assert answers[0] == answers[1]
    assert answers[0].startswith(b"HTTP/1.1 429 ")
    assert b"\r\nretry-after: 2\r\n" in answers[0]
    assert b"\r\naccess-control-allow-origin: https://a.example\r\n" in answers[0]


_QUART = Quart(__name__)
_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


@given(
    st.one_of(
        _HEADER_TEXT,
        st.builds(
            lambda scheme, sep, cred: scheme + sep + cred,
            st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer\t", ""]),
            st.sampled_from([" ", "  ", "", "\t"]),
            _HEADER_TEXT,
        ),
    )
)
def test_bearer_credential_reads_as_the_quart_routes_do(header: str) -> None:
    header = header.strip(" \t")  # h11 strips a header value's surrounding whitespace

    async def quart_reading() -> str | None:
        async with _QUART.test_request_context("/", headers={"Authorization": header}):
            return bearer_token()

    assert bearer_credential(header) == trio.run(quart_reading)


def test_body_meter_caps_size_and_rate() -> None:
    meter = BodyMeter(limit=5000, window_s=1.0, min_bytes_per_s=1000.0, now=10.0)
    meter.feed(900, 10.5)
    meter.feed(200, 11.0)  # 1100 bytes in the first second: fast enough; a new window
    meter.feed(100, 11.9)
    with pytest.raises(ApiError) as slow:
        meter.feed(100, 12.1)  # 200 bytes in 1.1 s
    assert (slow.value.status, slow.value.code) == (408, "upload_too_slow")
    meter = BodyMeter(limit=5000, window_s=1.0, min_bytes_per_s=0.0, now=0.0)
    meter.feed(5000, 0.1)
    with pytest.raises(ApiError) as big:
        meter.feed(1, 0.2)
    assert (big.value.status, big.value.code) == (413, "upload_too_large")
