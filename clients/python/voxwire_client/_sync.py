"""The blocking client: ``httpx.Client`` and ``httpx-sse``, same surface as the async one.

Uploads and both streams reconnect like the async client's (the same core: the
:class:`ReconnectPolicy`, the upload window, the event cursor, the audio timeline), with
``time.sleep`` between attempts.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import TYPE_CHECKING, Any, Self

import httpx
import numpy as np
from httpx_sse import connect_sse

from voxwire_client._core import (
    AUDIO_TIMEOUT,
    EVENTS_TIMEOUT,
    REQUEST_TIMEOUT,
    AudioStreamCore,
    Call,
    Event,
    EventCursor,
    PcmChunker,
    PcmLike,
    PcmSource,
    ReconnectPolicy,
    SessionCore,
    SessionInfo,
    VoxwireError,
    WavStreamReader,
    acked_sequence,
    as_pcm16,
    audio_gap_event,
    check,
    chunk_bytes_for,
    create_call,
    error_from,
    response_create_event,
    split_upload,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType

    from httpx_sse import ServerSentEvent


class Client:
    """A blocking connection to a voxwire server (see :class:`VoxwireClient`).

    Use as ``with Client(url) as client:``. ``reconnect``, ``on_notice`` and ``rng`` are
    those of :class:`VoxwireClient`; ``on_notice`` is called from the thread that
    reconnects.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        http: httpx.Client | None = None,
        reconnect: ReconnectPolicy | None = None,
        on_notice: Callable[[Event], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._owns_http = http is None
        self.http = http if http is not None else httpx.Client(timeout=REQUEST_TIMEOUT)
        self.reconnect = reconnect if reconnect is not None else ReconnectPolicy()
        self.on_notice = on_notice
        self.rng = rng if rng is not None else random.Random()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def create_session(self, **config: Any) -> SyncSession:
        """``POST /api/sessions``; the caller must :meth:`SyncSession.delete` it."""
        call = create_call(self.base_url, config, self.api_key)
        body = _request(self.http, call)
        return SyncSession(
            self.http,
            SessionInfo.from_created(self.base_url, body),
            reconnect=self.reconnect,
            on_notice=self.on_notice,
            rng=self.rng,
        )

    @contextlib.contextmanager
    def session(self, **config: Any) -> Iterator[SyncSession]:
        """A new session for the block, deleted when it ends (also on errors)."""
        s = self.create_session(**config)
        try:
            yield s
        except BaseException:
            # Best effort: the error that got us here is the one to report.
            with contextlib.suppress(httpx.HTTPError, VoxwireError):
                s.delete()
            raise
        s.delete()


def _request(http: httpx.Client, call: Call) -> Any:
    return check(call, http.request(call.method, call.url, **call.kwargs()))


class SyncSession(SessionCore):
    """One voice session (blocking). See :class:`Session` for the methods."""

    def __init__(
        self,
        http: httpx.Client,
        info: SessionInfo,
        *,
        reconnect: ReconnectPolicy | None = None,
        on_notice: Callable[[Event], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(info, reconnect, on_notice, rng)
        self.http = http
        self._upload_lock = threading.Lock()

    def upload(self, pcm: PcmLike, *, rate: int | None = None) -> None:
        """Append PCM16 audio as sequenced POSTs, retried like :meth:`Session.upload`.

        Pieces a failed call left unacknowledged are resent (same numbers) first.
        """
        with self._upload_lock:
            for piece in split_upload(self._carry.align(as_pcm16(pcm))):
                self._window.add(piece, rate)
                while (item := self._window.oldest()) is not None:
                    self._send_piece(*item)

    def _send_piece(self, sequence: int, piece: bytes, rate: int | None) -> None:
        call = self.info.upload_call(sequence, piece, rate)
        retry = self._retry("upload")
        while True:
            try:
                response = self.http.request(call.method, call.url, **call.kwargs())
                check(call, response)
            except (httpx.TransportError, VoxwireError) as exc:
                failure: Exception = exc
            else:
                self._window.ack(acked_sequence(response.headers, sequence))
                retry.succeeded()
                return
            try:
                delay = retry.failed(failure)
            except VoxwireError as exc:
                # Refused, not lost: the server did not take it, so its number is free
                # again (unless an earlier attempt is still running there).
                if exc.code != "upload_in_progress":
                    self._window.refused(sequence)
                raise
            time.sleep(delay)

    def stream_pcm(
        self,
        source: PcmSource,
        *,
        rate: int | None = None,
        realtime: bool = True,
        chunk_ms: int = 100,
    ) -> int:
        """Upload ``source`` in ``chunk_ms`` pieces, paced in real time (``time.monotonic``).

        Returns:
            The number of samples uploaded.
        """
        src_rate = rate or int(self.config["input_sample_rate"])
        chunker = PcmChunker(chunk_bytes_for(src_rate, chunk_ms))
        t0 = time.monotonic()
        sent = 0

        def send(chunk: bytes) -> None:
            nonlocal sent
            self.upload(chunk, rate=rate)
            sent += len(chunk) // 2
            if realtime:
                time.sleep(max(0.0, t0 + sent / src_rate - time.monotonic()))

        pieces: Iterable[PcmLike] = (
            [source] if isinstance(source, bytes | bytearray | memoryview | np.ndarray) else source
        )
        for data in pieces:
            for chunk in chunker.feed(as_pcm16(data)):
                send(chunk)
        tail = chunker.flush()
        if tail:
            send(tail)
        return sent

    def send(self, *events: dict[str, Any]) -> int:
        body = _request(self.http, self.info.events_call(events))
        return int(body["accepted"])

    def commit(self) -> None:
        self.send({"type": "input_audio_buffer.commit"})

    def clear(self) -> None:
        self.send({"type": "input_audio_buffer.clear"})

    def cancel_response(self) -> None:
        self.send({"type": "response.cancel"})

    def create_response(self, instructions: str | None = None, **response: Any) -> None:
        self.send(response_create_event(instructions, response))

    def add_text(self, text: str, role: str = "user") -> None:
        content_type = "output_text" if role == "assistant" else "input_text"
        item = {"type": "message", "role": role, "content": [{"type": content_type, "text": text}]}
        self.send({"type": "conversation.item.create", "item": item})

    def update(self, **config: Any) -> dict[str, Any]:
        body = _request(self.http, self.info.update_call(config))
        self.info.config.clear()
        self.info.config.update(body["config"])
        return self.config

    def describe(self) -> dict[str, Any]:
        body: dict[str, Any] = _request(self.http, self.info.describe_call())
        return body

    def stop_stream(self) -> bool:
        return bool(_request(self.http, self.info.stop_stream_call())["stopped"])

    def delete(self) -> None:
        if self._deleted:
            return
        try:
            _request(self.http, self.info.delete_call())
        except VoxwireError as exc:
            if exc.status != 404:
                raise
        self._deleted = True

    def events(self, *, last_event_id: int | None = None) -> SyncEventStream:
        """``with s.events() as events: for e in events`` (client notices included)."""
        return SyncEventStream(self, last_event_id)

    def audio(self) -> SyncAudioStream:
        """``with s.audio() as audio: for pcm in audio``."""
        return SyncAudioStream(self)


def _reconnect_loop(
    session: SyncSession,
    stream: str,
    failure: Exception,
    connect: Callable[[], dict[str, Any]],
) -> None:
    """Call ``connect`` until it succeeds, backing off (see the async ``_reconnect_loop``)."""
    retry = session._retry(stream)
    while True:
        time.sleep(retry.failed(failure))
        try:
            details = connect()
        except (httpx.TransportError, VoxwireError) as exc:
            failure = exc
        else:
            retry.succeeded(**details)
            return


def _raise_for_stream(response: httpx.Response) -> None:
    if response.status_code != 200:
        response.read()
        raise error_from(response.status_code, response.headers, response.content)


class SyncEventStream:
    """Blocking :class:`EventStream`: reconnects with ``Last-Event-ID``, drops repeats,
    yields the session's client notices."""

    def __init__(self, session: SyncSession, last_event_id: int | None) -> None:
        self._session = session
        self.cursor = EventCursor()
        self.cursor.last_event_id = last_event_id
        self._stack: contextlib.ExitStack | None = None
        self._sse: Iterator[ServerSentEvent] | None = None

    def __enter__(self) -> Self:
        self._connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._disconnect()

    def _connect(self) -> dict[str, Any]:
        s = self._session
        url, headers = s.info.events_request(self.cursor.last_event_id)
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(
                connect_sse(s.http, "GET", url, headers=headers, timeout=EVENTS_TIMEOUT)
            )
            _raise_for_stream(source.response)
            self._sse = source.iter_sse()
            self._stack = stack.pop_all()
        return {"last_event_id": self.cursor.last_event_id}

    def _disconnect(self) -> None:
        stack, self._stack, self._sse = self._stack, None, None
        if stack is not None:
            stack.close()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Event:
        notifier = self._session.notifier
        while True:
            notice = notifier.take()
            if notice is not None:
                return notice
            if self._sse is None:
                raise StopIteration
            try:
                sse = next(self._sse)
            except StopIteration:
                self._disconnect()  # a clean end: the session was deleted, or shutdown
                continue
            except httpx.TransportError as exc:
                self._disconnect()
                _reconnect_loop(self._session, "events", exc, self._connect)
                continue
            event = self.cursor.observe(sse)
            if event is not None:
                return event


class SyncAudioStream(AudioStreamCore):
    """Blocking :class:`AudioStream`: reconnects with ``?from_ms=``, same attributes."""

    def __init__(self, session: SyncSession) -> None:
        super().__init__()
        self._session = session
        self._stack: contextlib.ExitStack | None = None
        self._chunks: Iterator[bytes] | None = None

    def __enter__(self) -> Self:
        self._connect()
        return self

    def _connect(self) -> dict[str, Any]:
        s = self._session
        url, headers = s.info.stream_audio_request()
        from_ms, params = self._resume_params()
        reader = WavStreamReader()
        with contextlib.ExitStack() as stack:
            response = stack.enter_context(
                s.http.stream("GET", url, headers=headers, params=params, timeout=AUDIO_TIMEOUT)
            )
            _raise_for_stream(response)
            chunks = response.iter_bytes()
            first = b""
            while not reader.ready:
                data = next(chunks, None)
                if data is None:
                    raise VoxwireError(0, "invalid_stream", "stream_audio ended early")
                first = reader.feed(data)
            opened = self._opened(reader, response.headers, first, from_ms)
            self._chunks = chunks
            self._stack = stack.pop_all()
        return opened

    def _disconnect(self) -> None:
        stack, self._stack, self._chunks = self._stack, None, None
        if stack is not None:
            stack.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._disconnect()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        while not self._pieces:
            if self._chunks is None:
                raise StopIteration
            try:
                data = next(self._chunks)
            except StopIteration:
                self._disconnect()  # a clean end: takeover, stop_stream, deleted
                continue
            except httpx.TransportError as exc:
                self._disconnect()
                _reconnect_loop(self._session, "audio", exc, self._connect)
                if self._gap is not None:
                    self._session.notifier.emit(audio_gap_event(*self._gap))
                continue
            self._feed(data)
        return self._take()
