"""upload_audio over real HTTP: formats, odd bytes, sequences, caps, timeouts, backpressure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import trio

from tests.conftest import Running, SessionHandle, StartServer, create_session, tone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


async def read_nonsilent(client: httpx.AsyncClient, s: SessionHandle, n: int) -> np.ndarray:
    """Read the loopback stream until ``n`` non-zero samples have come back."""
    got: list[np.ndarray] = []
    count = 0
    buf = b""
    with trio.fail_after(10):
        async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                buf += chunk
                if len(buf) < 44:
                    continue
                usable = len(buf) - 44
                usable -= usable % 2
                samples = np.frombuffer(buf[44 : 44 + usable], dtype="<i2")
                buf = buf[:44] + buf[44 + usable :]
                real = samples[samples != 0]
                got.append(real)
                count += len(real)
                if count >= n:
                    break
    return np.concatenate(got)[:n]


async def upload(
    client: httpx.AsyncClient, s: SessionHandle, data: bytes | AsyncIterator[bytes], **headers: str
) -> httpx.Response:
    return await client.post(
        s.urls["upload_audio"],
        content=data,  # type: ignore[arg-type]
        headers=s.auth | headers,
    )


async def test_short_posts_with_odd_sizes_loop_back_exactly(client: httpx.AsyncClient) -> None:
    s = await create_session(client, responder="loopback")
    signal = tone(0.5)  # 8000 samples = 15 frames of 512 + 320 held back
    data = signal.astype("<i2").tobytes()
    sizes = [1, 2, 333, 640, 641, 1, 999]
    pos = 0
    async with trio.open_nursery() as nursery:
        result: list[np.ndarray] = []

        async def reader() -> None:
            result.append(await read_nonsilent(client, s, 15 * 512))

        nursery.start_soon(reader)
        await trio.sleep(0.2)
        i = 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            r = await upload(client, s, data[pos : pos + n])
            assert r.status_code == 204, r.text
            pos += n
            i += 1
    assert np.array_equal(result[0], signal[: 15 * 512])
    info = (await client.get(s.urls["session"], headers=s.auth)).json()
    assert info["stats"]["bytes_in"] == len(data)
    assert info["stats"]["audio_in_ms"] == 15 * 32


async def test_l16_big_endian_is_accepted_and_swapped(client: httpx.AsyncClient) -> None:
    s = await create_session(client, responder="loopback")
    signal = tone(0.2)
    async with trio.open_nursery() as nursery:
        result: list[np.ndarray] = []

        async def reader() -> None:
            result.append(await read_nonsilent(client, s, 6 * 512))

        nursery.start_soon(reader)
        await trio.sleep(0.2)
        r = await upload(
            client,
            s,
            signal.astype(">i2").tobytes(),
            **{"Content-Type": "audio/L16; rate=16000; channels=1"},
        )
        assert r.status_code == 204
    assert np.array_equal(result[0], signal[: 6 * 512])


async def test_l16_at_another_rate_is_resampled(client: httpx.AsyncClient, server: Running) -> None:
    s = await create_session(client, responder="none")
    r = await upload(
        client,
        s,
        tone(1.0, rate=48000).astype(">i2").tobytes(),
        **{"Content-Type": "audio/L16;rate=48000"},
    )
    assert r.status_code == 204
    with trio.fail_after(5):
        while True:
            info = (await client.get(s.urls["session"], headers=s.auth)).json()
            if info["stats"]["audio_in_ms"] >= 960:
                break
            await trio.sleep(0.02)
    assert info["stats"]["audio_in_ms"] <= 1000  # 1 s at 48 kHz became ~1 s at 16 kHz


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "audio/wav",
        "audio/L16",
        "audio/L16;rate=12345",
        "audio/L16;rate=16000;channels=2",
        "audio/pcm;rate=abc",
        "multipart/form-data; boundary=x",
    ],
)
async def test_wrong_content_type_is_415_before_the_body(
    client: httpx.AsyncClient, content_type: str
) -> None:
    s = await create_session(client)
    r = await upload(client, s, b"\x00\x01" * 100, **{"Content-Type": content_type})
    assert r.status_code == 415
    assert r.json()["error"]["param"] == "Content-Type"
    info = (await client.get(s.urls["session"], headers=s.auth)).json()
    assert info["stats"]["bytes_in"] == 0
    assert 'voxwire_upload_rejected_total{status="415"} 1.0' in (await client.get("/metrics")).text


async def test_empty_body_is_a_noop(client: httpx.AsyncClient) -> None:
    s = await create_session(client)
    r = await upload(client, s, b"")
    assert r.status_code == 204
    assert r.headers["X-Accepted-Bytes"] == "0"


async def test_sequences_are_idempotent_and_gaps_reported(client: httpx.AsyncClient) -> None:
    s = await create_session(client, responder="none")
    chunk = tone(0.1).astype("<i2").tobytes()
    for seq in (0, 1):
        r = await upload(client, s, chunk, **{"X-Sequence": str(seq)})
        assert (r.status_code, r.headers["X-Acked-Sequence"]) == (204, str(seq))
    r = await upload(client, s, chunk, **{"X-Sequence": "1"})  # a retry
    assert (r.status_code, r.headers["X-Acked-Sequence"], r.headers["X-Accepted-Bytes"]) == (
        204,
        "1",
        "0",
    )
    r = await upload(client, s, chunk, **{"X-Sequence": "3"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "sequence_gap"
    assert "expected X-Sequence 2" in r.json()["error"]["message"]
    r = await upload(client, s, chunk, **{"X-Sequence": "x"})
    assert (r.status_code, r.json()["error"]["param"]) == (400, "X-Sequence")
    info = (await client.get(s.urls["session"], headers=s.auth)).json()
    assert info["stats"]["bytes_in"] == 2 * len(chunk)
    assert info["stats"]["next_sequence"] == 2


async def test_caps_answer_413_and_keep_what_was_accepted(start_server: StartServer) -> None:
    server = await start_server(max_upload_request_bytes=64_000, max_session_audio_s=3.0)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client, responder="none")
        r = await upload(client, s, bytes(64_002))  # declared Content-Length over the cap
        assert (r.status_code, r.json()["error"]["code"]) == (413, "upload_too_large")

        async def body() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield bytes(10_000)
                await trio.sleep(0.01)

        gen = body()
        r = await upload(client, s, gen)  # chunked: no declared length
        await gen.aclose()  # type: ignore[attr-defined]
        assert r.status_code == 413
        info = (await client.get(s.urls["session"], headers=s.auth)).json()
        assert 0 < info["stats"]["bytes_in"] <= 64_000
        # session duration cap: 3 s in all
        for _ in range(3):
            r = await upload(client, s, bytes(32_000))
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "session_audio_limit"


async def test_stalled_body_gets_408(start_server: StartServer) -> None:
    server = await start_server(upload_idle_timeout_s=0.3)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client, responder="none")

        async def stall() -> AsyncIterator[bytes]:
            yield bytes(3200)
            await trio.sleep(2)
            yield bytes(3200)

        gen = stall()
        with trio.fail_after(5):
            r = await upload(client, s, gen)
        await gen.aclose()  # type: ignore[attr-defined]
        assert (r.status_code, r.json()["error"]["code"]) == (408, "upload_idle_timeout")
        info = (await client.get(s.urls["session"], headers=s.auth)).json()
        assert info["stats"]["bytes_in"] == 3200


async def test_backpressure_waits_then_429_without_losing_accepted_audio(
    start_server: StartServer,
) -> None:
    server = await start_server(
        playout_max_s=0.2,
        ingest_queue_chunks=1,
        frame_queue_frames=1,
        upload_backpressure_timeout_s=0.3,
        retry_after_s=2,
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client, responder="loopback")
        big = tone(5.0).astype("<i2").tobytes()
        r = await upload(client, s, big)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "2"
        assert r.json()["error"]["code"] == "upload_backpressure"
        accepted = int(r.headers["X-Accepted-Bytes"])
        info = (await client.get(s.urls["session"], headers=s.auth)).json()
        assert 0 < accepted < len(big)
        assert info["stats"]["bytes_in"] == accepted
        assert info["stats"]["throttled"] == 1
        metrics = (await client.get("/metrics")).text
        assert "voxwire_upload_throttled_total 1.0" in metrics
