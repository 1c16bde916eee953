"""One voice session: its nursery, channels, upload ingest, playout and events."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from werkzeug.exceptions import RequestEntityTooLarge

from app._config import ServerConfig, SessionConfig, validate_session_config
from app._conversation import Conversation, Item, spoken_prefix
from app._errors import ApiError
from app._events import EventLog
from app._pipeline import (
    FRAME_SAMPLES,
    PIPELINE_RATE,
    Control,
    Deps,
    Frame,
    Pipeline,
)
from app._playout import Playout, StreamStart
from app._realtime import ga_session
from audio import AudioChunk, Framer, PcmDecoder, StreamResampler

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import numpy as np

    from app._metrics import Metrics
    from app._models import ModelHub
    from app._responders import Responders
    from app.stages.messages import ResponseSpec

log = logging.getLogger(__name__)

MAX_PIECE_SAMPLES = 8192  # ingest items stay small whatever the HTTP chunking


@dataclass(frozen=True, slots=True)
class PcmFormat:
    """What an upload's Content-Type said: the rate and the byte order of PCM16 mono."""

    sample_rate: int
    big_endian: bool = False


@dataclass(frozen=True, slots=True)
class UploadResult:
    """What an upload did: bytes taken, and the sequence state after it."""

    accepted_bytes: int
    duplicate: bool = False
    acked_sequence: int | None = None


