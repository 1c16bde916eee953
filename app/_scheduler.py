"""One inference scheduler for the process: every session's model jobs, by priority.

Sessions :meth:`Scheduler.submit` blocking model calls (a decode, a turn check, a
synthesis) with a :class:`Priority`; a fixed set of worker tasks, owned by the app's
nursery and sized to the cores, runs the most urgent queued job next, each in a worker
thread. So a partial transcript of one session never delays another session's final, and
the machine is never asked for more threads than it has cores.

- **Priorities.** Turn decisions first (one worker takes only those, so a decision never
  waits behind a decode), then final transcripts and the first piece of a reply, then
  later reply pieces, then partials. Within a priority, first come first served.
  Partials run on at most half the workers at once (their lane), and start only while
  no final or reply is running, so they never take the CPU a final needs; queued
  partials of several sessions share one call.
- **Stale jobs are dropped before they run.** A caller that is cancelled while its job is
  queued (a reply cut by barge-in, a turn that ended) takes the job out of the queue. A
  job submitted with a ``key`` replaces a queued job with the same key (a partial
  overtaken by a newer one); the replaced caller gets :class:`Stale`. A job already
  running cannot be interrupted: its caller stops waiting at once, the worker finishes it
  and drops the result.
- **Batching.** Queued jobs of the same batch group and priority run together as one
  call, up to ``max_batch`` (bench/batch.py: a Whisper batch of 2 does ~1.35x the
  decodes per core, 4 ~1.55x); a lone job never waits for company.
- **Load.** :meth:`lag` (how long urgent jobs wait) and :meth:`partial_stretch` let the
  sessions thin their partials before anything else slows down, and ``/readyz`` turn new
  sessions away while the process is full.

The queue is bounded (``max_queued``): past it, a submit fails with :class:`ModelError`,
which every caller already handles as a failed model call.
"""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import outcome
import trio

from models import ModelError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Sequence

    from app._metrics import Metrics

T = TypeVar("T")

WAIT_HALF_LIFE_S = 2.0  # the load signals forget a burst in a few seconds
WAIT_WEIGHT = 0.3  # weight of the newest wait in the running average


class Priority(enum.IntEnum):
    """Lower runs first."""

    TURN = 0  # end-of-turn and barge-in decisions
    FIRST = 1  # final transcripts, the first piece of a reply
    REPLY = 2  # later pieces of a reply
    PARTIAL = 3  # partial transcripts


class Stale(Exception):
    """The job was dropped before it ran: a newer job with the same key replaced it."""


class _State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False, slots=True)
class _Job(Generic[T]):
    priority: Priority
    seq: int
    model: str
    fn: Callable[[], T]
    key: Hashable | None
    submitted: float
    batch: Callable[[Sequence[Any]], Sequence[Any]] | None = None
    group: Hashable | None = None  # jobs of one group and priority may run as one batch
    item: Any = None
    state: _State = _State.QUEUED
    result: outcome.Outcome[T] | None = None
    done: trio.Event = field(default_factory=trio.Event)

    def __lt__(self, other: _Job[Any]) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)

    def finish(self, result: outcome.Outcome[Any]) -> None:
        self.state = _State.DONE
        self.result = result
        self.done.set()


@dataclass(slots=True)
class _Wait:
    """A running average of queue waits that decays toward zero while nothing is queued."""

    value: float = 0.0
    at: float = 0.0

    def read(self, now: float) -> float:
        return self.value * math.exp2(-max(0.0, now - self.at) / WAIT_HALF_LIFE_S)

    def add(self, now: float, wait: float) -> None:
        self.value = (1 - WAIT_WEIGHT) * self.read(now) + WAIT_WEIGHT * wait
        self.at = now


