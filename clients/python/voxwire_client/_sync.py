"""The blocking client: ``httpx.Client`` and ``httpx-sse``, same surface as the async one."""

from __future__ import annotations

import contextlib
import itertools
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
    Call,
    Event,
    EventCursor,
    OddByteCarry,
    PcmChunker,
    PcmLike,
    PcmSource,
    SessionInfo,
    VoxwireError,
    WavStreamReader,
    as_pcm16,
    check,
    chunk_bytes_for,
    create_call,
    error_from,
    split_upload,
    upload_retry_delay,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from types import TracebackType

    from httpx_sse import ServerSentEvent


class Client:
    """A blocking connection to a voxwire server (see :class:`VoxwireClient`).

    Use as ``with Client(url) as client:``.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._owns_http = http is None
        self.http = http if http is not None else httpx.Client(timeout=REQUEST_TIMEOUT)

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
        return SyncSession(self.http, SessionInfo.from_created(self.base_url, body))

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


class SyncSession:
    """One voice session (blocking). See :class:`Session` for the methods."""

    def __init__(self, http: httpx.Client, info: SessionInfo) -> None:
        self.http = http
        self.info = info
        self.next_sequence = 0
        self._upload_lock = threading.Lock()
        self._carry = OddByteCarry()
        self._deleted = False

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def token(self) -> str:
        return self.info.token

    @property
    def config(self) -> dict[str, Any]:
        return self.info.config

    def upload(self, pcm: PcmLike, *, rate: int | None = None) -> None:
        """Append PCM16 audio as one sequenced POST, retried like :meth:`Session.upload`."""
        with self._upload_lock:
            for piece in split_upload(self._carry.align(as_pcm16(pcm))):
                self._upload_piece(piece, rate)

    def _upload_piece(self, piece: bytes, rate: int | None) -> None:
        call = self.info.upload_call(self.next_sequence, piece, rate)
        for attempt in itertools.count():
            try:
                _request(self.http, call)
            except (httpx.TransportError, VoxwireError) as exc:
                delay = upload_retry_delay(exc if isinstance(exc, VoxwireError) else None, attempt)
                if delay is None:
                    raise
            else:
                self.next_sequence += 1
                return
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

    def create_response(self, instructions: str | None = None) -> None:
        event: dict[str, Any] = {"type": "response.create"}
        if instructions is not None:
            event["response"] = {"instructions": instructions}
        self.send(event)

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
        """``with s.events() as events: for e in events``."""
        return SyncEventStream(self.http, self.info, last_event_id)

    def audio(self) -> SyncAudioStream:
        """``with s.audio() as audio: for pcm in audio``."""
        return SyncAudioStream(self.http, self.info)


def _raise_for_stream(response: httpx.Response) -> None:
    if response.status_code != 200:
        response.read()
        raise error_from(response.status_code, response.headers, response.content)


class SyncEventStream:
    """Blocking :class:`EventStream`."""

    def __init__(self, http: httpx.Client, info: SessionInfo, last_event_id: int | None) -> None:
        self._http = http
        self._info = info
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

    def _connect(self) -> None:
        url, headers = self._info.events_request(self.cursor.last_event_id)
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(
                connect_sse(self._http, "GET", url, headers=headers, timeout=EVENTS_TIMEOUT)
            )
            _raise_for_stream(source.response)
            self._sse = source.iter_sse()
            self._stack = stack.pop_all()

    def _disconnect(self) -> None:
        stack, self._stack, self._sse = self._stack, None, None
        if stack is not None:
            stack.close()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Event:
        while True:
            if self._sse is None:
                raise StopIteration
            try:
                sse = next(self._sse)
            except httpx.TransportError:
                delay = self.cursor.reconnect_delay()
                if delay is None:
                    raise
                self._disconnect()
                time.sleep(delay)
                self._connect()
                continue
            event = self.cursor.observe(sse)
            if event is not None:
                return event


class SyncAudioStream:
    """Blocking :class:`AudioStream`."""

    def __init__(self, http: httpx.Client, info: SessionInfo) -> None:
        self._http = http
        self._info = info
        self._reader = WavStreamReader()
        self._stack: contextlib.ExitStack | None = None
        self._chunks: Iterator[bytes] | None = None
        self._first = b""
        self.bytes_received = 0

    @property
    def sample_rate(self) -> int:
        if self._reader.sample_rate is None:
            raise RuntimeError("the stream is not open")
        return self._reader.sample_rate

    def __enter__(self) -> Self:
        url, headers = self._info.stream_audio_request()
        with contextlib.ExitStack() as stack:
            response = stack.enter_context(
                self._http.stream("GET", url, headers=headers, timeout=AUDIO_TIMEOUT)
            )
            _raise_for_stream(response)
            chunks = response.iter_bytes()
            while not self._reader.ready:
                data = next(chunks, None)
                if data is None:
                    raise VoxwireError(0, "invalid_stream", "stream_audio ended early")
                self._first = self._reader.feed(data)
            self._chunks = chunks
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack, self._chunks = self._stack, None, None
        if stack is not None:
            stack.close()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        if self._first:
            data, self._first = self._first, b""
        else:
            data = b""
        while not data:
            if self._chunks is None:
                raise StopIteration
            data = self._reader.feed(next(self._chunks))
        self.bytes_received += len(data)
        return data
