"""The inference scheduler's wiring: order, the urgent lane, drops, batches, load signals.

Jobs are small blocking functions in real worker threads, held by ``threading.Event``s, so
the order the scheduler chose is observed exactly; no model runs here (the end-to-end
tests run the real ones through it).
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from app._metrics import Metrics
from app._scheduler import Priority, Scheduler, Stale
from models import ModelError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence


class Gate:
    """A job that blocks its worker thread until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> str:
        self.entered.set()
        if not self.release.wait(10):
            raise RuntimeError("gate never opened")
        return "gate"


async def entered(gate: Gate) -> None:
    await trio.to_thread.run_sync(gate.entered.wait, 10)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def one_worker(metrics: Metrics) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(workers=1, metrics=metrics, max_queued=8)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        yield scheduler
        nursery.cancel_scope.cancel()


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


async def until_queued(s: Scheduler, priority: Priority, n: int) -> None:
    while s.queued(priority) < n:
        await trio.lowlevel.checkpoint()  # (no sleep: some tests stop the clock)


async def test_the_most_urgent_queued_job_runs_next(one_worker: Scheduler) -> None:
    ran: list[str] = []
    gate = Gate()

    async def job(name: str, priority: Priority) -> None:
        await one_worker.submit("stt", priority, ran.append, name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_worker.submit, "stt", Priority.FIRST, gate)
        await entered(gate)
        for name, priority in [
            ("partial", Priority.PARTIAL),
            ("reply", Priority.REPLY),
            ("final-1", Priority.FIRST),
            ("final-2", Priority.FIRST),
        ]:
            nursery.start_soon(job, name, priority)
            await until_queued(one_worker, priority, 1 if name != "final-2" else 2)
        gate.release.set()
    assert ran == ["final-1", "final-2", "reply", "partial"]


async def test_a_turn_decision_never_waits_behind_a_decode(one_worker: Scheduler) -> None:
    gate = Gate()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_worker.submit, "stt", Priority.FIRST, gate)
        await entered(gate)
        with trio.fail_after(5):  # the general worker is blocked: the urgent lane runs it
            assert await one_worker.submit("turn", Priority.TURN, lambda: 0.9) == 0.9
        gate.release.set()


async def test_a_cancelled_queued_job_never_runs(one_worker: Scheduler, metrics: Metrics) -> None:
    gate = Gate()
    ran: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_worker.submit, "tts", Priority.FIRST, gate)
        await entered(gate)
        with trio.CancelScope() as scope:
            nursery.start_soon(one_worker.submit, "tts", Priority.REPLY, ran.append, "x")
            await until_queued(one_worker, Priority.REPLY, 1)
            scope.cancel()
        # (the job's task is the nursery's; cancel it the way a barge-in cancels a reply)
        nursery.cancel_scope.cancel()
        gate.release.set()
    await trio.sleep(0.05)
    assert ran == []
    assert one_worker.queued(Priority.REPLY) == 0
    assert value(metrics, "voxwire_scheduler_dropped_total", reason="cancelled") == 1


async def test_a_newer_job_with_the_same_key_replaces_a_queued_one(
    one_worker: Scheduler, metrics: Metrics
) -> None:
    gate = Gate()
    ran: list[str] = []
    outcomes: list[str] = []

    async def partial(name: str) -> None:
        try:
            await one_worker.submit("stt", Priority.PARTIAL, ran.append, name, key="s1")
        except Stale:
            outcomes.append(f"{name} stale")
        else:
            outcomes.append(f"{name} ran")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_worker.submit, "stt", Priority.FIRST, gate)
        await entered(gate)
        nursery.start_soon(partial, "old")
        await until_queued(one_worker, Priority.PARTIAL, 1)
        nursery.start_soon(partial, "new")
        while not outcomes:  # the old one is told at once
            await trio.lowlevel.checkpoint()
        gate.release.set()
    assert ran == ["new"]
    assert outcomes == ["old stale", "new ran"]
    assert value(metrics, "voxwire_scheduler_dropped_total", reason="stale") == 1


async def test_queued_jobs_of_one_batch_function_run_as_one_call(
    one_worker: Scheduler, metrics: Metrics
) -> None:
    calls: list[list[str]] = []

    def upper(items: Sequence[str]) -> list[str]:
        calls.append(list(items))
        return [i.upper() for i in items]

    gate = Gate()
    results: dict[str, str] = {}

    async def job(item: str, priority: Priority = Priority.FIRST) -> None:
        results[item] = await one_worker.submit_batchable(
            "stt", priority, upper, item, group="upper"
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_worker.submit, "stt", Priority.FIRST, gate)
        await entered(gate)
        for item in ("a", "b", "c"):
            nursery.start_soon(job, item)
        nursery.start_soon(job, "p", Priority.PARTIAL)  # another priority: not with them
        await until_queued(one_worker, Priority.FIRST, 3)
        await until_queued(one_worker, Priority.PARTIAL, 1)
        gate.release.set()
    assert sorted(calls[0]) == ["a", "b", "c"]  # (trio starts tasks in any order)
    assert calls[1:] == [["p"]]
    assert results == {"a": "A", "b": "B", "c": "C", "p": "P"}
    assert value(metrics, "voxwire_scheduler_batch_size_count", model="stt") == 1


