"""stream_audio and events over real HTTP: headers, WAV, timeouts, takeover, stop, cleanup."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import httpx
import numpy as np
import soundfile as sf
import trio

from tests.conftest import (
    Running,
    StartServer,
    count_tasks,
    create_session,
    eventually,
    never_reading_stream,
    tone,
)

if TYPE_CHECKING:
    import pytest


async def test_stream_headers_header_and_prelude_arrive_at_once(
    client: httpx.AsyncClient,
) -> None:
    s = await create_session(client, output_sample_rate=24000)
    with trio.fail_after(5):
        async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "audio/wav"
            assert r.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in r.headers
            assert "content-encoding" not in r.headers
            assert r.headers["cache-control"] == "no-cache, no-store, no-transform"
            assert r.headers["x-accel-buffering"] == "no"
            assert r.headers["x-content-type-options"] == "nosniff"
            first = await r.aiter_raw().__anext__()
    # One write: the 44-byte header plus >= 1 KiB of silence (lead 100 ms at 24 kHz).
    assert len(first) >= 44 + 1024
    assert first[:4] == b"RIFF"
    assert first[4:8] == b"\xff" * 4
    assert first[40:44] == b"\xff" * 4
    assert set(first[44:]) == {0}


async def test_saved_stream_is_a_readable_wav_with_query_token(client: httpx.AsyncClient) -> None:
    s = await create_session(client, output_sample_rate=16000)
    data = b""
    with trio.fail_after(5):
        async with client.stream("GET", s.urls["stream_audio"] + f"?token={s.token}") as r:
            async for chunk in r.aiter_raw():
                data += chunk
                if len(data) >= 44 + 16000:
                    break
    audio, rate = sf.read(io.BytesIO(data[: 44 + 16000]), dtype="int16")
    assert rate == 16000
    assert len(audio) == 8000
    assert not audio.any()


async def test_stream_outlives_quart_response_timeout(start_server: StartServer) -> None:
    server = await start_server(response_timeout_s=1.0)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client)
        received = 0
        start = trio.current_time()
        with trio.fail_after(10):
            async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as r:
                async for chunk in r.aiter_raw():
                    received += len(chunk)
                    if trio.current_time() - start > 2.5:
                        break
        # well past the 1 s RESPONSE_TIMEOUT and still streaming
        assert received > 44 + 2 * 32000


async def test_second_get_takes_over_and_first_ends_cleanly(client: httpx.AsyncClient) -> None:
    s = await create_session(client)
    async with httpx.AsyncClient(base_url=client.base_url, timeout=10) as other:
        with trio.fail_after(5):
            async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as old:
                it = old.aiter_raw()
                await it.__anext__()
                async with other.stream("GET", s.urls["stream_audio"], headers=s.auth) as new:
                    rest = [c async for c in it]  # ends without error: final chunk received
                    assert sum(len(c) for c in rest) < 10_000
                    first_new = await new.aiter_raw().__anext__()
                    assert first_new[:4] == b"RIFF"


async def test_stop_stream_ends_cleanly_and_is_idempotent(client: httpx.AsyncClient) -> None:
    s = await create_session(client)
    with trio.fail_after(5):
        async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as r:
            it = r.aiter_raw()
            await it.__anext__()
            async with httpx.AsyncClient(base_url=client.base_url) as c2:
                stop = await c2.post(s.urls["stop_stream"], headers=s.auth)
                assert (stop.status_code, stop.json()) == (200, {"stopped": True})
                rest = [c async for c in it]
                assert sum(len(c) for c in rest) < 10_000
                again = await c2.post(s.urls["stop_stream"], headers=s.auth)
                assert (again.status_code, again.json()) == (200, {"stopped": False})


async def test_vanished_reader_frees_its_tasks_within_a_second(
    client: httpx.AsyncClient, server: Running
) -> None:
    s = await create_session(client)
    await client.get(s.urls["session"], headers=s.auth)  # pool connection in place
    await trio.sleep(0.1)
    baseline = count_tasks()
    session = next(iter(server.registry.sessions()))
    for path in ("stream_audio", "events"):
        async with httpx.AsyncClient(base_url=client.base_url, timeout=10) as gone:
            async with gone.stream("GET", s.urls[path], headers=s.auth) as r:
                await r.aiter_raw().__anext__()
                assert session.open_requests == 1
                assert count_tasks() > baseline
        closed_at = trio.current_time()  # the client's socket is closed here
        with trio.fail_after(1.0):
            while session.open_requests or count_tasks() != baseline:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert trio.current_time() - closed_at < 1.0
        assert not session.playout.has_reader


async def test_events_stream_resume_ping_and_client_events(start_server: StartServer) -> None:
    server = await start_server(sse_ping_interval_s=0.2, event_replay_size=4)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client)
        await client.patch(s.urls["session"], headers=s.auth, json={"temperature": 0.5})

        async def read_events(
            n: int, headers: dict[str, str], want_ping: bool = False
        ) -> tuple[list[tuple[int | None, dict[str, object]]], bool]:
            out: list[tuple[int | None, dict[str, object]]] = []
            pinged = False
            event_id: int | None = None
            with trio.fail_after(5):
                async with client.stream("GET", s.urls["events"], headers=headers) as r:
                    assert r.headers["content-type"].startswith("text/event-stream")
                    async for line in r.aiter_lines():
                        if line.startswith(": ping"):
                            pinged = True
                        elif line.startswith("id: "):
                            event_id = int(line[4:])
                        elif line.startswith("data: "):
                            out.append((event_id, json.loads(line[6:])))
                            event_id = None
                        if len(out) >= n and (pinged or not want_ping):
                            break
            return out, pinged

        events, pinged = await read_events(2, s.auth, want_ping=True)
        assert [(i, e["type"]) for i, e in events] == [
            (1, "session.created"),
            (2, "session.updated"),
        ]
        assert events[1][1]["session"]["config"]["temperature"] == 0.5  # type: ignore[index]
        assert pinged
        resumed, _ = await read_events(1, s.auth | {"Last-Event-ID": "1"})
        assert [i for i, _ in resumed] == [2]

        r = await client.post(
            s.urls["events"],
            headers=s.auth,
            json=[
                {"type": "session.update", "session": {"voice": "joe"}},
                {"type": "input_audio_buffer.clear"},
            ],
        )
        assert (r.status_code, r.json()) == (200, {"accepted": 2})
        r = await client.post(s.urls["events"], headers=s.auth, json={"type": "no.such.event"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "unknown_event_type")
        r = await client.post(
            s.urls["events"],
            headers=s.auth,
            json={"type": "session.update", "session": {"temperature": "hot"}},
        )
        assert (r.status_code, r.json()["error"]["param"]) == (422, "temperature")
        tail, _ = await read_events(4, s.auth | {"Last-Event-ID": "2"})
        assert [e["type"] for _, e in tail] == [
            "session.updated",
            "input_audio_buffer.cleared",
            "error",
            "error",
        ]
        assert tail[2][1]["error"]["code"] == "unknown_event_type"  # type: ignore[index]
        # id 1 has left the 4-event replay window: the stream says so, then carries on
        old, _ = await read_events(5, s.auth | {"Last-Event-ID": "0"})
        assert old[0][0] is None
        assert old[0][1]["type"] == "error"
        assert old[0][1]["error"]["code"] == "event_replay_unavailable"  # type: ignore[index]
        assert [i for i, _ in old[1:]] == [3, 4, 5, 6]


async def test_a_bug_in_one_session_ends_only_that_session(
    server: Running, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception (not a model error) in one session's task: that session
    ends with an ``error`` event; the others and later creations are unaffected."""
    broken = await create_session(client, responder="loopback")
    healthy = await create_session(client, responder="loopback")
    session = next(s for s in server.registry.sessions() if s.id == broken.id)

    async def bug(samples: object) -> None:
        raise TypeError("injected bug")

    monkeypatch.setattr(session.playout, "put", bug)
    async with client.stream("GET", broken.urls["events"], headers=broken.auth) as ev:
        r = await client.post(broken.urls["upload_audio"], headers=broken.auth, content=bytes(6400))
        assert r.status_code in (204, 404)  # the upload may race the session's end
        with trio.fail_after(5):
            events = [
                json.loads(line[6:]) async for line in ev.aiter_lines() if line.startswith("data:")
            ]
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "session_failed"
    gone = await client.get(broken.urls["session"], headers=broken.auth)
    assert gone.status_code == 404
    # The other session still works end to end, and new sessions can be created.
    r = await client.post(healthy.urls["upload_audio"], headers=healthy.auth, content=bytes(640))
    assert r.status_code == 204
    assert (await client.get(healthy.urls["session"], headers=healthy.auth)).status_code == 200
    await create_session(client, responder="loopback")
    metrics = (await client.get("/metrics")).text
    assert "voxwire_sessions_failed_total 1.0" in metrics


