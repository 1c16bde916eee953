"""The process's models: loaded once, in the app's nursery, shared by every session.

Speech recognition and synthesis run on the embedded models (through the scheduler) or on
services that speak OpenAI's audio APIs (:class:`SpeechServices`); :meth:`ModelHub.transcribe`
and :meth:`ModelHub.synthesize` pick one, and fall back to the embedded model when told to.
"""

from __future__ import annotations

import functools
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
import trio

from app._config import TRANSCRIPTION_MODELS, VOICES
from app._errors import ApiError
from app._scheduler import Priority, Scheduler
from audio import EdgeFade
from models import ModelError, ModelPaths, ModelSet, load_models
from models.remote_audio import OpenAiStt, OpenAiTts, RemoteSettings
from models.stt import window_frames

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Hashable, Sequence

    import numpy as np

    from app._config import ServerConfig, SessionConfig
    from app._metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# Frames scored on the event loop rather than in a worker thread (ModelHub.infer_vad),
# in one model call (~0.6 ms for 4).
VAD_INLINE_FRAMES = 4

# "tail": the last seconds of a pause's audio, for its words' verdict only (a turn decision)
Kind = Literal["partial", "speculative", "final", "tail"]


@dataclass(frozen=True, slots=True)
class SpeechServices:
    """Which speech models are services, and how to reach them (from ServerConfig)."""

    stt: RemoteSettings | None = None
    stt_partials: Literal["local", "remote", "off"] = "local"
    stt_fallback: bool = False
    tts: RemoteSettings | None = None
    tts_voice: str = "alloy"  # sent while a session keeps the embedded voice
    tts_fallback: bool = False

    @classmethod
    def from_config(cls, c: ServerConfig) -> SpeechServices:
        def remote(url: str, key: str, model: str, timeout_s: float) -> RemoteSettings:
            return RemoteSettings(url, key, model, timeout_s=timeout_s)

        return cls(
            stt=remote(c.stt_base_url, c.stt_api_key, c.stt_remote_model, c.stt_timeout_s)
            if c.stt_backend == "openai"
            else None,
            stt_partials=c.stt_partials,  # type: ignore[arg-type]  # checked by ServerConfig
            stt_fallback=c.stt_fallback,
            tts=remote(c.tts_base_url, c.tts_api_key, c.tts_remote_model, c.tts_timeout_s)
            if c.tts_backend == "openai"
            else None,
            tts_voice=c.tts_remote_voice,
            tts_fallback=c.tts_fallback,
        )


