"""The shared playout clock (app/_playout.py) under trio's MockClock: one grid for every
stream, hand-over when its driver ends, and the lead bounds with two-frame writes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import trio
import trio.testing

from app._metrics import Metrics
from app._playout import Playout, PlayoutClock, Reader

if TYPE_CHECKING:
    from tests.conftest import StartServer

RATE = 16000
FRAME_S = 0.02
LEAD_S = 0.1
EPS = 1e-9


def make(**kw: int | float) -> Playout:
    args: dict[str, float] = {"frame_ms": 20, "lead_ms": 100, "max_s": 5.0, "reader_queue_ms": 2000}
    args.update(kw)
    return Playout(RATE, metrics=Metrics(), **args)  # type: ignore[arg-type]


async def collect(reader: Reader, into: list[tuple[float, bytes]]) -> None:
    async for data in reader.receive:
        into.append((trio.current_time(), data))


async def run_until_cancelled(playout: Playout, scope: trio.CancelScope) -> None:
    with scope:
        await playout.run()


async def test_every_stream_is_paced_by_one_grid(autojump_clock: trio.testing.MockClock) -> None:
    playouts = [make() for _ in range(3)]
    assert len({id(p.clock) for p in playouts}) == 1
    assert playouts[0].clock is PlayoutClock.shared(FRAME_S, LEAD_S)
    idle = make()
    got: list[list[tuple[float, bytes]]] = [[] for _ in playouts]
    async with trio.open_nursery() as nursery:
        for p in [*playouts, idle]:
            nursery.start_soon(p.run)
        t0 = trio.current_time()
        for i, p in enumerate(playouts):
            await trio.sleep(0.007 * i)  # joining mid-frame
            nursery.start_soon(collect, p.attach(), got[i])
        await trio.sleep(1.0)
        assert playouts[0].clock.active == 3  # the idle one is not ticked
        nursery.cancel_scope.cancel()
    assert idle.ticks == 0
    for arrivals in got:
        offsets = [(t - t0) / FRAME_S for t, _ in arrivals]
        # every frame of every stream leaves on the grid that started with the first
        assert offsets == pytest.approx([round(x) for x in offsets])
        assert all(len(data) == 640 for _, data in arrivals)
    # the later streams joined at the next grid frame after they attached
    assert [round((a[0][0] - t0) / FRAME_S) for a in got] == [0, 1, 2]  # at 0, 7, 21 ms


async def test_a_driver_that_ends_hands_the_grid_on(autojump_clock: trio.testing.MockClock) -> None:
    first, second = make(), make()
    scope = trio.CancelScope()
    arrivals: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_until_cancelled, first, scope)
        t0 = trio.current_time()
        first.attach()
        await trio.sleep(0.005)  # the first session's task drives the grid from t0
        nursery.start_soon(second.run)
        nursery.start_soon(collect, second.attach(), arrivals)
        await trio.sleep(0.505)
        scope.cancel()  # the first session ends mid-frame
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert first.clock.active == 0
    times = [t - t0 for t, _ in arrivals]
    # 20 ms .. 1000 ms: no frame lost or doubled at the hand-over
    assert times == pytest.approx([k * FRAME_S for k in range(1, 51)])


def ahead_s(
    prelude: bytes, writes: list[tuple[float, bytes]], attached: float, now: float
) -> float:
    """How much audio the client holds at ``now``: what it got, less what it played."""
    got = len(prelude) - 44 + sum(len(d) for t, d in writes if t <= now + EPS)
    return got / 2 / RATE - (now - attached)


@pytest.mark.parametrize("join_at", [0.0, 0.003, 0.011, 0.0199])
async def test_two_frame_writes_keep_the_client_within_the_lead(
    autojump_clock: trio.testing.MockClock, join_at: float
) -> None:
    other, playout = make(), make(write_frames=2)
    writes: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other.run)
        nursery.start_soon(playout.run)
        other.attach()  # the grid runs already
        await trio.sleep(0.2 + join_at)
        attached = trio.current_time()
        start = playout.open_stream()
        nursery.start_soon(collect, start.reader, writes)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert all(len(d) == 1280 for _, d in writes)  # two frames per write
    gaps = np.diff([t for t, _ in writes])
    assert gaps == pytest.approx(0.04)
    samples = [attached] + [t for t, _ in writes] + [t - 1e-6 for t, _ in writes]
    levels = [ahead_s(start.prelude, writes, attached, t) for t in samples if t < attached + 0.9]
    # at most lead + one frame (the barge-in bound), at least lead - one frame
    assert max(levels) <= LEAD_S + FRAME_S + 1e-6
    assert min(levels) >= LEAD_S - FRAME_S - 1 / RATE  # (the padding is whole samples)


async def test_barge_in_silences_two_frame_writes_within_lead_and_a_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    playout = make(write_frames=2)
    writes: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(playout.run)
        attached = trio.current_time()
        start = playout.open_stream()
        nursery.start_soon(collect, start.reader, writes)
        await playout.put(np.full(RATE * 2, 5, dtype=np.int16))
        await trio.sleep(0.537)
        flushed_at = trio.current_time()
        playout.flush()
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    pcm = np.frombuffer(start.prelude[44:] + b"".join(d for _, d in writes), dtype="<i2")
    last_voiced = int(np.flatnonzero(pcm)[-1]) + 1
    # the client plays from when it attached: the last assistant sample it hears
    heard_until = attached + last_voiced / RATE
    assert heard_until - flushed_at <= LEAD_S + FRAME_S + 1e-6


async def test_takeover_gives_the_old_reader_its_pulled_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    playout = make(write_frames=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(playout.run)
        old = playout.attach()
        await trio.sleep(0.03)  # frames at 0 and 20 ms (one write), 30 ms: none pending yet
        await trio.sleep(0.015)  # 40 ms: one frame pulled, waiting for its pair
        ticks = playout.ticks
        new = playout.attach()
        leftovers = [d async for d in old.receive]
        assert [len(d) for d in leftovers] == [1280, 640]
        first = await new.receive.receive()
        assert len(first) == 1280
        assert playout.ticks == ticks + 2
        nursery.cancel_scope.cancel()


async def test_the_write_size_is_a_server_setting(start_server: StartServer) -> None:
    """``VOXWIRE_STREAM_WRITE_MS``: a live stream's body chunks carry that much audio."""
    import httpx

    from tests.conftest import create_session

    server = await start_server(stream_write_ms=60)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        s = await create_session(client, responder="loopback")
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    request = (
        f"GET /api/sessions/{s.id}/stream_audio HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {s.token}\r\n\r\n"
    )
    await stream.send_all(request.encode())
    data = b""
    with trio.move_on_after(1.2):
        while True:
            data += await stream.receive_some(65536)
    await stream.aclose()
    body = data.split(b"\r\n\r\n", 1)[1]
    sizes = []
    while b"\r\n" in body:
        line, rest = body.split(b"\r\n", 1)
        size = int(line, 16)
        if len(rest) < size + 2:
            break
        sizes.append(size)
        body = rest[size + 2 :]
    live = sizes[1:]  # after the prelude (header and lead)
    assert len(live) >= 10, sizes
    assert set(live) == {16000 * 60 // 1000 * 2}, sizes  # 60 ms of 16 kHz PCM16
