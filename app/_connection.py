"""voxwire's HTTP/1.1 connection handler: ``upload_audio`` on h11 directly, the rest through
hypercorn.

``upload_audio`` is the hot path of every session (a client POSTs every 20-100 ms, or
streams one long chunked body). Served through hypercorn and an ASGI app, each POST costs
a stream object, an app task and its memory channel, ASGI message dicts, a lock and a
shielded scope per socket write, and hypercorn's timers: 2.5x what the same work costs on
bare trio + h11 (bench/README.md, "transport.py --cost"). So hypercorn's worker runs a
:class:`Connection` for each accepted socket instead of its own ``TCPServer``:

- **Its own h11 loop, in the connection's task.** While the requests on a connection are
  POST or PUT ``/api/sessions/<id>/upload_audio``, each is parsed by h11 and fed to the
  session as it arrives (:class:`app._session.UploadBody`), and answered in one write: no
  task, channel or timer per request. A body that stalls is answered 408 from the read's
  own deadline; backpressure is the session's (the task stops reading the socket).
- **Everything else goes to hypercorn**, at a request boundary: the request line is
  peeked before h11 parses it, and a request that is not an upload (or that this loop
  does not handle: a percent-encoded path, an absolute URI, HTTP/2's preface, TLS) is
  handed over with every byte read so far to app/_server.py's ``PromptCloseTCPServer``,
  which serves it and what follows as before.
- **And back.** When hypercorn holds the connection and parses an upload request, its
  h11 protocol hands the connection, that request and its h11 state back here (see
  ``HandBack`` in app/_server.py): a client that creates its session and then uploads on
  the same keep-alive connection (URLSession, httpx, browsers) gets this path too.

The answers are those of the Quart route (``fast_paths = False`` on the app's connection
class sends every request through Quart; tests/test_fast_paths.py compares the two byte
for byte): its headers, voxwire's JSON errors, CORS, ``Connection: close`` when the body
went unread (the connection then closes after a lingering read, as hypercorn's does here),
hypercorn's ``date`` and ``server`` headers and its keep-alive limits. Two differences,
both on purpose: ``100 Continue`` goes out once the upload is accepted (hypercorn sends
it at once, so a refused client sent its body for nothing), and a malformed chunked body
gets voxwire's JSON 400 (naming what was accepted) instead of hypercorn's bare one.

Quart's before/after-request hooks do not run for uploads: voxwire's own (CORS, closing a
connection whose body went unread) are reproduced here; a new hook that must see uploads
has to be added here too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import h11
import hypercorn.protocol
import trio
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import run as hypercorn_trio_run
from werkzeug.sansio.utils import get_content_length

from app._cors import EXPOSE_HEADERS, CorsPolicy
from app._errors import ApiError
from app._server import LINGER_S, HandBack, PromptCloseTCPServer
from app.routes._common import bearer_credential
from app.routes.audio import UploadRequest, upload_reply_headers

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable

    from hypercorn.config import Config as HypercornConfig
    from quart import Quart

    from app._config import ServerConfig
    from app._metrics import Metrics
    from app._registry import SessionRegistry
    from app._session import UploadBody


# The werkzeug rule ``/api/sessions/<session_id>/upload_audio`` on the raw request target:
# a segment without "/", and here without "%" either (a percent-encoded path goes to
# Quart, which decodes it), then any query (uploads take no parameters).
_UPLOAD_TARGET = re.compile(rb"/api/sessions/([^/?#%]+)/upload_audio(?:\?[^#]*)?")
_UPLOAD_METHODS = frozenset((b"POST", b"PUT"))
MAX_REQUEST_LINE = 8192  # longer, and hypercorn answers it (414 or 400)
RECEIVE_BYTES = 65536

Headers = list[tuple[bytes, bytes]]


def upload_session_id(method: bytes, target: bytes) -> str | None:
    """The session id if ``method target`` is an upload this module serves."""
    if method not in _UPLOAD_METHODS:
        return None
    match = _UPLOAD_TARGET.fullmatch(target)
    return match[1].decode("latin1") if match is not None else None


def _request_line(buffer: bytes) -> tuple[bytes, bytes] | Literal[False] | None:
    """``(method, target)`` of the request at the start of ``buffer``; ``None`` until its
    first line is in; ``False`` if it is not a request line this module parses."""
    start = 0
    while buffer.startswith(b"\r\n", start):  # blank lines before a request are allowed
        start += 2
    end = buffer.find(b"\n", start)
    if end < 0:
        return None if len(buffer) < MAX_REQUEST_LINE else False
    parts = buffer[start:end].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return False
    return parts[0], parts[1]


class Disconnected(Exception):
    """The client went away before its request was read."""


class RequestHeaders:
    """A request's headers as h11 parses them: names in lower case, in order."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._raw = list(raw)

    def get(self, name: bytes) -> str | None:
        """The first value of ``name`` (lower case), as Quart decodes it (latin-1)."""
        for key, value in self._raw:
            if key == name:
                return value.decode("latin1")
        return None