async def test_a_failure_reaches_its_caller_and_the_worker_goes_on(one_worker: Scheduler) -> None:
    def broken() -> None:
        raise ModelError("stt", "bad input")

    with pytest.raises(ModelError, match="bad input"):
        await one_worker.submit("stt", Priority.FIRST, broken)
    assert await one_worker.submit("stt", Priority.FIRST, lambda: 7) == 7


async def test_a_full_queue_refuses_with_a_model_error(one_worker: Scheduler) -> None:
    gate = Gate()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_worker.submit, "stt", Priority.FIRST, gate)
        await entered(gate)
        for _ in range(one_worker.max_queued):
            nursery.start_soon(one_worker.submit, "stt", Priority.PARTIAL, lambda: None)
        await until_queued(one_worker, Priority.PARTIAL, one_worker.max_queued)
        with pytest.raises(ModelError, match="queue is full"):
            await one_worker.submit("stt", Priority.FIRST, lambda: None)
        gate.release.set()


async def test_waiting_urgent_work_makes_the_process_full_and_stops_partials(
    metrics: Metrics, mock_clock: trio.testing.MockClock
) -> None:
    scheduler = Scheduler(workers=1, metrics=metrics, full_lag_s=0.3)
    gate = Gate()
    async with trio.open_nursery() as owner:
        await owner.start(scheduler.run)
        async with trio.open_nursery() as nursery:
            assert scheduler.partial_stretch() == 1.0
            assert not scheduler.full
            nursery.start_soon(scheduler.submit, "stt", Priority.FIRST, gate)
            await entered(gate)
            nursery.start_soon(scheduler.submit, "stt", Priority.FIRST, lambda: None)
            await until_queued(scheduler, Priority.FIRST, 1)
            mock_clock.jump(0.2)  # a final has waited 200 ms: no partials, not full yet
            assert scheduler.partial_stretch() == math.inf
            assert not scheduler.full
            mock_clock.jump(0.2)
            assert scheduler.full
            assert scheduler.load() >= 1.0
            gate.release.set()
        owner.cancel_scope.cancel()
    # the wait is remembered, then forgotten as time passes with nothing queued
    assert scheduler.lag() > 0.1
    mock_clock.jump(20)
    assert scheduler.lag() < 0.01
    assert scheduler.partial_stretch() == 1.0
    assert not scheduler.full


async def test_partials_that_wait_thin_out(
    metrics: Metrics, mock_clock: trio.testing.MockClock
) -> None:
    scheduler = Scheduler(workers=1, metrics=metrics)
    gate = Gate()
    async with trio.open_nursery() as owner:
        await owner.start(scheduler.run)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.submit, "stt", Priority.PARTIAL, gate)
            await entered(gate)
            nursery.start_soon(scheduler.submit, "stt", Priority.PARTIAL, lambda: None)
            await until_queued(scheduler, Priority.PARTIAL, 1)
            mock_clock.jump(0.5)
            gate.release.set()
        owner.cancel_scope.cancel()
    stretch = scheduler.partial_stretch()
    assert 1.0 < stretch < math.inf  # a 500 ms wait (weighted): further apart, not none


async def test_partials_keep_to_their_lane_so_a_final_finds_a_free_worker(
    metrics: Metrics,
) -> None:
    scheduler = Scheduler(workers=2, metrics=metrics)  # partials: one lane of two
    gate = Gate()
    ran: list[str] = []
    async with trio.open_nursery() as owner:
        await owner.start(scheduler.run)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.submit, "stt", Priority.PARTIAL, gate)
            await entered(gate)
            nursery.start_soon(scheduler.submit, "stt", Priority.PARTIAL, ran.append, "p2")
            await until_queued(scheduler, Priority.PARTIAL, 1)
            with trio.fail_after(5):  # the second worker is free for it, not for p2
                await scheduler.submit("stt", Priority.FIRST, ran.append, "final")
            assert ran == ["final"]
            assert scheduler.queued(Priority.PARTIAL) == 1  # held by the lane, not lost
            gate.release.set()
        owner.cancel_scope.cancel()
    assert ran == ["final", "p2"]


async def test_a_partial_waits_while_a_final_runs(metrics: Metrics) -> None:
    scheduler = Scheduler(workers=2, metrics=metrics)
    gate = Gate()
    ran: list[str] = []
    async with trio.open_nursery() as owner:
        await owner.start(scheduler.run)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.submit, "stt", Priority.FIRST, gate)
            await entered(gate)
            nursery.start_soon(scheduler.submit, "stt", Priority.PARTIAL, ran.append, "p")
            await until_queued(scheduler, Priority.PARTIAL, 1)
            await trio.sleep(0.05)  # a worker is free, and still it waits
            assert ran == []
            gate.release.set()
        owner.cancel_scope.cancel()
    assert ran == ["p"]
