"""Native memory: glibc's freed heap pages go back to the OS, on trio's clock."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest
import trio
import trio.testing

from app import _memory
from app._memory import malloc_trim, trim_periodically

if TYPE_CHECKING:
    from tests.conftest import StartServer

glibc_only = pytest.mark.skipif(_memory._LIBC is None, reason="needs glibc's malloc_trim")


@glibc_only
def test_malloc_trim_returns_fragmented_heap_to_the_os() -> None:
    """The soak's pattern in miniature: many blocks freed, one still held at the top of
    the heap, so glibc cannot shrink the heap by itself and RSS stays up until a trim."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 4096, 40_000  # ~160 MB, each block below the mmap threshold
    malloc_trim()
    blocks = []
    for _ in range(count):
        p = libc.malloc(block)
        assert p
        ctypes.memset(p, 1, block)  # touch it: resident
        blocks.append(p)
    process = psutil.Process()
    for p in blocks[:-1]:
        libc.free(p)
    held = process.memory_info().rss
    try:
        assert malloc_trim() is True
        trimmed = process.memory_info().rss
    finally:
        libc.free(blocks[-1])
    assert held - trimmed > 100 * 2**20, (held, trimmed)


async def test_trims_run_every_interval_on_trios_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[tuple[float, bool]](8)
    results = iter([True, False, True])

    def fake_trim() -> bool:
        return next(results)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: trim_periodically(
                10.0,
                trim=fake_trim,
                on_trim=lambda released: send.send_nowait((trio.current_time(), released)),
                task_status=task_status,
            )
        )
        seen = [await receive.receive() for _ in range(3)]
        nursery.cancel_scope.cancel()
    assert [(t - start, r) for t, r in seen] == [(10.0, True), (20.0, False), (30.0, True)]


async def test_zero_interval_means_off() -> None:
    calls = []
    with trio.move_on_after(1) as scope:
        await trim_periodically(0, trim=lambda: calls.append(1) or True)
    assert not scope.cancelled_caught, "an interval of 0 must return at once"
    assert calls == []


@glibc_only
async def test_server_trims_and_counts_it(start_server: StartServer) -> None:
    running = await start_server(malloc_trim_interval_s=0.05)
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:

        async def trims() -> float:
            text = (await client.get("/metrics")).text
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("voxwire_malloc_trims_total{")
            )

        with trio.fail_after(10):
            while await trims() < 2:  # noqa: ASYNC110 - polling the server over HTTP
                await trio.sleep(0.05)