@dataclass(frozen=True, slots=True)
class _AppParts:
    """What uploads need from the app, looked up once per app."""

    registry: SessionRegistry
    metrics: Metrics
    cors: CorsPolicy


_PARTS: weakref.WeakKeyDictionary[Quart, _AppParts] = weakref.WeakKeyDictionary()


def _parts(app: Quart) -> _AppParts:
    parts = _PARTS.get(app)
    if parts is None:
        config: ServerConfig = app.config["VOXWIRE_CONFIG"]
        parts = _PARTS[app] = _AppParts(
            app.config["VOXWIRE_REGISTRY"],
            app.config["VOXWIRE_METRICS"],
            CorsPolicy(config.cors_origins),
        )
    return parts


class _ServerHeaders:
    """hypercorn's ``date`` and ``server`` headers (``Config.response_headers``), built once
    a second instead of for every response (formatting the date was 2 % of an upload)."""

    def __init__(self, config: HypercornConfig) -> None:
        self._config = config
        self._second = -1
        self._headers: Headers = []

    def get(self) -> Headers:
        second = int(time.time())  # the Date header is wall-clock time, whatever trio's is
        if second != self._second:
            self._second, self._headers = second, self._config.response_headers("h11")
        return self._headers


def _encode(headers: dict[str, str]) -> Headers:
    return [(name.lower().encode(), value.encode("latin1")) for name, value in headers.items()]


def error_reply(error: ApiError) -> tuple[Headers, bytes]:
    """Headers and body of an :class:`ApiError` as app/__init__.py's ``json_error``
    renders it (a Quart ``Response``: Content-Type, Content-Length, then its headers)."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += _encode(error.headers)
    return headers, body


def cors_reply_headers(cors: CorsPolicy, origin: str | None) -> Headers:
    """What app/_cors.py's ``CorsPolicy.decorate`` adds to a response."""
    if not cors.enabled:
        return []
    headers: Headers = []
    if cors.allowed(origin):
        assert origin is not None
        headers.append((b"access-control-allow-origin", origin.encode("latin1")))
        headers.append((b"access-control-expose-headers", EXPOSE_HEADERS.encode()))
    headers.append((b"vary", b"Origin"))
    return headers


