"""Playout pacing, takeover and slow readers under trio's MockClock (exact times)."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from app._metrics import Metrics
from app._playout import Playout


def make(**kw: int | float) -> Playout:
    args: dict[str, float] = {"frame_ms": 20, "lead_ms": 100, "max_s": 5.0, "reader_queue_ms": 2000}
    args.update(kw)
    return Playout(16000, metrics=Metrics(), **args)  # type: ignore[arg-type]


async def test_frames_are_paced_in_real_time(autojump_clock: trio.testing.MockClock) -> None:
    playout = make()
    arrivals: list[tuple[float, int]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(playout.run)
        t0 = trio.current_time()
        reader = playout.attach()
        prelude = playout.prelude()
        assert len(prelude) == 44 + 3200  # header + 100 ms of silence (>= 1 KiB)
        await playout.put(np.full(16000, 7, dtype=np.int16))  # 1 s of audio

        async def read() -> None:
            async for frame in reader.receive:
                arrivals.append((trio.current_time() - t0, len(frame)))
                if len(arrivals) == 100:
                    return

        await read()
        nursery.cancel_scope.cancel()
    times = [t for t, _ in arrivals]
    # Frame k leaves exactly k * 20 ms after attach: the prelude carries the lead.
    assert times == pytest.approx([k * 0.02 for k in range(100)])
    assert all(n == 640 for _, n in arrivals)
    assert playout.audio_samples_played == 16000


async def test_silence_when_idle_and_audio_when_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    playout = make()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(playout.run)
        reader = playout.attach()
        first = await reader.receive.receive()
        assert first == bytes(640)
        await playout.put(np.full(320, 9, dtype=np.int16))
        frames = [await reader.receive.receive() for _ in range(2)]
        mixed = np.frombuffer(b"".join(frames), dtype="<i2")
        assert (mixed == 9).sum() == 320
        nursery.cancel_scope.cancel()


async def test_takeover_ends_the_old_reader(autojump_clock: trio.testing.MockClock) -> None:
    playout = make()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(playout.run)
        old = playout.attach()
        await old.receive.receive()
        new = playout.attach()
        leftovers = [f async for f in old.receive]  # ends: EndOfChannel, not an error
        assert len(leftovers) <= 1
        assert await new.receive.receive() == bytes(640)
        assert playout.stop() is True
        assert playout.stop() is False
        nursery.cancel_scope.cancel()


async def test_slow_reader_is_dropped_and_playout_never_blocks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dropped: list[float] = []
    playout = Playout(
        16000,
        frame_ms=20,
        lead_ms=100,
        max_s=5.0,
        reader_queue_ms=200,
        metrics=Metrics(),
        on_reader_dropped=lambda: dropped.append(trio.current_time()),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(playout.run)
        t0 = trio.current_time()
        reader = playout.attach()
        await trio.sleep(1.0)  # never reads: the 10-frame queue overflows
        assert reader.dropped_slow
        # frames 0..9 fill the queue; frame 10 (t = 200 ms) does not fit
        assert [t - t0 for t in dropped] == pytest.approx([0.2])
        assert not playout.has_reader
        ticks = playout.ticks
        await trio.sleep(0.0)
        await playout.put(np.ones(1600, dtype=np.int16))
        await trio.sleep(0.5)
        assert playout.queued_samples == 0  # still paced out
        assert playout.ticks > ticks
        nursery.cancel_scope.cancel()


async def test_put_waits_for_space(autojump_clock: trio.testing.MockClock) -> None:
    playout = make(max_s=0.1)  # 1600 samples
    async with trio.open_nursery() as nursery:
        nursery.start_soon(playout.run)
        reader = playout.attach()
        nursery.start_soon(_drain, reader.receive)
        t0 = trio.current_time()
        await playout.put(np.ones(1600, dtype=np.int16))
        await playout.put(np.ones(1600, dtype=np.int16))
        # the second put waited until the fifth 320-sample frame (t = 4 * 20 ms) left
        assert trio.current_time() - t0 == pytest.approx(0.08)
        assert playout.flush() > 0
        nursery.cancel_scope.cancel()


async def _drain(receive: trio.MemoryReceiveChannel[bytes]) -> None:
    async for _ in receive:
        pass