class Scheduler:
    """Runs model jobs from every session by priority (see the module doc).

    Args:
        workers: worker tasks for all priorities (one thread each): the cores.
        metrics: the process's metrics (queue depth, waits, drops, batch sizes).
        max_queued: jobs queued at most; past it a submit fails.
        max_batch: jobs run together at most in one batched call.
        full_lag_s: :attr:`full` once urgent jobs wait this long on average.
        partial_lanes: calls of partials running at once at most (default: half the
            workers, at least one), so partials can never hold every core: a final or a
            first reply waits at most for the call already running on its own lane.
    """

    def __init__(
        self,
        *,
        workers: int,
        metrics: Metrics,
        max_queued: int = 512,
        max_batch: int = 4,
        full_lag_s: float = 0.3,
        partial_lanes: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a scheduler needs at least one worker")
        self.workers = workers
        self.max_queued = max_queued
        self.max_batch = max_batch
        self.full_lag_s = full_lag_s
        self._metrics = metrics
        self._heap: list[_Job[Any]] = []
        self._queued = dict.fromkeys(Priority, 0)
        self._keys: dict[Hashable, _Job[Any]] = {}
        self._seq = itertools.count()
        self._work = trio.lowlevel.ParkingLot()
        self._urgent = trio.lowlevel.ParkingLot()
        self._waits = {p: _Wait() for p in Priority}
        self._lanes = {Priority.PARTIAL: partial_lanes or max(1, workers // 2)}
        self._busy = dict.fromkeys(Priority, 0)  # calls running, by priority
        self._running = False
        # one token per worker thread; trio's default limiter would let others share it
        self._threads = trio.CapacityLimiter(workers + 1)

    # -- the face sessions see ----------------------------------------------------------

    async def submit(
        self,
        model: str,
        priority: Priority,
        fn: Callable[..., T],
        *args: Any,
        key: Hashable | None = None,
    ) -> T:
        """Run ``fn(*args)`` in a worker thread when its turn comes; its result.

        Args:
            model: what runs, for the metrics (``"stt"``, ``"tts"``, ``"turn"``).
            priority: where it queues.
            fn: blocking code (a model call).
            key: a queued job with the same key is replaced by this one.

        Raises:
            Stale: a newer job with the same ``key`` replaced this one before it ran.
            ModelError: ``fn`` failed, or the queue is full.
        """
        return await self._submit(
            _Job(priority, next(self._seq), model, lambda: fn(*args), key, trio.current_time())
        )

    async def submit_batchable(
        self,
        model: str,
        priority: Priority,
        batch: Callable[[Sequence[Any]], Sequence[T]],
        item: Any,
        *,
        group: Hashable,
        key: Hashable | None = None,
    ) -> T:
        """Like :meth:`submit`, for ``batch([item])[0]``.

        Jobs of the same ``group`` and priority that are queued when one of them is taken
        run as one ``batch([...])`` call (the first one's ``batch``): the group says which
        items one call may hold (the same model and options, e.g. one window size). A lone
        job is never held back to fill a batch.
        """
        job: _Job[T] = _Job(
            priority,
            next(self._seq),
            model,
            lambda: batch([item])[0],
            key,
            trio.current_time(),
            batch=batch,
            group=group,
            item=item,
        )
        return await self._submit(job)

    def lag(self) -> float:
        """Seconds urgent jobs (turn decisions, finals, first pieces) wait now, averaged
        and decaying: also the age of the oldest one still queued."""
        now = trio.current_time()
        lag = max(self._waits[Priority.TURN].read(now), self._waits[Priority.FIRST].read(now))
        for job in self._heap:
            if job.state is _State.QUEUED and job.priority <= Priority.FIRST:
                lag = max(lag, now - job.submitted)
        return lag

    @property
    def full(self) -> bool:
        """Urgent work waits too long: new sessions should go to another process."""
        return self.lag() >= self.full_lag_s

    def load(self) -> float:
        """:meth:`lag` as a fraction of the full mark (1.0 and above: full)."""
        return self.lag() / self.full_lag_s

    def partial_stretch(self) -> float:
        """How much longer than usual to wait before the next partial: 1 when the
        scheduler keeps up, more as partials (then urgent jobs) wait, ``inf``: none now.

        Partials are the first thing to give: finals and first replies keep their
        latency because the CPU they would take goes to them.
        """
        now = trio.current_time()
        if self.lag() >= self.full_lag_s / 2:
            return math.inf
        wait = self._waits[Priority.PARTIAL].read(now)
        if wait >= 1.0:
            return math.inf
        return 1.0 + wait / 0.1  # +1 interval per 100 ms of waiting

    def queued(self, priority: Priority) -> int:
        return self._queued[priority]

    # -- the workers -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The worker tasks, until cancelled (the app's nursery owns this)."""
        async with trio.open_nursery() as nursery:
            for _ in range(self.workers):
                nursery.start_soon(self._worker, False)
            nursery.start_soon(self._worker, True)
            self._running = True
            task_status.started()

    async def _worker(self, urgent_only: bool) -> None:
        lot = self._urgent if urgent_only else self._work
        while True:
            jobs = self._take(urgent_only)
            if not jobs:
                await lot.park()
                continue
            now = trio.current_time()
            for job in jobs:
                job.state = _State.RUNNING
                wait = now - job.submitted
                self._waits[job.priority].add(now, wait)
                self._metrics.scheduler_wait.labels(job.priority.name.lower()).observe(wait)
            priority = jobs[0].priority
            self._busy[priority] += 1
            try:
                await self._run(jobs)
            finally:
                self._busy[priority] -= 1
            self._work.unpark()  # a partial held back by its lane may run now

    async def _run(self, jobs: list[_Job[Any]]) -> None:
        first = jobs[0]
        if len(jobs) == 1:
            call: Callable[[], Any] = first.fn
        else:
            batch, items = first.batch, [j.item for j in jobs]
            assert batch is not None
            call = functools.partial(batch, items)
            self._metrics.scheduler_batch.labels(first.model).observe(len(jobs))

        def timed() -> outcome.Outcome[Any]:
            t0 = time.perf_counter()  # CPU work in the thread, not trio time
            try:
                result: outcome.Outcome[Any] = outcome.capture(call)
                return result
            finally:
                self._metrics.inference_seconds.labels(first.model).observe(
                    time.perf_counter() - t0
                )

        result = await trio.to_thread.run_sync(timed, limiter=self._threads)
        if len(jobs) == 1:
            first.finish(result)
            return
        if isinstance(result, outcome.Error):
            for job in jobs:
                job.finish(result)
            return
        values = list(result.unwrap())
        for job, value in zip(jobs, values, strict=True):
            job.finish(outcome.Value(value))

    # -- the queue ---------------------------------------------------------------------

    async def _submit(self, job: _Job[T]) -> T:
        if not self._running:
            raise RuntimeError("the scheduler is not running")
        if sum(self._queued.values()) >= self.max_queued:
            self._metrics.scheduler_dropped.labels("full").inc()
            self._metrics.model_errors.labels(job.model).inc()
            raise ModelError(job.model, "the inference queue is full")
        if job.key is not None:
            old = self._keys.get(job.key)
            if old is not None and old.state is _State.QUEUED:
                self._unqueue(old, "stale")
                old.finish(outcome.Error(Stale()))
            self._keys[job.key] = job
        heapq.heappush(self._heap, job)
        self._count(job.priority, +1)
        if job.priority is Priority.TURN:
            self._urgent.unpark()
        self._work.unpark()
        try:
            await job.done.wait()
        except trio.Cancelled:
            if job.state is _State.QUEUED:
                self._unqueue(job, "cancelled")
            raise
        finally:
            if job.key is not None and self._keys.get(job.key) is job:
                del self._keys[job.key]
        assert job.result is not None
        try:
            value: T = job.result.unwrap()
        except ModelError:
            self._metrics.model_errors.labels(job.model).inc()
            raise
        return value

    def _take(self, urgent_only: bool) -> list[_Job[Any]]:
        """The next job (and those batched with it), or nothing."""
        heap = self._heap
        while heap and heap[0].state is not _State.QUEUED:
            heapq.heappop(heap)  # dropped while queued
        if not heap or (urgent_only and heap[0].priority is not Priority.TURN):
            return []
        if self._may_run(heap[0].priority):
            first = heapq.heappop(heap)
        else:  # the most urgent kind is at its cap: the next kind that is not
            eligible = (
                j for j in sorted(heap) if j.state is _State.QUEUED and self._may_run(j.priority)
            )
            found = next(eligible, None)
            if found is None:
                return []
            first = found
            first.state = _State.RUNNING  # (left in the heap: skipped when popped)
        self._count(first.priority, -1)
        jobs = [first]
        if first.batch is not None and self.max_batch > 1:
            for job in sorted(heap):
                if len(jobs) >= self.max_batch:
                    break
                if job.state is _State.QUEUED and job.group == first.group:
                    if job.priority is not first.priority:
                        continue
                    job.state = _State.RUNNING  # (left in the heap: skipped when popped)
                    self._count(job.priority, -1)
                    jobs.append(job)
        return jobs

    def _may_run(self, priority: Priority) -> bool:
        cap = self._lanes.get(priority)
        if cap is None:
            return True
        if priority is Priority.PARTIAL and (
            self._busy[Priority.FIRST] or self._busy[Priority.REPLY]
        ):
            # a partial starts only on idle cores: a final or a reply that is running
            # keeps the CPU to itself (queued partials wait, and so thin out)
            return False
        return self._busy[priority] < cap

    def _unqueue(self, job: _Job[Any], reason: str) -> None:
        job.state = _State.DONE  # (left in the heap: skipped when popped)
        self._count(job.priority, -1)
        self._metrics.scheduler_dropped.labels(reason).inc()

    def _count(self, priority: Priority, delta: int) -> None:
        self._queued[priority] += delta
        self._metrics.scheduler_queued.labels(priority.name.lower()).set(self._queued[priority])