async def test_requests_during_the_drain_notice(start_server: StartServer) -> None:
    """While draining, a session's own requests still work (no 500s); new streams and
    sessions are refused with 503; open streams have ended."""
    server = await start_server(shutdown_notice_s=5)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        s = await create_session(client, responder="loopback")
        server.registry.drain()
        r = await client.patch(s.urls["session"], headers=s.auth, json={"instructions": "x"})
        assert r.status_code == 200, r.text
        r = await client.post(
            s.urls["events"], headers=s.auth, json={"type": "input_audio_buffer.clear"}
        )
        assert r.status_code == 200, r.text
        r = await client.post(s.urls["events"], headers=s.auth, json={"type": "nope"})
        assert r.status_code == 400
        r = await client.post(s.urls["upload_audio"], headers=s.auth, content=bytes(640))
        assert r.status_code == 204
        for url in (s.urls["events"], s.urls["stream_audio"]):
            r = await client.get(url, headers=s.auth)
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "draining"
        r = await client.post("/api/sessions", json={"responder": "loopback"})
        assert r.status_code == 503


async def test_a_client_that_never_reads_is_cut_off(start_server: StartServer) -> None:
    """RELIABILITY.md V7: hypercorn's send cannot be cancelled, so a client that never reads
    would pin its stream (and its session, and shutdown) forever. The kernel's
    TCP_USER_TIMEOUT (send_timeout_s) aborts the connection; the session is free again."""
    server = await start_server(send_timeout_s=1.5)
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        s = await create_session(client, responder="loopback", output_sample_rate=48000)
        session = next(x for x in server.registry.sessions() if x.id == s.id)
        sock = await never_reading_stream(server.url, s)
        try:
            with trio.fail_after(3):
                await eventually(lambda: session.open_requests > 0)
            stuck_at = session.stats.bytes_out
            await trio.sleep(1.0)
            assert session.stats.bytes_out - stuck_at < 10_000  # blocked, not streaming
            with trio.fail_after(10):
                await eventually(lambda: session.open_requests == 0)
            # The session is usable: a new reader streams.
            async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as r:
                assert r.status_code == 200
                assert len(await r.aiter_raw().__anext__()) >= 44
        finally:
            sock.close()