class ModelHub:
    """Loads the models in a worker thread; their inference goes through one scheduler.

    STT, TTS and turn checks queue in :class:`app._scheduler.Scheduler` by priority, on
    worker threads sized to the cores, so sessions share the CPU instead of
    oversubscribing it. The VAD (0.1 ms a frame, on the barge-in path) keeps its own
    limiter and thread hop, so it never waits behind a decode.
    """

    def __init__(
        self,
        paths: ModelPaths,
        *,
        concurrency: int,
        metrics: Metrics,
        full_lag_s: float = 0.3,
        services: SpeechServices | None = None,
    ) -> None:
        self.paths = paths
        self.services = services or SpeechServices()
        self._stt: OpenAiStt | None = None
        self._tts: OpenAiTts | None = None
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
            device = self._models.device
            log.info(
                "models ready in %.1f s on %s (%s)",
                trio.current_time() - started,
                device.name,
                device.reason,
            )
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
        """The scheduler's workers and the speech services' connection pool (until
        cancelled), then the models' load."""
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            if self.services.stt is not None:
                self._stt = OpenAiStt(client, self.services.stt)
                log.info("speech recognition: %s", self._stt.label)
            if self.services.tts is not None:
                self._tts = OpenAiTts(client, self.services.tts)
                log.info("speech synthesis: %s", self._tts.label)
            await nursery.start(self.scheduler.run)
            await nursery.start(self.load)
            task_status.started()

    @property
    def remote_tts(self) -> bool:
        return self.services.tts is not None

    @property
    def remote_stt(self) -> bool:
        return self.services.stt is not None

    def partials_off(self) -> bool:
        return self.services.stt is not None and self.services.stt_partials == "off"

    async def transcribe(
        self,
        kind: Kind,
        audio: np.ndarray[Any, np.dtype[np.int16]],
        config: SessionConfig,
        *,
        key: Hashable | None = None,
    ) -> str:
        """A transcript of ``audio`` (16 kHz): remote when STT is a service (partials as
        ``stt_partials`` says), otherwise the embedded Whisper, batched with other
        sessions' decodes of the same kind and window.

        Raises:
            ModelError: the model or service failed (and no fallback was taken).
            Stale: a newer partial of the same ``key`` replaced this one.
        """
        partial = kind == "partial"
        remote = self._stt is not None and (not partial or self.services.stt_partials == "remote")
        if remote:
            assert self._stt is not None
            try:
                return await self._stt.transcribe(
                    audio,
                    # the embedded model's name means: the service's default
                    model=None
                    if config.transcription_model == TRANSCRIPTION_MODELS[0]
                    else config.transcription_model,
                    language=config.transcription_language or None,
                    prompt=config.transcription_prompt or None,
                )
            except ModelError as exc:
                self._metrics.model_errors.labels("stt").inc()
                if not self.services.stt_fallback:
                    raise
                log.warning("%s; falling back to the embedded model", exc)
                self._metrics.model_fallbacks.labels("stt").inc()
        priority = (
            Priority.PARTIAL if partial else Priority.TURN if kind == "tail" else Priority.FIRST
        )
        return await self.infer_batchable(
            "stt",
            priority,
            functools.partial(self.models.stt.transcribe_batch, retry=not partial),
            audio,
            # decodes waiting together from several sessions run as one batch; one window
            # size per batch keeps each text what it would be alone
            group=("stt", partial, window_frames(len(audio))),
            key=key,
        )

    async def synthesize(
        self, text: str, priority: Priority, config: SessionConfig
    ) -> AsyncGenerator[tuple[np.ndarray[Any, np.dtype[np.int16]], int], None]:
        """``text`` spoken, as ``(samples, rate)`` pieces as they come: one piece from the
        embedded voice, a stream from a service (its first audio before its last).

        Raises:
            ModelError: the model or service failed (and no fallback was taken).
        """
        if self._tts is not None:
            voice = self.services.tts_voice if config.voice == VOICES[0] else config.voice
            rate = self._tts.sample_rate
            fade = EdgeFade(rate)
            sent = False
            try:
                stream = self._tts.stream(text, voice=voice, speed=config.speed)
                async with aclosing(stream) as chunks:
                    async for chunk in chunks:
                        out = fade.feed(chunk)
                        if len(out):
                            sent = True
                            yield out, rate
                tail = fade.end()
                if len(tail):
                    yield tail, rate
                return
            except ModelError as exc:
                self._metrics.model_errors.labels("tts").inc()
                # (audio already played cannot be taken back: only a clean start falls back)
                if sent or not self.services.tts_fallback:
                    raise
                log.warning("%s; falling back to the embedded voice", exc)
                self._metrics.model_fallbacks.labels("tts").inc()
        tts = self.models.tts
        pcm = await self.infer("tts", priority, tts.synthesize, text, config.speed)
        yield pcm, tts.sample_rate

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

    async def infer_vad(self, fn: Callable[..., T], *args: Any, frames: int) -> T:
        """The VAD: ``fn(*args)`` scores ``frames`` frames; never queued behind a decode.

        Up to :data:`VAD_INLINE_FRAMES` frames are scored on the event loop: Silero takes
        ~0.13 ms a frame, and a worker-thread round trip costs the process 2-3 times that
        in wakeups and GIL hand-offs (~0.3-0.4 ms of CPU, bench/vad_hop.py), on every
        upload of every session. A longer backlog goes to a thread of its own limiter.
        """

        def timed() -> T:
            t0 = time.perf_counter()  # measures CPU work, not trio time
            try:
                return fn(*args)
            finally:
                self._metrics.inference_seconds.labels("vad").observe(time.perf_counter() - t0)

        try:
            if frames <= VAD_INLINE_FRAMES:
                await trio.lowlevel.checkpoint()
                return timed()
            return await trio.to_thread.run_sync(timed, limiter=self.vad_limiter)
        except ModelError:
            self._metrics.model_errors.labels("vad").inc()
            raise
