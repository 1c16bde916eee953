"""The process's models: loaded once, in the app's nursery, shared by every session."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from app._errors import ApiError
from models import ModelError, ModelPaths, ModelSet, load_models

if TYPE_CHECKING:
    from collections.abc import Callable

    from app._metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelHub:
    """Loads the models in a worker thread and runs inference under shared limiters.

    STT and TTS share one :class:`trio.CapacityLimiter` sized to the cores, so sessions queue
    for the CPU instead of oversubscribing it; the VAD (0.1 ms a frame, on the barge-in
    path) has its own, so it never waits behind a Whisper decode.
    """

    def __init__(self, paths: ModelPaths, *, concurrency: int, metrics: Metrics) -> None:
        self.paths = paths
        self.limiter = trio.CapacityLimiter(concurrency)
        self.vad_limiter = trio.CapacityLimiter(2)
        # end-of-turn checks decide when a reply starts: never behind a decode either
        self.turn_limiter = trio.CapacityLimiter(1)
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

    async def infer(
        self,
        model: str,
        fn: Callable[..., T],
        *args: Any,
        limiter: trio.CapacityLimiter,
        abandon_on_cancel: bool = False,
    ) -> T:
        """Run ``fn(*args)`` in a worker thread; time it; count failures.

        Cancellation: a decode cannot be interrupted. By default the caller waits for the
        thread and is cancelled at its next checkpoint; with ``abandon_on_cancel`` it
        returns at once and the result is dropped (the thread still holds its limiter
        token until it ends).
        """

        def timed() -> T:
            t0 = time.perf_counter()  # measures CPU work in the thread, not trio time
            try:
                return fn(*args)
            finally:
                self._metrics.inference_seconds.labels(model).observe(time.perf_counter() - t0)

        try:
            return await trio.to_thread.run_sync(
                timed, limiter=limiter, abandon_on_cancel=abandon_on_cancel
            )
        except ModelError:
            self._metrics.model_errors.labels(model).inc()
            raise
