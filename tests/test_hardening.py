"""Faults from RELIABILITY.md's catalogue not covered elsewhere: slow bodies, bad JSON
literals, size limits on every body, slow and vanished clients, CORS and ``?token=``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from typing import TYPE_CHECKING

import httpx
import pytest
import trio
import trio.testing

from app._asgi import ShieldedEndHTTPConnection
from tests.conftest import (
    Running,
    SessionHandle,
    StartServer,
    count_tasks,
    create_session,
    eventually,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class QuartOnly(ShieldedEndHTTPConnection):
    fast_paths = False


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def raw_request(url: str, head: str) -> trio.SocketStream:
    host, port = url.rsplit("/", 1)[1].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(head.encode())
    return stream


async def read_response(stream: trio.SocketStream) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    start = body.find(b"{")
    return status, json.loads(body[start : body.rfind(b"}") + 1])


# -- slowloris bodies ------------------------------------------------------------------


@pytest.mark.parametrize("what", ["create", "events", "frame"])
async def test_a_small_body_dripping_in_gets_408(start_server: StartServer, what: str) -> None:
    """One byte a second: the whole small body must arrive within small_body_timeout_s."""
    server = await start_server(small_body_timeout_s=1.0)
    async with httpx.AsyncClient(base_url=server.url) as client:
        s = await create_session(client, responder="loopback")
    path, ctype = {
        "create": ("/api/sessions", "application/json"),
        "events": (s.urls["events"], "application/json"),
        "frame": (s.urls["upload_frame"], "image/png"),
    }[what]
    stream = await raw_request(
        server.url,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.token}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: 100\r\n\r\n",
    )
    with trio.fail_after(5):
        async with stream:
            for _ in range(3):
                await stream.send_all(b" ")
                await trio.sleep(0.6)
            status, body = await read_response(stream)
    assert status == 408
    assert body["error"]["code"] == "body_timeout"  # type: ignore[index]


async def test_an_upload_dripping_in_gets_408(start_server: StartServer) -> None:
    """Bytes keep coming (so the idle timeout never fires), far below any audio rate:
    the server answers 408 while the client is still dripping."""
    server = await start_server(upload_idle_timeout_s=1.0, upload_min_bytes_per_s=1000)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client, responder="loopback")
        stream = await raw_request(
            server.url,
            f"POST {s.urls['upload_audio']} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {s.token}\r\nTransfer-Encoding: chunked\r\n\r\n",
        )

        async def drip() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for _ in range(40):  # 8 s of 10 bytes/s
                    await stream.send_all(b"2\r\n\x00\x00\r\n")
                    await trio.sleep(0.2)

        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            with trio.fail_after(4):
                status, body = await read_response(stream)
            nursery.cancel_scope.cancel()
        assert status == 408
        assert body["error"]["code"] == "upload_too_slow"  # type: ignore[index]
        info = (await client.get(s.urls["session"], headers=s.auth)).json()
        assert info["stats"]["bytes_in"] > 0  # what came is kept
        # A real-time stream at the lowest rate passes the same check.
        s8 = await create_session(client, responder="loopback", input_sample_rate=8000)

        async def realtime() -> AsyncIterator[bytes]:
            for _ in range(25):  # 2.5 s of 8 kHz PCM16 in 100 ms pieces
                yield bytes(1600)
                await trio.sleep(0.1)

        r = await client.post(s8.urls["upload_audio"], headers=s8.auth, content=realtime())
        assert r.status_code == 204, r.text


# -- JSON and size limits --------------------------------------------------------------


async def test_nan_and_infinity_literals_are_422_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    """json.loads accepts these literals; the config validators must still refuse them."""
    s = await create_session(client, responder="loopback")
    json_type = {"Content-Type": "application/json"}
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        config = b'{"temperature": ' + literal + b"}"
        update = b'{"type": "session.update", "session": ' + config + b"}"
        for method, url, headers, body in (
            ("POST", "/api/sessions", json_type, config),
            ("PATCH", s.urls["session"], json_type | s.auth, config),
            ("POST", s.urls["events"], json_type | s.auth, update),
        ):
            r = await client.request(method, url, content=body, headers=headers)
            assert r.status_code == 422, (method, url, body, r.text)
            assert r.json()["error"]["param"].endswith("temperature")
    info = (await client.get(s.urls["session"], headers=s.auth)).json()
    assert info["config"]["temperature"] == s.body["config"]["temperature"]


async def test_every_body_has_a_size_limit(start_server: StartServer) -> None:
    server = await start_server(max_json_bytes=1024, max_frame_bytes=2048)
    async with httpx.AsyncClient(base_url=server.url) as client:
        s = await create_session(client, responder="loopback")
        big_json = json.dumps({"instructions": "x" * 2000}).encode()
        # events take up to max_json_bytes + one base64 image (max_frame_bytes * 4 / 3)
        big_events = json.dumps({"type": "response.create", "x": "x" * 6000}).encode()

        async def chunked(data: bytes) -> AsyncIterator[bytes]:
            for i in range(0, len(data), 500):
                yield data[i : i + 500]

        json_type = {"Content-Type": "application/json"} | s.auth
        png = {"Content-Type": "image/png"} | s.auth
        frame = b"\x89PNG\r\n\x1a\n" + bytes(3000)
        for method, url, headers, body in (
            ("POST", "/api/sessions", json_type, big_json),
            ("PATCH", s.urls["session"], json_type, big_json),
            ("POST", s.urls["events"], json_type, big_events),
            ("POST", s.urls["upload_frame"], png, frame),
        ):
            for content in (body, chunked(body)):  # declared length, then chunked
                r = await client.request(method, url, content=content, headers=headers)
                assert r.status_code == 413, (method, url, r.text)
                assert r.json()["type"] == "error"
        # Nothing was half-applied: the session is as it was, and still works.
        info = (await client.get(s.urls["session"], headers=s.auth)).json()
        assert info["config"]["instructions"] == s.body["config"]["instructions"]


# -- clients that vanish or lag --------------------------------------------------------


async def test_disconnect_mid_upload_frees_tasks_and_fds(
    server: Running, client: httpx.AsyncClient
) -> None:
    s = await create_session(client, responder="loopback")
    await trio.sleep(0.2)
    tasks, fds = count_tasks(), open_fds()
    for _ in range(3):
        stream = await raw_request(
            server.url,
            f"POST {s.urls['upload_audio']} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {s.token}\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        for _ in range(5):
            await stream.send_all(b"280\r\n" + bytes(640) + b"\r\n")
            await trio.sleep(0.02)
        await stream.aclose()  # gone mid-body, no final chunk
    session = next(x for x in server.registry.sessions() if x.id == s.id)
    with trio.fail_after(3):
        await eventually(lambda: session.open_requests == 0)
        await eventually(lambda: count_tasks() <= tasks)
        await eventually(lambda: open_fds() <= fds)
    # What arrived before the cut was taken, and the next upload is not blocked.
    assert session.describe()["stats"]["bytes_in"] >= 3 * 640
    r = await client.post(s.urls["upload_audio"], headers=s.auth, content=bytes(640))
    assert r.status_code == 204


async def test_a_reader_slower_than_real_time_is_dropped_with_an_error_event(
    start_server: StartServer,
) -> None:
    server = await start_server(reader_queue_ms=500)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client, responder="loopback", output_sample_rate=48000)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        host, port = server.url.rsplit("/", 1)[1].split(":")
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        await stream.socket.connect((host, int(port)))
        await stream.send_all(
            f"GET {s.urls['stream_audio']} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {s.token}\r\n\r\n".encode()
        )
        events: list[dict[str, object]] = []

        async def slow_reader() -> None:
            async with stream:
                # 96 KB/s sent, ~10 KB/s read: a pace, not a wait for a state
                while await stream.receive_some(1024):  # noqa: ASYNC110
                    await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_reader)
            async with client.stream("GET", s.urls["events"], headers=s.auth) as ev:
                with trio.fail_after(10):
                    async for line in ev.aiter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[6:]))
                            if events[-1]["type"] == "error":
                                break
            nursery.cancel_scope.cancel()
        errors = [e for e in events if e["type"] == "error"]
        assert errors[0]["error"]["code"] == "stream_reader_too_slow"  # type: ignore[index]
        metrics = (await client.get("/metrics")).text
        assert "voxwire_stream_readers_dropped_total 1.0" in metrics
        # The session and its pipeline are fine: a new reader streams.
        async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as r:
            assert len(await r.aiter_raw().__anext__()) >= 44


# -- CORS and where a token may travel ------------------------------------------------


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    r = await client.options(
        "/api/sessions", headers=origin | {"Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in r.headers
    r = await client.get("/readyz", headers=origin)
    assert "access-control-allow-origin" not in r.headers


async def test_cors_allows_only_the_configured_origins(start_server: StartServer) -> None:
    server = await start_server(cors_origins="https://app.example, https://b.example/")
    async with httpx.AsyncClient(base_url=server.url) as client:
        ok = {"Origin": "https://b.example"}
        pre = await client.options(
            "/api/sessions",
            headers=ok
            | {
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "https://b.example"
        assert "Authorization" in pre.headers["access-control-allow-headers"]
        assert "PATCH" in pre.headers["access-control-allow-methods"]
        r = await client.post("/api/sessions", json={"responder": "loopback"}, headers=ok)
        assert r.status_code == 201
        assert r.headers["access-control-allow-origin"] == "https://b.example"
        assert "X-Acked-Sequence" in r.headers["access-control-expose-headers"]
        assert "Origin" in r.headers["vary"]
        bad = await client.post(
            "/api/sessions",
            json={"responder": "loopback"},
            headers={"Origin": "https://evil.example"},
        )
        assert "access-control-allow-origin" not in bad.headers


async def test_query_token_only_where_headers_cannot_be_set(client: httpx.AsyncClient) -> None:
    s: SessionHandle = await create_session(client, responder="loopback")
    q = {"token": s.token}
    not_found = (await client.get("/api/sessions/sess_nope", params=q)).json()
    for method, url in (
        ("GET", s.urls["session"]),
        ("PATCH", s.urls["session"]),
        ("POST", s.urls["upload_audio"]),
        ("POST", s.urls["events"]),
        ("POST", s.urls["stop_stream"]),
        ("POST", s.urls["upload_frame"]),
        ("DELETE", s.urls["session"]),
    ):
        r = await client.request(method, url, params=q)
        assert r.status_code == 404, (method, url)
        assert r.json() == not_found
    # The two GETs a browser cannot add headers to accept it.
    async with client.stream("GET", s.urls["events"], params=q) as ev:
        assert ev.status_code == 200
    async with client.stream("GET", s.urls["stream_audio"], params=q) as st:
        assert st.status_code == 200


async def test_tokens_and_keys_never_reach_the_logs(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger at DEBUG while a session is used every way, failures included."""
    caplog.set_level(logging.DEBUG)
    server = await start_server(api_key="k" * 40, log_level="debug")
    key = {"Authorization": "Bearer " + "k" * 40}
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        r = await client.post("/api/sessions", json={"responder": "loopback"}, headers=key)
        s = r.json()
        auth = {"Authorization": f"Bearer {s['token']}"}
        q = {"token": s["token"]}
        async with client.stream("GET", s["urls"]["events"], params=q) as ev:
            assert ev.status_code == 200
        async with client.stream("GET", s["urls"]["stream_audio"], params=q) as st:
            assert st.status_code == 200
        await client.post(s["urls"]["upload_audio"], headers=auth, content=bytes(640))
        await client.post(s["urls"]["upload_audio"], headers=auth | {"Content-Type": "x/y"})
        await client.get(s["urls"]["session"], params=q)  # refused: query token
        await client.post("/api/sessions", headers={"Authorization": "Bearer " + "w" * 40})
        await client.get("/metrics", headers=key)
        await client.delete(s["urls"]["session"], headers=auth)
    # The server's records (httpx/httpcore are this test's own client logging its URLs).
    server_logs = "\n".join(
        f"{r.name} {r.getMessage()}"
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore"))
    )
    assert "hypercorn" in server_logs or "app" in server_logs  # the loggers did run
    assert s["token"] not in server_logs
    assert "k" * 40 not in server_logs
    assert "w" * 40 not in server_logs