class BodyMeter:
    """An upload body's size cap and minimum rate, fed chunk sizes (sans-IO).

    The rate is averaged over consecutive windows of ``window_s``: a body slower than
    ``min_bytes_per_s`` over one of them is a slowloris (408).
    """

    def __init__(self, limit: int, window_s: float, min_bytes_per_s: float, now: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.min_bytes_per_s = min_bytes_per_s
        self.total = 0
        self._window_start = now
        self._window_bytes = 0

    def feed(self, nbytes: int, now: float) -> None:
        """Count a chunk that arrived at ``now``.

        Raises:
            ApiError: 408 ``upload_too_slow``, 413 ``upload_too_large``.
        """
        self.total += nbytes
        self._window_bytes += nbytes
        elapsed = now - self._window_start
        if elapsed >= self.window_s:
            if self._window_bytes < self.min_bytes_per_s * elapsed:
                raise ApiError(
                    408,
                    "upload_too_slow",
                    f"the body averaged under {self.min_bytes_per_s:g} bytes/s for "
                    f"{self.window_s:g} s",
                )
            self._window_start, self._window_bytes = now, 0
        if self.total > self.limit:
            raise ApiError(
                413, "upload_too_large", f"upload bodies are limited to {self.limit} bytes"
            )


class UploadBody:
    """One upload_audio body being taken, fed as it arrives (:meth:`Session.open_upload`).

    Either HTTP path drives it: app/_connection.py feeds chunks as h11 parses them, in
    the connection's task; the Quart route reads them with :meth:`consume`. A body without
    ``X-Sequence`` is decoded and handed to ingest chunk by chunk (what arrived before an
    error stays); a sequenced one is held whole and applied at its end, exactly once.
    """

    def __init__(self, session: Session, fmt: PcmFormat, sequence: int | None, limit: int) -> None:
        srv = session._server
        self._session = session
        self._fmt = fmt
        self._sequence = sequence
        self._meter = BodyMeter(
            limit, srv.upload_idle_timeout_s, srv.upload_min_bytes_per_s, trio.current_time()
        )
        self._held = bytearray() if sequence is not None else None
        self._decoder = session._decoder_for(fmt) if sequence is None else None
        self.accepted = 0  # bytes of this body handed to ingest
        self.idle_timeout_s = srv.upload_idle_timeout_s
        self._open = True

    def reject(self, error: ApiError) -> ApiError:
        """``error``, telling the client how much of a streamed body was kept (so it can
        resume after it)."""
        if self._held is None:
            error.headers["X-Accepted-Bytes"] = str(self.accepted)
        return error

    def idle(self) -> ApiError:
        """The 408 for a body that sent nothing for the idle timeout."""
        return self.reject(
            ApiError(408, "upload_idle_timeout", f"no body data for {self.idle_timeout_s:g} s")
        )

    async def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body.

        Raises:
            ApiError: 408 too slow, 413 caps, 429 backpressure, 404 session ended.
        """
        try:
            self._meter.feed(len(chunk), trio.current_time())
            if self._held is not None:
                self._held.extend(chunk)
                return
            assert self._decoder is not None
            session, rate = self._session, self._fmt.sample_rate
            samples = self._decoder.feed(chunk)
            session._check_session_cap(len(samples), rate)
            for start in range(0, len(samples), MAX_PIECE_SAMPLES):
                piece = samples[start : start + MAX_PIECE_SAMPLES]
                await session._send_audio(piece, rate)
                self.accepted += 2 * len(piece)
                session._accept(2 * len(piece))
        except ApiError as error:
            raise self.reject(error) from None

    async def finish(self) -> UploadResult:
        """The body has ended: apply a sequenced body; what the upload did.

        Raises:
            ApiError: as :meth:`feed`.
        """
        if self._held is None:
            return UploadResult(self.accepted)
        session, data = self._session, self._held
        expected = session._next_sequence
        assert self._sequence is not None
        if self._sequence < expected:  # a retry of something we already hold
            return UploadResult(0, duplicate=True, acked_sequence=expected - 1)
        decoder = session._decoder_for(self._fmt)
        carry_before = decoder.pending_bytes
        samples = decoder.feed(bytes(data))
        session._check_session_cap(len(samples), self._fmt.sample_rate)
        if len(samples):
            try:
                await session._send_audio(samples, self._fmt.sample_rate)
            except ApiError:
                # Not taken: forget the bytes so a retry of this sequence starts clean.
                session._decoder = None
                raise
        session._accept(len(data) + carry_before - decoder.pending_bytes)
        session._next_sequence = expected + 1
        return UploadResult(len(data), acked_sequence=expected)

    async def consume(self, body: AsyncIterator[bytes]) -> UploadResult:
        """Read ``body`` to its end (Quart's request body), then :meth:`finish`.

        One cancel scope bounds the wait for every chunk (its deadline moves on with each
        one; it is off while :meth:`feed` runs, which has timeouts of its own).

        Raises:
            ApiError: as :meth:`feed`; 408 idle, 413 over Quart's backlog cap.
        """
        chunks = aiter(body)
        with trio.CancelScope() as idle:
            while True:
                idle.deadline = trio.current_time() + self.idle_timeout_s
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except RequestEntityTooLarge:
                    raise self.reject(
                        ApiError(
                            413,
                            "upload_backlog_exceeded",
                            "request body arrived faster than it could be consumed",
                        )
                    ) from None
                idle.deadline = math.inf
                await self.feed(chunk)
        if idle.cancelled_caught:
            raise self.idle()
        return await self.finish()

    def close(self) -> None:
        """Release the session's upload lock (once; in the task that opened the body)."""
        if self._open:
            self._open = False
            self._session._upload_lock.release()


@dataclass(slots=True)
class SessionStats:
    bytes_in: int = 0
    bytes_out: int = 0
    frames: int = 0
    uploads: int = 0
    throttled: int = 0
    turns: int = 0


class Session:
    """A session: everything it runs lives in the nursery opened by :meth:`run`."""

    def __init__(
        self,
        session_id: str,
        token: str,
        config: SessionConfig,
        server: ServerConfig,
        metrics: Metrics,
        hub: ModelHub,
        responders: Responders,
    ) -> None:
        self.id = session_id
        self.token = token
        self.config = config
        self._server = server
        self._metrics = metrics
        self._hub = hub
        self.created_at = trio.current_time()
        self.last_activity = self.created_at
        self.open_requests = 0
        self.stats = SessionStats()
        self.state = "starting"
        self.beta = False  # its creation asked for the beta event names (OpenAI-Beta)
        self.events = EventLog(server.event_replay_size)
        self.playout = Playout(
            config.output_sample_rate,
            frame_ms=server.playout_frame_ms,
            lead_ms=server.playout_lead_ms,
            max_s=server.playout_max_s,
            reader_queue_ms=server.reader_queue_ms,
            resume_ms=server.stream_resume_ms,
            write_frames=max(1, server.stream_write_ms // server.playout_frame_ms),
            metrics=metrics,
            on_reader_dropped=self._reader_dropped,
        )
        self._ingest_send, self._ingest_recv = trio.open_memory_channel[AudioChunk | Control](
            server.ingest_queue_chunks
        )
        self._frames_send, self._frames_recv = trio.open_memory_channel[Frame | Control](
            server.frame_queue_frames
        )
        self.latest_frame: str | None = None  # data URL of the last upload_frame
        self.pipeline = Pipeline(
            Deps(
                events=self.events,
                playout=self.playout,
                hub=hub,
                server=server,
                metrics=metrics,
                config=lambda: self.config,
                conversation=Conversation(server.max_history_items),
                responders=responders,
                take_frame=self.take_frame,
                on_turn=self._count_turn,
            )
        )
        self._upload_lock = trio.Lock()
        self._decoder: PcmDecoder | None = None
        self._decoder_format: PcmFormat | None = None
        self._next_sequence = 0
        self._cancel_scope = trio.CancelScope()
        self.closed = trio.Event()

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the session's tasks until :meth:`close`.

        Cancellation: cancelling ends every task of the session; streams end cleanly.
        """
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._ingest_task, self._ingest_recv, self._frames_send)
                    nursery.start_soon(self.pipeline.run, self._frames_recv)
                    nursery.start_soon(self.playout.run)
                    self.state = "active"
                    self.events.emit("session.created", session=self.describe())
                    task_status.started()
        except Exception:
            # A bug, not a model error (those fail one response). Tell the client before
            # the log closes; the registry ends only this session.
            error = ApiError(
                500, "session_failed", "the session failed and was ended", error_type="server_error"
            )
            self.events.emit("error", error=error.error_object())
            raise
        finally:
            self.state = "closed"
            self.playout.stop()
            self.events.close()
            self._ingest_send.close()
            self.closed.set()

    def close(self) -> None:
        """End the session: cancel its tasks, end its streams."""
        self.playout.stop()
        self.events.close()
        self._cancel_scope.cancel()

    def end_streams(self) -> None:
        """End open responses cleanly (graceful shutdown) without ending the session."""
        self.playout.stop()
        self.events.end_readers()

    @contextmanager
    def request(self) -> Iterator[None]:
        """Mark a request in progress (the reaper leaves busy sessions alone)."""
        self.begin_request()
        try:
            yield
        finally:
            self.end_request()

    def begin_request(self) -> None:
        """:meth:`request` in two calls (for app/routes/audio.py's ``UploadRequest``)."""
        self.open_requests += 1
        self.last_activity = trio.current_time()

    def end_request(self) -> None:
        self.open_requests -= 1
        self.last_activity = trio.current_time()

    def describe(self) -> dict[str, Any]:
        """Public JSON view: the GA session object, with voxwire's flat config and live
        stats."""
        s = self.stats
        return ga_session(
            self.config,
            {
                "id": self.id,
                "state": self.state,
                "age_s": round(trio.current_time() - self.created_at, 3),
                "stats": {
                    "bytes_in": s.bytes_in,
                    "bytes_out": s.bytes_out,
                    "audio_in_ms": round(1000 * s.frames * FRAME_SAMPLES / PIPELINE_RATE),
                    "uploads": s.uploads,
                    "throttled": s.throttled,
                    "turns": s.turns,
                    "responding": self.pipeline.responding,
                    "streaming": self.playout.has_reader,
                    "next_sequence": self._next_sequence,
                },
            },
        )

    def check_config(self, patch: object, base: SessionConfig | None = None) -> SessionConfig:
        """Validate a session.update over ``base`` (the current config) without applying it.

        Raises:
            ApiError: 422 naming the field; 503 when the new responder needs the models and
                they are not loaded.
        """
        config = validate_session_config(
            patch, base or self.config, update=True, caps=self._server.caps()
        )
        error = None if config.responder == "loopback" else self._hub.unavailable()
        if error is not None:
            raise error
        return config

    def apply_config(self, config: SessionConfig) -> None:
        """Apply a config from :meth:`check_config`; emits ``session.updated``."""
        self.config = config
        self.events.emit("session.updated", session=self.describe())

    def update_config(self, patch: object) -> SessionConfig:
        """Validate and apply a session.update; emits ``session.updated``."""
        self.apply_config(self.check_config(patch))
        return self.config

    def check_responses(self, count: int) -> None:
        """Whether ``count`` response.create events can be taken now (nothing applied).

        Raises:
            ApiError: 503 while the models are not loaded (a reply needs the voice);
                409 when a response is already in progress (or asked for), as in OpenAI
                Realtime: one response at a time.
        """
        error = self._hub.unavailable()
        if error is not None:
            raise error
        if count > 1 or self.pipeline.responses.busy():
            raise ApiError(
                409,
                "conversation_already_has_active_response",
                "a response is already in progress; wait for its response.done "
                "(or send response.cancel)",
            )
        if not self.pipeline.responses.ready():
            raise self._busy("pipeline_busy", "the session is starting; retry shortly")

    # -- upload ----------------------------------------------------------------------

    async def open_upload(
        self, fmt: PcmFormat, *, sequence: int | None, content_length: int | None
    ) -> UploadBody:
        """Start taking one upload_audio body: what its headers allow, and the session's
        upload lock (waited for at most the backpressure timeout).

        The caller feeds the body to the :class:`UploadBody` as it arrives, in the same
        task, and closes it.

        Raises:
            ApiError: 409 concurrent upload or sequence gap, 413 ``Content-Length``.
        """
        srv = self._server
        limit = srv.max_upload_request_bytes if sequence is None else srv.max_sequenced_upload_bytes
        if content_length is not None and content_length > limit:
            raise ApiError(
                413,
                "upload_too_large",
                f"upload bodies are limited to {limit} bytes",
                param="Content-Length",
            )
        try:
            self._upload_lock.acquire_nowait()  # the usual case: no timer needed
        except trio.WouldBlock:
            acquired = False
            with trio.move_on_after(srv.upload_backpressure_timeout_s):
                await self._upload_lock.acquire()
                acquired = True
            if not acquired:
                raise ApiError(
                    409,
                    "upload_in_progress",
                    "another upload to this session is still running",
                    headers={"Retry-After": str(srv.retry_after_s)},
                ) from None
        self.stats.uploads += 1
        if sequence is not None and sequence > self._next_sequence:
            self._upload_lock.release()
            raise ApiError(
                409,
                "sequence_gap",
                f"expected X-Sequence {self._next_sequence}, got {sequence}",
                param="X-Sequence",
            )
        return UploadBody(self, fmt, sequence, limit)

    def _decoder_for(self, fmt: PcmFormat) -> PcmDecoder:
        if self._decoder is None or self._decoder_format != fmt:
            self._decoder = PcmDecoder(big_endian=fmt.big_endian)
            self._decoder_format = fmt
        return self._decoder

    def _check_session_cap(self, new_samples: int, rate: int) -> None:
        in_s = self.stats.frames * FRAME_SAMPLES / PIPELINE_RATE + new_samples / rate
        if in_s > self._server.max_session_audio_s:
            raise ApiError(
                413,
                "session_audio_limit",
                f"a session accepts at most {self._server.max_session_audio_s:g} s of audio",
            )

    async def _to_ingest(self, item: AudioChunk | Control) -> bool:
        """Hand ``item`` to ingest; ``False`` if it did not fit within the backpressure
        timeout.

        Raises:
            ApiError: 404 when the session has ended.
        """
        try:
            try:
                self._ingest_send.send_nowait(item)  # the usual case: no timer needed
                return True
            except trio.WouldBlock:
                pass
            with trio.move_on_after(self._server.upload_backpressure_timeout_s):
                await self._ingest_send.send(item)
                return True
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ApiError(404, "session_not_found", "The session ended.") from None

    async def _send_audio(self, samples: np.ndarray[Any, np.dtype[np.int16]], rate: int) -> None:
        """Hand samples to ingest, waiting at most the backpressure timeout."""
        if await self._to_ingest(AudioChunk(samples, rate)):
            return
        self.stats.throttled += 1
        self._metrics.upload_throttled.inc()
        raise self._busy("upload_backpressure", "the session is not keeping up; retry shortly")

    def _busy(self, code: str, message: str) -> ApiError:
        """429: the session has no room now; the client retries after ``Retry-After``."""
        return ApiError(
            429,
            code,
            message,
            error_type="rate_limit_error",
            headers={"Retry-After": str(self._server.retry_after_s)},
        )

    def _accept(self, nbytes: int) -> None:
        self.stats.bytes_in += nbytes
        self._metrics.bytes_in.inc(nbytes)
        self.last_activity = trio.current_time()

    async def clear_input(self) -> None:
        """input_audio_buffer.clear: drop the turn in progress (applied after earlier audio)."""
        await self._send_control(Control("clear"))

    async def commit_input(self) -> None:
        """input_audio_buffer.commit: end the turn now (push-to-talk), in order with audio."""
        await self._send_control(Control("commit"))

    async def _send_control(self, control: Control) -> None:
        if await self._to_ingest(control):
            return
        raise self._busy("pipeline_busy", "the session is not keeping up; retry shortly")

    def cancel_response(self, event_id: str | None = None) -> None:
        """response.cancel: stop the current response; an error event (naming the client
        event) if there is none."""
        if not self.pipeline.cancel_response("client_cancelled"):
            error = ApiError(
                400,
                "response_cancel_not_active",
                "there is no response in progress to cancel",
                event_id=event_id,
            )
            self.events.emit("error", error=error.error_object())

    def take_frame(self) -> str | None:
        """The latest camera frame, once: it goes with the next user turn."""
        frame, self.latest_frame = self.latest_frame, None
        return frame

    def item_not_found(self, item_id: str, param: str = "item_id") -> ApiError:
        return ApiError(
            400, "item_not_found", f"no item {item_id!r} in the conversation", param=param
        )

    def add_item(self, item: Item, previous_item_id: str | None) -> None:
        """conversation.item.create (checked by app/_client_events.py); the latest camera
        frame joins a user message."""
        if item.type == "message" and item.role == "user":
            frame = self.take_frame()
            if frame is not None:
                item.images = [*item.images, frame]
        self.pipeline.add_item(item, previous_item_id)

    def delete_item(self, item_id: str) -> None:
        """conversation.item.delete (checked: the item exists)."""
        self.pipeline.conversation.delete(item_id)
        self.events.emit("conversation.item.deleted", item_id=item_id)

    def check_truncate(self, item_id: str, audio_end_ms: int) -> None:
        """Raises: ApiError: 400 unless ``item_id`` is an assistant audio message at least
        ``audio_end_ms`` long."""
        item = self.pipeline.conversation.get(item_id)
        if item is None:
            raise self.item_not_found(item_id)
        if item.type != "message" or item.role != "assistant" or not item.audio:
            raise ApiError(
                400,
                "invalid_item",
                "only assistant audio messages can be truncated",
                param="item_id",
            )
        if self.pipeline.responses.current_item() == item_id:
            return  # still speaking: it is cancelled, and cut where it stopped playing
        if audio_end_ms > item.audio_ms:
            raise ApiError(
                400,
                "invalid_audio_end_ms",
                f"audio_end_ms {audio_end_ms} is past the item's {item.audio_ms} ms of audio",
                param="audio_end_ms",
            )

    def truncate_item(self, item_id: str, audio_end_ms: int) -> None:
        """conversation.item.truncate: the history keeps what was heard up to
        ``audio_end_ms`` (the client stopped playing there). A reply still speaking it is
        cancelled instead, and cut where its playout stopped."""
        if self.pipeline.responses.current_item() == item_id:
            self.pipeline.cancel_response("client_cancelled")
            return  # the response reports the cut (conversation.item.truncated)
        item = self.pipeline.conversation.get(item_id)
        if item is None:
            return
        rate = self.config.output_sample_rate
        item.text = spoken_prefix(item.spoken, audio_end_ms * rate // 1000)
        item.truncated_ms = audio_end_ms
        self.events.emit(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=0,
            audio_end_ms=audio_end_ms,
        )

    def create_response(self, spec: ResponseSpec) -> None:
        """response.create (checked by :meth:`check_responses`).

        Raises:
            ApiError: 429 when the pipeline cannot take it now.
        """
        try:
            self.pipeline.request_response(spec)
        except trio.WouldBlock:
            raise self._busy(
                "pipeline_busy", "the session is not keeping up; retry shortly"
            ) from None

    def clear_output(self) -> None:
        """output_audio_buffer.clear: the reply's audio stops now (the response is
        cancelled, its item truncated where playback stopped)."""
        self.pipeline.cancel_response("client_cancelled")

    async def append_audio(self, data: bytes) -> UploadResult:
        """input_audio_buffer.append: PCM16 at the session's input rate, as an upload."""
        fmt = PcmFormat(self.config.input_sample_rate)
        body = await self.open_upload(fmt, sequence=None, content_length=len(data))
        try:
            await body.feed(data)
            return await body.finish()
        finally:
            body.close()

    def _count_turn(self) -> None:
        self.stats.turns += 1

    # -- tasks -----------------------------------------------------------------------

    async def _ingest_task(
        self,
        chunks: trio.MemoryReceiveChannel[AudioChunk | Control],
        out: trio.MemorySendChannel[Frame | Control],
    ) -> None:
        """Resample uploads to 16 kHz and cut them into 512-sample frames."""
        framer = Framer(FRAME_SAMPLES)
        resampler: StreamResampler | None = None
        position = 0
        async with chunks, out:
            async for chunk in chunks:
                if isinstance(chunk, Control):
                    if chunk.kind == "clear":
                        framer.clear()
                    else:
                        rest = framer.flush()
                        if len(rest):
                            await out.send(Frame(rest, position, trio.current_time()))
                            position += len(rest)
                    await out.send(chunk)
                    continue
                if resampler is None or resampler.in_rate != chunk.sample_rate:
                    resampler = StreamResampler(chunk.sample_rate, PIPELINE_RATE)
                now = trio.current_time()
                for samples in framer.feed(resampler.feed(chunk.samples)):
                    self.stats.frames += 1
                    frame = Frame(samples, position, now)
                    try:
                        # A chunk's frames go over together (no yield between them), so
                        # the VAD stage wakes once and scores them in one call.
                        out.send_nowait(frame)
                    except trio.WouldBlock:
                        await out.send(frame)
                    position += len(samples)

    # -- download --------------------------------------------------------------------

    def open_stream(self, from_ms: int | None = None) -> StreamStart:
        """Take over the audio stream (resuming from ``from_ms`` when still buffered)."""
        return self.playout.open_stream(from_ms)

    def _reader_dropped(self) -> None:
        log.info("session %s: stream_audio reader slower than real time, dropped", self.id)
        error = ApiError(
            409,
            "stream_reader_too_slow",
            "stream_audio was read slower than real time and was ended; "
            "reconnect to resume from live",
        )
        self.events.emit("error", error=error.error_object())

    def note_bytes_out(self, n: int) -> None:
        self.stats.bytes_out += n
        self._metrics.bytes_out.inc(n)