class Connection:
    """One accepted connection: hypercorn's worker awaits it in place of its ``TCPServer``
    (same arguments; app/_server.py installs it).

    Cancellation: ends the connection at once (hypercorn cancels its handlers after the
    graceful timeout).
    """

    def __init__(
        self, app: Any, config: HypercornConfig, context: Any, state: Any, stream: Any
    ) -> None:
        self._args = (app, config, context, state)
        self.config = config
        self.context = context
        self.stream = stream
        quart = getattr(app, "app", None)  # hypercorn's wrapper around the ASGI app
        enabled = getattr(getattr(quart, "asgi_http_class", None), "fast_paths", False)
        self._parts = _parts(quart) if enabled and quart is not None else None
        self._server_headers = _ServerHeaders(config)
        self._idle: trio.CancelScope | None = None  # the wait for the next request
        self._requests = 0

    def __await__(self) -> Generator[Any, None, None]:
        return self.run().__await__()

    async def run(self) -> None:
        if self._parts is None or not isinstance(self.stream, trio.SocketStream):
            await PromptCloseTCPServer(*self._args, self.stream)  # TLS, or the path is off
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._close_when_idle_at_shutdown)
                with contextlib.suppress(Disconnected):
                    await self._serve()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _close_when_idle_at_shutdown(self) -> None:
        await self.context.terminated.wait()
        if self._idle is not None:
            self._idle.cancel()

    async def _serve(self) -> None:
        """Serve the connection's requests until it ends.

        Raises:
            Disconnected: the connection ended without a response owed.
        """
        conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size
        )
        request: h11.Request | None = None
        while True:
            if request is None:
                request = await self._next_upload(conn)
                if request is None:  # not an upload: hypercorn's, until it hands it back
                    server = PromptCloseTCPServer(
                        *self._args,
                        self.stream,
                        initial=conn.trailing_data[0],
                        hand_back=True,
                        served=self._requests,
                    )
                    await server
                    back = server.handed_back
                    if back is None:
                        return
                    conn, request, self._requests = back.connection, back.request, back.requests
                    continue
            if not await self._upload(conn, request):
                return
            request = None
            conn.start_next_cycle()

    async def _receive(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(RECEIVE_BYTES))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _next_upload(self, conn: h11.Connection) -> h11.Request | None:
        """The next request if it is an upload; ``None`` to hand the connection over.

        Until its head is in, the connection is idle: the keep-alive timeout and a
        shutdown end it, as hypercorn's idle timer would.

        Raises:
            Disconnected: the client closed the connection, or it was idle too long, or
                the server is shutting down.
        """
        with trio.CancelScope() as idle:
            idle.deadline = trio.current_time() + self.config.keep_alive_timeout
            self._idle = idle
            if self.context.terminated.is_set():
                idle.cancel()
            try:
                return await self._read_head(conn)
            finally:
                self._idle = None
        raise Disconnected

    async def _read_head(self, conn: h11.Connection) -> h11.Request | None:
        while True:
            line = _request_line(conn.trailing_data[0])
            if line is False or (line is not None and upload_session_id(*line) is None):
                return None
            if line is not None:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as error:
                    await self._refuse(conn, error.error_status_hint)
                    raise Disconnected from None
                if isinstance(event, h11.Request):
                    return event
                if event is not h11.NEED_DATA:
                    raise Disconnected
            data = await self._receive()
            if not data:
                raise Disconnected
            conn.receive_data(data)

    async def _refuse(self, conn: h11.Connection, status: int) -> None:
        """A head h11 cannot parse: hypercorn's bare answer, then the connection closes."""
        headers = [(b"content-length", b"0"), (b"connection", b"close")]
        response = h11.Response(status_code=status, headers=headers + self._server_headers.get())
        with contextlib.suppress(h11.LocalProtocolError, Disconnected):
            await self._send(conn, response, h11.EndOfMessage())
            await linger(self.stream)

    async def _send(self, conn: h11.Connection, *events: h11.Event) -> None:
        """Send ``events`` in one write.

        Raises:
            Disconnected: the client has gone.
        """
        data = b"".join(conn.send(event) or b"" for event in events)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Disconnected from None

    async def _upload(self, conn: h11.Connection, request: h11.Request) -> bool:
        """Serve one upload request; whether the connection goes on.

        Raises:
            Disconnected: the client went away (no answer, the connection ends).
        """
        assert self._parts is not None
        parts = self._parts
        self._requests += 1
        await self.context.mark_request()
        session_id = upload_session_id(request.method, request.target)
        assert session_id is not None
        headers = RequestHeaders(request.headers)
        status, reply, payload = 204, [(b"content-type", b"text/html; charset=utf-8")], b""
        broken = False
        try:
            session = parts.registry.authorise(
                session_id, bearer_credential(headers.get(b"authorization"))
            )
            transfer_encoding = headers.get(b"transfer-encoding")
            async with UploadRequest(
                session,
                content_type=headers.get(b"content-type"),
                sequence=headers.get(b"x-sequence"),
                content_length=get_content_length(
                    headers.get(b"content-length"), transfer_encoding
                ),
                metrics=parts.metrics,
            ) as body:
                if conn.they_are_waiting_for_100_continue:
                    informational = h11.InformationalResponse(
                        status_code=100, headers=self._server_headers.get()
                    )
                    await self._send(conn, informational)
                result = await self._read_body(conn, body)
            # Quart's empty Response: its Content-Type and Content-Length, then the route's.
            reply += [(b"content-length", b"0"), *_encode(upload_reply_headers(result))]
        except ApiError as error:
            status = error.status
            reply, payload = error_reply(error)
        except Disconnected:
            raise
        except Exception:
            # A bug: this request gets hypercorn's 500 and the connection ends; the worker
            # and its other connections go on (as when an ASGI app raises).
            log.exception("upload_audio failed")
            status, reply, payload = 500, [(b"content-length", b"0")], b""
            broken = True
        reply += cors_reply_headers(parts.cors, headers.get(b"origin"))
        if conn.our_state is not h11.SEND_RESPONSE:
            raise Disconnected  # (a bug that broke the h11 state: nothing can be sent)
        _drop_buffered_body(conn)
        unread = conn.their_state is not h11.DONE
        if unread or broken:  # app/__init__.py's ``_close_if_body_unread``
            reply.append((b"connection", b"close"))
        reply += self._server_headers.get()
        if self._requests >= self.config.keep_alive_max_requests:
            reply.append((b"connection", b"close"))
        events: list[h11.Event] = [h11.Response(status_code=status, headers=reply)]
        if payload:
            events.append(h11.Data(data=payload))
        events.append(h11.EndOfMessage())
        await self._send(conn, *events)
        states: tuple[object, object] = (conn.our_state, conn.their_state)
        if states == (h11.DONE, h11.DONE) and not self.context.terminated.is_set():
            return True
        if unread or conn.trailing_data[0]:
            await linger(self.stream)  # the client is still sending: no reset
        return False

    async def _read_body(self, conn: h11.Connection, body: UploadBody) -> Any:
        """Feed the request's body to ``body`` as h11 parses it; then ``body.finish()``.

        Raises:
            ApiError: from ``body``; 408 when no data came for the idle timeout; 400 for a
                malformed body.
            Disconnected: the client went away.
        """
        eof = False
        # Moved on by body data only (not by any bytes: chunk headers dripping in one
        # byte at a time must not hold the session's upload for ever).
        deadline = trio.current_time() + body.idle_timeout_s
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as error:
                if eof:
                    raise Disconnected from None
                raise body.reject(
                    ApiError(400, "malformed_body", f"the request body is malformed: {error}")
                ) from None
            if isinstance(event, h11.Data):
                await body.feed(bytes(event.data))
                deadline = trio.current_time() + body.idle_timeout_s
            elif isinstance(event, h11.EndOfMessage):
                return await body.finish()
            elif event is h11.NEED_DATA:
                with trio.move_on_at(deadline):
                    data = await self._receive()
                    eof = not data
                    conn.receive_data(data)
                    continue
                raise body.idle()
            else:
                raise Disconnected