@pytest.mark.parametrize("requests", [0, 1, 3])
async def test_idle_keep_alive_connections_are_closed(
    start_server: StartServer, requests: int
) -> None:
    """An idle keep-alive connection is closed after keep_alive_timeout_s, also once it
    has served requests (the idle timer used to be cancelled with the first response, so
    such a connection held its socket forever)."""
    server = await start_server(keep_alive_timeout_s=0.5)
    host, port = server.url.rsplit("/", 1)[1].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        for _ in range(requests):
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b'"ok"' not in got:
                data = await stream.receive_some()
                assert data, "closed before answering"
                got += data
            assert got.startswith(b"HTTP/1.1 200")
        with trio.fail_after(5):
            closed_at_eof = await stream.receive_some()
        assert closed_at_eof == b""


async def test_a_closed_keep_alive_connection_frees_its_tasks_at_once(
    start_server: StartServer,
) -> None:
    """Once a response has ended, the connection waits on a keep-alive timer; when the
    client then closes it, its handler ends at once, not after keep_alive_timeout_s."""
    server = await start_server(keep_alive_timeout_s=60, default_responder="loopback")
    await trio.testing.wait_all_tasks_blocked()  # the listener's task has started
    baseline = count_tasks()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client)
        async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as r:
            chunks = r.aiter_raw()
            await chunks.__anext__()
            stop = await client.post(f"{s.urls['session']}/stop_stream", headers=s.auth)
            assert stop.json() == {"stopped": True}
            _ = [c async for c in chunks]  # ended by the server: the connection is reusable
        assert (await client.delete(s.urls["session"], headers=s.auth)).status_code == 204
    with trio.fail_after(5):
        await eventually(lambda: count_tasks() <= baseline)


