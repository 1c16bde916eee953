"""The async client: trio, ``httpx.AsyncClient`` and ``httpx-sse``."""

from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING, Any, Self

import httpx
import numpy as np
import trio
from httpx_sse import aconnect_sse

from voxwire_client._core import (
    AUDIO_TIMEOUT,
    EVENTS_TIMEOUT,
    REQUEST_TIMEOUT,
    AsyncPcmSource,
    AudioStreamCore,
    Call,
    Event,
    EventCursor,
    PcmChunker,
    PcmLike,
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
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
    from types import TracebackType

    from httpx_sse import ServerSentEvent

#: How long a session's DELETE may take when leaving ``session()`` (even when cancelled).
CLOSE_TIMEOUT_S = 5.0


class VoxwireClient:
    """A connection to a voxwire server.

    Args:
        base_url: The server, e.g. ``"http://127.0.0.1:8000"``.
        api_key: Sent when creating sessions, if the server sets ``VOXWIRE_API_KEY``.
        http: An ``httpx.AsyncClient`` to use (not closed by this client). By default one
            is created and closed with the client.
        reconnect: How sessions' uploads and streams reconnect after a lost connection
            (:class:`ReconnectPolicy`; ``NO_RECONNECT`` turns it off).
        on_notice: Called (synchronously, from the task that reconnects) with every
            client-side notice of a session: ``client.reconnecting``,
            ``client.reconnected``, ``client.audio_gap``. They also appear in the session's
            event iterator.
        rng: The jitter's random source (seed it for reproducible runs).

    Use as ``async with VoxwireClient(url) as client:``.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        http: httpx.AsyncClient | None = None,
        reconnect: ReconnectPolicy | None = None,
        on_notice: Callable[[Event], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._owns_http = http is None
        self.http = http if http is not None else httpx.AsyncClient(timeout=REQUEST_TIMEOUT)
        self.reconnect = reconnect if reconnect is not None else ReconnectPolicy()
        self.on_notice = on_notice
        self.rng = rng if rng is not None else random.Random()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def create_session(self, **config: Any) -> Session:
        """``POST /api/sessions``; the caller must :meth:`Session.delete` it.

        Raises:
            VoxwireError: e.g. 422 for a bad config (``param`` names the key), 401, 503.
        """
        call = create_call(self.base_url, config, self.api_key)
        body = await _request(self.http, call)
        return Session(
            self.http,
            SessionInfo.from_created(self.base_url, body),
            reconnect=self.reconnect,
            on_notice=self.on_notice,
            rng=self.rng,
        )

    @contextlib.asynccontextmanager
    async def session(self, **config: Any) -> AsyncIterator[Session]:
        """A new session for the block, deleted when it ends (also on errors and cancel)."""
        s = await self.create_session(**config)
        try:
            yield s
        except BaseException:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                # Best effort: the error that got us here is the one to report.
                with contextlib.suppress(httpx.HTTPError, VoxwireError):
                    await s.delete()
            raise
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await s.delete()


async def _request(http: httpx.AsyncClient, call: Call) -> Any:
    response = await http.request(call.method, call.url, **call.kwargs())
    return check(call, response)


class Session(SessionCore):
    """One voice session. Create it with :meth:`VoxwireClient.session`.

    Its state (``info``, ``reconnect``, ``notifier``) is documented on :class:`SessionCore`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        info: SessionInfo,
        *,
        reconnect: ReconnectPolicy | None = None,
        on_notice: Callable[[Event], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(info, reconnect, on_notice, rng)
        self.http = http
        self._upload_lock = trio.Lock()  # pieces go out one at a time, in order
        self._acked = trio.Event()  # set (and replaced) whenever pieces are acknowledged

    # -- audio up ------------------------------------------------------------------------

    async def upload(self, pcm: PcmLike, *, rate: int | None = None) -> None:
        """Append PCM16 audio to the session, as one sequenced POST (or a few if > 512 KiB).

        An odd trailing byte is held back for the next call. Returns once the server has
        acknowledged it. A lost connection, a 429/503 (``Retry-After`` honoured), a
        proxy's 502/504 are retried under the :class:`ReconnectPolicy` with the same
        ``X-Sequence`` (the server ignores a duplicate), with ``client.reconnecting`` /
        ``client.reconnected`` notices (stream ``"upload"``).

        Args:
            pcm: Mono PCM16 little-endian bytes, or an int16/float array.
            rate: Its sample rate when not the session's ``input_sample_rate``.

        Raises:
            VoxwireError: the server refused the audio (404 ``session_not_found``: the
                session is gone, e.g. its instance died).
            httpx.TransportError: the server stayed unreachable.
        """
        async with self._upload_lock:
            for piece in split_upload(self._carry.align(as_pcm16(pcm))):
                self._window.add(piece, rate)
                await self._flush()

    async def _flush(self) -> None:
        """Send every piece not acknowledged yet, oldest first (the upload lock is held)."""
        while (item := self._window.oldest()) is not None:
            await self._send_piece(*item)

    async def _send_piece(self, sequence: int, piece: bytes, rate: int | None) -> None:
        call = self.info.upload_call(sequence, piece, rate)
        retry = self._retry("upload")
        while True:
            # A body httpx can drop half-sent without leaving an async generator behind.
            request = self.http.build_request(
                call.method, call.url, headers={**call.headers, "Content-Length": str(len(piece))}
            )
            request.stream = _Body(piece)
            try:
                response = await self.http.send(request)
                check(call, response)
            except (httpx.TransportError, VoxwireError) as exc:
                failure: Exception = exc
            else:
                self._window.ack(acked_sequence(response.headers, sequence))
                self._acked.set()
                self._acked = trio.Event()
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
            await trio.sleep(delay)

    async def stream_pcm(
        self,
        source: AsyncPcmSource,
        *,
        rate: int | None = None,
        realtime: bool = True,
        chunk_ms: int = 100,
    ) -> int:
        """Upload ``source`` in ``chunk_ms`` pieces, paced like a live microphone.

        Args:
            source: PCM16 bytes (or an array), or a sync or async iterable of them, split
                anywhere (also mid-sample).
            rate: The source's sample rate when not the session's ``input_sample_rate``.
            realtime: Hold each chunk back until its time on trio's clock (the first one
                goes at once). Off for sources that are already live, like a microphone.
            chunk_ms: The size of each upload.

        Chunks are queued and sent by a helper task, so a lost connection does not hold the
        source back: while reconnecting, up to ``reconnect.max_unacked_s`` of audio is kept
        and then resent in order with the same sequence numbers. Returns once all of it is
        acknowledged. Without ``realtime`` the source is read as fast as that window
        empties (the upload's own failures end it).

        Returns:
            The number of samples uploaded.

        Raises:
            VoxwireError: ``upload_backlog_full`` (status 0) when more than
                ``max_unacked_s`` of audio waits for the server (with ``realtime``); any
                refusal of the server.
            httpx.TransportError: the server stayed unreachable.
        """
        src_rate = rate or int(self.config["input_sample_rate"])
        chunker = PcmChunker(chunk_bytes_for(src_rate, chunk_ms))
        t0 = trio.current_time()
        sent = 0
        kick_send, kick_receive = trio.open_memory_channel[None](1)

        async def sender() -> None:
            async with kick_receive:
                async for _ in kick_receive:
                    async with self._upload_lock:
                        await self._flush()
            async with self._upload_lock:
                await self._flush()

        async def queue(chunk: bytes) -> None:
            nonlocal sent
            while not realtime and not self._window.fits(len(chunk)):
                await self._acked.wait()  # as fast as the server takes it, no faster
            self._window.add(chunk, rate)
            with contextlib.suppress(trio.WouldBlock):  # a kick is pending already
                kick_send.send_nowait(None)
            sent += len(chunk) // 2
            if realtime:
                await trio.sleep_until(t0 + sent / src_rate)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                async with kick_send, contextlib.aclosing(_pieces(source)) as pieces:
                    async for data in pieces:
                        for chunk in chunker.feed(as_pcm16(data)):
                            await queue(chunk)
                    tail = chunker.flush()
                    if tail:
                        await queue(tail)
        except ExceptionGroup as group:
            # One failure (the sender's, or a full window): raise it as documented, not
            # wrapped in the nursery's group.
            if len(group.exceptions) == 1:
                (failure,) = group.exceptions
                raise failure from failure.__cause__
            raise
        return sent

    # -- client events -------------------------------------------------------------------

    async def send(self, *events: dict[str, Any]) -> int:
        """POST client events (validated all before any is applied); returns how many."""
        body = await _request(self.http, self.info.events_call(events))
        return int(body["accepted"])

    async def commit(self) -> None:
        """End the user's turn now (push-to-talk), in order with the audio uploaded before."""
        await self.send({"type": "input_audio_buffer.commit"})

    async def clear(self) -> None:
        """Drop the turn in progress."""
        await self.send({"type": "input_audio_buffer.clear"})

    async def cancel_response(self) -> None:
        """Stop the current reply as a barge-in does."""
        await self.send({"type": "response.cancel"})

    async def create_response(self, instructions: str | None = None, **response: Any) -> None:
        """Reply to the conversation as it stands (optionally with one-off instructions).

        ``response`` are more keys of the GA ``response`` object, e.g.
        ``output_modalities=["text"]`` for a reply in text only
        (``response.output_text.delta``/``done``, no audio) or ``conversation="none"``.

        Raises:
            VoxwireError: 409 ``conversation_already_has_active_response`` while a response
                is in progress (one at a time: wait for its ``response.done``, or cancel
                it); 503 while the server's models are loading.
        """
        await self.send(response_create_event(instructions, response))

    async def add_text(self, text: str, role: str = "user") -> None:
        """Add a text message to the conversation (it does not start a reply)."""
        content_type = "output_text" if role == "assistant" else "input_text"
        item = {"type": "message", "role": role, "content": [{"type": content_type, "text": text}]}
        await self.send({"type": "conversation.item.create", "item": item})

    async def update(self, **config: Any) -> dict[str, Any]:
        """PATCH the session config; returns (and keeps) the config now in force."""
        body = await _request(self.http, self.info.update_call(config))
        self.info.config.clear()
        self.info.config.update(body["config"])
        return self.config

    async def describe(self) -> dict[str, Any]:
        """``GET /api/sessions/<id>``: the GA session object (``output_modalities``,
        ``audio``, ``tools``...) with voxwire's ``state``, ``stats`` and flat ``config``."""
        body: dict[str, Any] = await _request(self.http, self.info.describe_call())
        return body

    async def stop_stream(self) -> bool:
        """End the open ``stream_audio`` response; whether there was one."""
        body = await _request(self.http, self.info.stop_stream_call())
        return bool(body["stopped"])

    async def delete(self) -> None:
        """End the session (idempotent; a session the server already forgot is fine)."""
        if self._deleted:
            return
        try:
            await _request(self.http, self.info.delete_call())
        except VoxwireError as exc:
            if exc.status != 404:
                raise
        self._deleted = True

    # -- streams down --------------------------------------------------------------------

    def events(self, *, last_event_id: int | None = None) -> EventStream:
        """The server events: ``async with s.events() as events: async for e in events``.

        Without ``last_event_id`` the stream starts with the oldest event the server
        still holds (so ``session.created`` is seen). Also yields the session's
        client-side notices (``client.*`` types, ``id`` ``None``).
        """
        return EventStream(self, last_event_id)

    def audio(self) -> AudioStream:
        """The reply audio: ``async with s.audio() as audio: async for pcm in audio``."""
        return AudioStream(self)


async def _pieces(source: AsyncPcmSource) -> AsyncGenerator[PcmLike, None]:
    if isinstance(source, bytes | bytearray | memoryview | np.ndarray):
        yield source
    elif hasattr(source, "__aiter__"):
        async for piece in source:
            yield piece
    else:
        for piece in source:
            yield piece


async def _raise_for_stream(response: httpx.Response) -> None:
    if response.status_code != 200:
        await response.aread()
        raise error_from(response.status_code, response.headers, response.content)


class EventStream:
    """The session's server events as :class:`Event` objects, as one stream.

    A lost connection (or a proxy's 502/503/504) is reopened under the session's
    :class:`ReconnectPolicy` with ``Last-Event-ID``, and events already seen are dropped,
    so every event arrives once, in order. The session's client-side notices
    (``client.reconnecting``, ``client.reconnected``, ``client.audio_gap``; ``id`` is
    ``None``) are yielded too: at once for this stream's own reconnects, before the next
    server event (or ping) for the other streams'. Iteration ends when the server ends the
    stream (the session was deleted, or the server is shutting down).
    """

    def __init__(self, session: Session, last_event_id: int | None) -> None:
        self._session = session
        self.cursor = EventCursor()
        self.cursor.last_event_id = last_event_id
        self._stack: contextlib.AsyncExitStack | None = None
        self._sse: AsyncGenerator[ServerSentEvent, None] | None = None

    async def __aenter__(self) -> Self:
        await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._disconnect()

    async def _connect(self) -> dict[str, Any]:
        s = self._session
        url, headers = s.info.events_request(self.cursor.last_event_id)
        async with contextlib.AsyncExitStack() as stack:
            source = await stack.enter_async_context(
                aconnect_sse(s.http, "GET", url, headers=headers, timeout=EVENTS_TIMEOUT)
            )
            await _raise_for_stream(source.response)
            self._sse = source.aiter_sse()
            stack.push_async_callback(self._sse.aclose)
            self._stack = stack.pop_all()
        return {"last_event_id": self.cursor.last_event_id}

    async def _disconnect(self) -> None:
        stack, self._stack, self._sse = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _reconnect(self, failure: Exception) -> None:
        await self._disconnect()
        await _reconnect_loop(self._session, "events", failure, self._connect)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        notifier = self._session.notifier
        while True:
            notice = notifier.take()
            if notice is not None:
                return notice
            if self._sse is None:
                raise StopAsyncIteration
            try:
                sse = await self._sse.__anext__()
            except httpx.TransportError as exc:
                await self._reconnect(exc)
                continue
            event = self.cursor.observe(sse)
            if event is not None:
                return event


async def _reconnect_loop(
    session: Session,
    stream: str,
    failure: Exception,
    connect: Callable[[], Awaitable[dict[str, Any]]],
) -> None:
    """Call ``connect`` until it succeeds, backing off; notices for ``stream``.

    ``connect`` returns details for the ``client.reconnected`` notice.

    Raises:
        VoxwireError: a refusal that will not go away (404 ``session_not_found``: the
            session is gone), or the last one when the policy gives up.
        httpx.TransportError: the last failure when the policy gives up.
    """
    retry = session._retry(stream)
    while True:
        await trio.sleep(retry.failed(failure))
        try:
            details = await connect()
        except (httpx.TransportError, VoxwireError) as exc:
            failure = exc
        else:
            retry.succeeded(**details)
            return


class AudioStream(AudioStreamCore):
    """``stream_audio`` as PCM16 bytes without the WAV header, as one stream.

    Entering opens the stream and reads the header, so :attr:`sample_rate` is known and
    the server is already playing out to us when ``async with`` returns.

    A lost connection (or a proxy's 502/503/504) is reopened under the session's
    :class:`ReconnectPolicy` with ``?from_ms=`` the position reached: what the server
    replays from its buffer (3 s) and the client already has is dropped, so the stream
    continues without a repeat or a gap. When the server cannot replay (reconnected too
    late), the missing span is recorded in :attr:`gaps` and announced with a
    ``client.audio_gap`` notice; nothing is inserted for it. A clean end (takeover by
    another GET, ``stop_stream``, the session deleted) ends the iteration.

    Its counters (``bytes_received``, ``last_position``, ``connections``) are documented
    on :class:`AudioStreamCore`.
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session
        self._stack: contextlib.AsyncExitStack | None = None
        self._chunks: AsyncIterator[bytes] | None = None

    async def __aenter__(self) -> Self:
        await self._connect()
        return self

    async def _connect(self) -> dict[str, Any]:
        s = self._session
        url, headers = s.info.stream_audio_request()
        from_ms, params = self._resume_params()
        reader = WavStreamReader()
        async with contextlib.AsyncExitStack() as stack:
            response = await stack.enter_async_context(
                s.http.stream("GET", url, headers=headers, params=params, timeout=AUDIO_TIMEOUT)
            )
            await _raise_for_stream(response)
            chunks = response.aiter_bytes()
            stack.push_async_callback(_aclose, chunks)
            first = b""
            while not reader.ready:
                try:
                    data = await chunks.__anext__()
                except StopAsyncIteration:
                    raise VoxwireError(0, "invalid_stream", "stream_audio ended early") from None
                first = reader.feed(data)
            opened = self._opened(reader, response.headers, first, from_ms)
            self._chunks = chunks
            self._stack = stack.pop_all()
        return opened

    async def _disconnect(self) -> None:
        stack, self._stack, self._chunks = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._disconnect()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        while not self._pieces:
            if self._chunks is None:
                raise StopAsyncIteration
            try:
                data = await self._chunks.__anext__()
            except httpx.TransportError as exc:
                await self._disconnect()
                await _reconnect_loop(self._session, "audio", exc, self._connect)
                if self._gap is not None:
                    self._session.notifier.emit(audio_gap_event(*self._gap))
                continue
            self._feed(data)
        return self._take()


class _Body(httpx.AsyncByteStream):
    """An upload's bytes as a request stream that is not an async generator.

    httpx's own body for ``content=bytes`` is one; when a connection is lost mid-upload
    it is left unfinished and later collected with a ``ResourceWarning`` under trio.
    """

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


async def _aclose(iterator: AsyncIterator[bytes]) -> None:
    # httpx's byte iterators are async generators: close them now, not when collected.
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
