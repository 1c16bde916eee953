"""The process's models: loaded once, in the app's nursery, shared by every session."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from app._errors import ApiError
from app._scheduler import Priority, Scheduler
from models import ModelError, ModelPaths, ModelSet, load_models

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Sequence

    from app._metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelHub:
    """Loads the models in a worker thread; their inference goes through one scheduler.

    STT, TTS and turn checks queue in :class:`app._scheduler.Scheduler` by priority, on
    worker threads sized to the cores, so sessions share the CPU instead of
    oversubscribing it. The VAD (0.1 ms a frame, on the barge-in path) keeps its own
    limiter and thread hop, so it never waits behind a decode.
    """

    def __init__(
        self, paths: ModelPaths, *, concurrency: int, metrics: Metrics, full_lag_s: float = 0.3
    ) -> None:
        self.paths = paths
        self.vad_limiter = trio.CapacityLimiter(2)
        self.scheduler = Scheduler(workers=concurrency, metrics=metrics, full_lag_s=full_lag_s)
        self._metrics = metrics
        self._models: ModelSet | None = None
        self.error: str | None = None
        self._done = trio.Event()

    @property
    def models(self) -> ModelSet:
        if self._models is None:
            raise RuntimeError("models are not loaded")
        return self._models

    async def load(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load and warm the models; failures leave the server unready, not dead."""
        task_status.started()
        started = trio.current_time()
        try:
            self._models = await trio.to_thread.run_sync(load_models, self.paths)
        except ModelError as exc:
            self.error = exc.message
            log.error("loading models failed: %s", self.error)
        else:
            self._metrics.models_ready.set(1)
            log.info("models ready in %.1f s", trio.current_time() - started)
        finally:
            self._done.set()

    async def wait_ready(self, timeout_s: float) -> ModelSet:
        """The models, waiting up to ``timeout_s`` for the initial load.

        Raises:
            ApiError: 503 with ``Retry-After`` when loading failed or is still running.
        """
        with trio.move_on_after(timeout_s):
            await self._done.wait()
        error = self.unavailable()
        if error is not None:
            raise error
        return self.models

    def unavailable(self) -> ApiError | None:
        """The 503 to answer while the models are not ready (``None`` once they are)."""
        if self._models is not None:
            return None
        if self.error is not None:
            return ApiError(
                503,
                "models_unavailable",
                f"the models failed to load: {self.error}",
                error_type="server_error",
                headers={"Retry-After": "30"},
            )
        return ApiError(
            503,
            "models_loading",
            "the models are still loading",
            error_type="server_error",
            headers={"Retry-After": "2"},
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The scheduler's workers (until cancelled), then the models' load."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.scheduler.run)
            await nursery.start(self.load)
            task_status.started()

    async def infer(
        self,
        model: str,
        priority: Priority,
        fn: Callable[..., T],
        *args: Any,
        key: Hashable | None = None,
    ) -> T:
        """``fn(*args)`` through the scheduler (which counts failures by model).

        Cancellation: a queued job is dropped; a running one is finished by its worker
        and its result dropped (the caller returns at once).

        Raises:
            ModelError: the model failed (or the queue is full).
            Stale: a newer job with the same ``key`` replaced this one.
        """
        return await self.scheduler.submit(model, priority, fn, *args, key=key)

    async def infer_batchable(
        self,
        model: str,
        priority: Priority,
        batch: Callable[[Sequence[Any]], Sequence[T]],
        item: Any,
        *,
        group: Hashable,
        key: Hashable | None = None,
    ) -> T:
        """``batch([item])[0]``, batched with queued jobs of the same ``group``."""
        return await self.scheduler.submit_batchable(
            model, priority, batch, item, group=group, key=key
        )

    async def infer_vad(self, fn: Callable[..., T], *args: Any) -> T:
        """The VAD, in a thread of its own limiter: never queued behind a decode."""

        def timed() -> T:
            t0 = time.perf_counter()  # measures CPU work in the thread, not trio time
            try:
                return fn(*args)
            finally:
                self._metrics.inference_seconds.labels("vad").observe(time.perf_counter() - t0)

        try:
            return await trio.to_thread.run_sync(timed, limiter=self.vad_limiter)
        except ModelError:
            self._metrics.model_errors.labels("vad").inc()
            raise