async def test_stream_resumes_from_a_position_without_gap_or_repeat(
    start_server: StartServer,
) -> None:
    """A reader loses its connection mid-reply and asks for the rest with ?from_ms=: the
    two responses together carry the reply exactly once."""
    server = await start_server(stream_resume_ms=1000)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client, responder="loopback")
        signal = tone(1.5)
        first = bytearray()
        async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as a:
            assert a.headers["x-stream-resumed"] == "false"
            p0 = int(a.headers["x-stream-position-ms"])
            pad = int(a.headers["x-stream-padding-bytes"])
            r = await client.post(
                s.urls["upload_audio"], headers=s.auth, content=signal.astype("<i2").tobytes()
            )
            assert r.status_code == 204
            async for chunk in a.aiter_raw():
                first += chunk
                if len(first) > 44 + pad + 16000:  # ~0.5 s of the reply, then the drop
                    break
        # What the client holds: the data after the header and the padding.
        timeline = bytes(first[44 + pad :])
        timeline = timeline[: len(timeline) // 2 * 2]
        received_ms = p0 + len(timeline) // 32  # 16 kHz PCM16: 32 bytes per ms
        timeline = timeline[: (received_ms - p0) * 32]
        await trio.sleep(0.3)  # the reply plays on while nobody listens
        second = bytearray()
        url = f"{s.urls['stream_audio']}?from_ms={received_ms}"
        async with client.stream("GET", url, headers=s.auth) as b:
            assert b.headers["x-stream-resumed"] == "true"
            p1 = int(b.headers["x-stream-position-ms"])
            assert int(b.headers["x-stream-padding-bytes"]) == 0
            assert received_ms - 20 < p1 <= received_ms  # at most one frame earlier
            with trio.move_on_after(2.5):
                async for chunk in b.aiter_raw():
                    second += chunk
        rest = bytes(second[44:])
        rest = rest[(received_ms - p1) * 32 :]  # drop the overlap inside the first frame
        heard = np.frombuffer(timeline + rest[: len(rest) // 2 * 2], "<i2")
        heard = heard[heard != 0]
        n = len(signal) // 512 * 512  # whole 32 ms ingest frames
        assert np.array_equal(heard[:n], signal[:n])

        # Too old (or never buffered): a live start, said so.
        async with client.stream("GET", f"{s.urls['stream_audio']}?from_ms=0", headers=s.auth) as c:
            assert c.headers["x-stream-resumed"] == "false"
        bad = await client.get(f"{s.urls['stream_audio']}?from_ms=-5", headers=s.auth)
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "from_ms"
