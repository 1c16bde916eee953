"""The async client: trio, ``httpx.AsyncClient`` and ``httpx-sse``."""

from __future__ import annotations

import contextlib
import itertools
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
    Call,
    Event,
    EventCursor,
    OddByteCarry,
    PcmChunker,
    PcmLike,
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
    from collections.abc import AsyncGenerator, AsyncIterator
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

    Use as ``async with VoxwireClient(url) as client:``.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._owns_http = http is None
        self.http = http if http is not None else httpx.AsyncClient(timeout=REQUEST_TIMEOUT)

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
        return Session(self.http, SessionInfo.from_created(self.base_url, body))

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


class Session:
    """One voice session. Create it with :meth:`VoxwireClient.session`.

    Attributes:
        info: id, token and the config the server confirmed.
    """

    def __init__(self, http: httpx.AsyncClient, info: SessionInfo) -> None:
        self.http = http
        self.info = info
        self.next_sequence = 0
        self._upload_lock = trio.Lock()  # sequence numbers are assigned in upload order
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

    # -- audio up ------------------------------------------------------------------------

    async def upload(self, pcm: PcmLike, *, rate: int | None = None) -> None:
        """Append PCM16 audio to the session, as one sequenced POST (or a few if > 512 KiB).

        An odd trailing byte is held back for the next call. A 429/503 with
        ``Retry-After``, or a lost connection, is retried with the same ``X-Sequence``
        (the server ignores a duplicate), a few times at most.

        Args:
            pcm: Mono PCM16 little-endian bytes, or an int16/float array.
            rate: Its sample rate when not the session's ``input_sample_rate``.

        Raises:
            VoxwireError: the server refused the audio.
            httpx.TransportError: the server stayed unreachable.
        """
        async with self._upload_lock:
            for piece in split_upload(self._carry.align(as_pcm16(pcm))):
                await self._upload_piece(piece, rate)

    async def _upload_piece(self, piece: bytes, rate: int | None) -> None:
        call = self.info.upload_call(self.next_sequence, piece, rate)
        for attempt in itertools.count():
            try:
                await _request(self.http, call)
            except (httpx.TransportError, VoxwireError) as exc:
                delay = upload_retry_delay(exc if isinstance(exc, VoxwireError) else None, attempt)
                if delay is None:
                    raise
            else:
                self.next_sequence += 1
                return
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

        Returns:
            The number of samples uploaded.
        """
        src_rate = rate or int(self.config["input_sample_rate"])
        chunker = PcmChunker(chunk_bytes_for(src_rate, chunk_ms))
        t0 = trio.current_time()
        sent = 0

        async def send(chunk: bytes) -> None:
            nonlocal sent
            await self.upload(chunk, rate=rate)
            sent += len(chunk) // 2
            if realtime:
                await trio.sleep_until(t0 + sent / src_rate)

        async with contextlib.aclosing(_pieces(source)) as pieces:
            async for data in pieces:
                for chunk in chunker.feed(as_pcm16(data)):
                    await send(chunk)
        tail = chunker.flush()
        if tail:
            await send(tail)
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

    async def create_response(self, instructions: str | None = None) -> None:
        """Reply to the conversation as it stands (optionally with one-off instructions)."""
        event: dict[str, Any] = {"type": "response.create"}
        if instructions is not None:
            event["response"] = {"instructions": instructions}
        await self.send(event)

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
        """``GET /api/sessions/<id>``: state, config and stats."""
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
        still holds (so ``session.created`` is seen).
        """
        return EventStream(self.http, self.info, last_event_id)

    def audio(self) -> AudioStream:
        """The reply audio: ``async with s.audio() as audio: async for pcm in audio``."""
        return AudioStream(self.http, self.info)


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
    """The session's server events as :class:`Event` objects.

    A dropped connection is resumed with ``Last-Event-ID`` (nothing lost or repeated), a
    few times in a row at most; iteration ends when the server ends the stream (the
    session was deleted, or the server is shutting down).
    """

    def __init__(
        self, http: httpx.AsyncClient, info: SessionInfo, last_event_id: int | None
    ) -> None:
        self._http = http
        self._info = info
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

    async def _connect(self) -> None:
        url, headers = self._info.events_request(self.cursor.last_event_id)
        async with contextlib.AsyncExitStack() as stack:
            source = await stack.enter_async_context(
                aconnect_sse(self._http, "GET", url, headers=headers, timeout=EVENTS_TIMEOUT)
            )
            await _raise_for_stream(source.response)
            self._sse = source.aiter_sse()
            stack.push_async_callback(self._sse.aclose)
            self._stack = stack.pop_all()

    async def _disconnect(self) -> None:
        stack, self._stack, self._sse = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._sse is None:
                raise StopAsyncIteration
            try:
                sse = await self._sse.__anext__()
            except httpx.TransportError:
                delay = self.cursor.reconnect_delay()
                if delay is None:
                    raise
                await self._disconnect()
                await trio.sleep(delay)
                await self._connect()
                continue
            event = self.cursor.observe(sse)
            if event is not None:
                return event


class AudioStream:
    """``stream_audio`` as PCM16 bytes, without the WAV header.

    Entering opens the stream and reads the header, so :attr:`sample_rate` is known and
    the server is already playing out to us when ``async with`` returns.
    """

    def __init__(self, http: httpx.AsyncClient, info: SessionInfo) -> None:
        self._http = http
        self._info = info
        self._reader = WavStreamReader()
        self._stack: contextlib.AsyncExitStack | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._first = b""
        #: PCM bytes handed out so far.
        self.bytes_received = 0

    @property
    def sample_rate(self) -> int:
        if self._reader.sample_rate is None:
            raise RuntimeError("the stream is not open")
        return self._reader.sample_rate

    async def __aenter__(self) -> Self:
        url, headers = self._info.stream_audio_request()
        async with contextlib.AsyncExitStack() as stack:
            response = await stack.enter_async_context(
                self._http.stream("GET", url, headers=headers, timeout=AUDIO_TIMEOUT)
            )
            await _raise_for_stream(response)
            chunks = response.aiter_bytes()
            stack.push_async_callback(_aclose, chunks)
            while not self._reader.ready:
                try:
                    data = await chunks.__anext__()
                except StopAsyncIteration:
                    raise VoxwireError(0, "invalid_stream", "stream_audio ended early") from None
                self._first = self._reader.feed(data)
            self._chunks = chunks
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack, self._chunks = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            data, self._first = self._first, b""
        else:
            data = b""
        while not data:
            if self._chunks is None:
                raise StopAsyncIteration
            data = self._reader.feed(await self._chunks.__anext__())
        self.bytes_received += len(data)
        return data


async def _aclose(iterator: AsyncIterator[bytes]) -> None:
    # httpx's byte iterators are async generators: close them now, not when collected.
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