# -- an early answer to a body still on its way -----------------------------------------


@pytest.mark.parametrize("fast_path", [True, False])
async def test_an_early_error_is_not_lost_to_a_reset(
    start_server: StartServer, fast_path: bool
) -> None:
    """A 404 given while the client is still sending its body closes the connection,
    after the server has read what the client goes on sending (a lingering close, as
    nginx does). Closing a socket with unread data makes the kernel reset the connection,
    and a reset can destroy the answer before the client has read it: the Swift client
    once saw a 404 with no body for an upload to a deleted session."""
    server = await start_server()
    if not fast_path:
        server.app.asgi_http_class = QuartOnly
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client)
        assert (await client.delete(s.urls["session"], headers=s.auth)).status_code == 204
    path = s.urls["upload_audio"].split("://", 1)[-1].split("/", 1)[-1].lstrip("/")
    total, first = 256_000, 3200
    stream = await raw_request(
        server.url,
        f"POST /{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.token}\r\n"
        f"Content-Type: audio/pcm\r\nContent-Length: {total}\r\n\r\n",
    )
    async with stream:
        await stream.send_all(b"\0" * first)
        with trio.fail_after(5):
            status, body = await read_response(stream)
        error = body["error"]
        assert isinstance(error, dict)
        assert (status, error["code"]) == (404, "session_not_found")
        # the rest of the body, after the answer: the server still reads it
        with trio.fail_after(5):
            for _ in range((total - first) // 3200):
                await stream.send_all(b"\0" * 3200)
                await trio.sleep(0.002)
            await stream.send_eof()
            rest = b""
            while chunk := await stream.receive_some():
                rest += chunk
        assert rest == b""  # a clean end of stream, not ECONNRESET