async def linger(stream: trio.SocketStream) -> None:
    """Close after an answer given before the body was read: send the FIN, then read and
    drop what the client still sends until it closes too or :data:`LINGER_S` has passed
    (closing a socket with unread data resets it, which can destroy the answer in the
    client's buffers; app/_server.py's ``PromptCloseTCPServer`` does the same)."""
    try:
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError):
        return
    with trio.move_on_after(LINGER_S):
        try:
            while await stream.receive_some(RECEIVE_BYTES):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _drop_buffered_body(conn: h11.Connection) -> None:
    """Read past the body already received, without waiting for more: an answer given
    before the body was read keeps the connection if the rest was already here."""
    while conn.their_state is h11.SEND_BODY:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return


class _HandingBackH11Protocol(H11Protocol):
    """hypercorn's h11 protocol, giving an upload request back to :class:`Connection`
    (``hand_back`` is set by ``PromptCloseTCPServer`` for connections that came from it)."""

    hand_back = False

    async def _create_stream(self, request: h11.Request) -> None:
        if self.hand_back and upload_session_id(request.method, request.target) is not None:
            raise HandBack(self.connection, request, self.keep_alive_requests)
        await super()._create_stream(request)


def install() -> None:
    """Make hypercorn's trio worker serve connections with :class:`Connection`."""
    hypercorn_trio_run.TCPServer = Connection  # type: ignore[attr-defined,assignment]
    hypercorn.protocol.H11Protocol = _HandingBackH11Protocol  # type: ignore[attr-defined]
