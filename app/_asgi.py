"""quart-trio's per-request ASGI handler: the end of a response shielded, and upload_audio
served without Quart's request machinery.

``upload_audio`` is the hot path of every session (a client POSTs every 20-100 ms), and
what Quart spends on each request (a request object and its werkzeug headers, app and
request contexts, a nursery with two tasks, routing, before/after hooks, a response
object) was most of its server CPU (bench/README.md, "transport.py"). So POST and PUT to
``/api/sessions/<id>/upload_audio`` are served right here, at the ASGI level, by the same
code as the Quart route (app/routes/audio.py: ``take_upload`` and the header parsing),
with the response Quart would have produced, byte for byte: its headers, voxwire's JSON
errors, CORS and ``Connection: close`` when the body was not read
(tests/test_fast_paths.py holds the two paths side by side). One difference: an answer
given before the whole body was read (a 429 part-way) always closes the connection, where
Quart keeps it if its own reader had buffered the rest by then. Everything else, including
other methods on that path (405, OPTIONS preflights), goes to Quart as before.

Quart's before/after-request hooks do not run for the fast path: voxwire's own (CORS,
closing a connection whose body went unread) are reproduced here; a new hook that must
see uploads has to be added here too.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, cast

import trio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.sansio.utils import get_content_length

from app._cors import EXPOSE_HEADERS, CorsPolicy
from app._errors import ApiError
from app.routes._common import bearer_credential
from app.routes.audio import take_upload, upload_reply_headers

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hypercorn.typing import (
        ASGIReceiveCallable,
        ASGISendCallable,
        ASGISendEvent,
        HTTPResponseBodyEvent,
        HTTPResponseStartEvent,
    )
    from quart import Quart

    from app._config import ServerConfig
    from app._metrics import Metrics
    from app._registry import SessionRegistry

# The werkzeug rule ``/api/sessions/<session_id>/upload_audio``: a segment of one or more
# characters other than "/".
_UPLOAD_PATH = re.compile(r"/api/sessions/([^/]+)/upload_audio")
_UPLOAD_METHODS = frozenset(("POST", "PUT"))

Headers = list[tuple[bytes, bytes]]


class Disconnected(Exception):
    """The client went away before its request was read."""


class AsgiBody:
    """A request body read from ASGI ``receive``, as an async iterator of chunks (what
    Quart's ``request.body`` is to the route).

    Backpressure is hypercorn's: it holds a few messages for the app, then stops reading
    the socket, so nothing is buffered here.
    """

    def __init__(self, receive: ASGIReceiveCallable) -> None:
        self._receive = receive
        self.complete = False  # the last message of the body has been read
        self.disconnected = False

    def __aiter__(self) -> AsgiBody:
        return self

    async def __anext__(self) -> bytes:
        """The next non-empty chunk.

        Raises:
            StopAsyncIteration: the body is complete.
            Disconnected: the client went away first.
        """
        while not self.complete:
            if self.disconnected:
                raise Disconnected
            message = await self._receive()
            if message["type"] == "http.request":
                self.complete = not message.get("more_body", False)
                chunk = message.get("body", b"")
                if chunk:
                    return bytes(chunk)
            elif message["type"] == "http.disconnect":
                self.disconnected = True
        raise StopAsyncIteration

    async def drain(self) -> None:
        """Read and drop the rest of the body (until the client stops or goes)."""
        try:
            async for _ in self:
                pass
        except Disconnected:
            return


class RequestHeaders:
    """The request's headers as hypercorn passes them: names in lower case, in order."""

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
    """What the fast path takes from the app (its config), looked up once per app."""

    config: ServerConfig
    registry: SessionRegistry
    metrics: Metrics
    cors: CorsPolicy


_PARTS: weakref.WeakKeyDictionary[Quart, _AppParts] = weakref.WeakKeyDictionary()


def _parts(app: Quart) -> _AppParts:
    parts = _PARTS.get(app)
    if parts is None:
        config: ServerConfig = app.config["VOXWIRE_CONFIG"]
        parts = _PARTS[app] = _AppParts(
            config,
            app.config["VOXWIRE_REGISTRY"],
            app.config["VOXWIRE_METRICS"],
            CorsPolicy(config.cors_origins),
        )
    return parts


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


async def _send_reply(send: ASGISendCallable, status: int, headers: Headers, body: bytes) -> None:
    start = {"type": "http.response.start", "status": status, "headers": headers}
    end = {"type": "http.response.body", "body": body, "more_body": False}
    await send(cast("HTTPResponseStartEvent", start))
    await send(cast("HTTPResponseBodyEvent", end))


async def upload_audio(
    app: Quart,
    scope: dict[str, object],
    session_id: str,
    receive: ASGIReceiveCallable,
    send: ASGISendCallable,
) -> None:
    """POST/PUT ``upload_audio`` at the ASGI level (see the module's docstring).

    Cancellation: ends the request; a client that went away gets no response.
    """
    parts = _parts(app)
    headers = RequestHeaders(cast("list[tuple[bytes, bytes]]", scope["headers"]))
    transfer_encoding = headers.get(b"transfer-encoding")
    content_length = get_content_length(headers.get(b"content-length"), transfer_encoding)
    body = AsgiBody(receive)
    status, reply, payload = 204, [(b"content-type", b"text/html; charset=utf-8")], b""
    try:
        session = parts.registry.authorise(
            session_id, bearer_credential(headers.get(b"authorization"))
        )
        result = await take_upload(
            session,
            body,
            content_type=headers.get(b"content-type"),
            sequence=headers.get(b"x-sequence"),
            content_length=content_length,
            metrics=parts.metrics,
        )
        # Quart's empty Response: its Content-Type and Content-Length, then the route's.
        reply += [(b"content-length", b"0"), *_encode(upload_reply_headers(result))]
    except ApiError as error:
        status = error.status
        reply, payload = error_reply(error)
    except Disconnected:
        return
    reply += cors_reply_headers(parts.cors, headers.get(b"origin"))
    has_body = bool(content_length) or "chunked" in (transfer_encoding or "").lower()
    if not has_body or body.complete:
        await _send_reply(send, status, reply, payload)
        return
    # Answered before the body was read (app/__init__.py's ``_close_if_body_unread``): the
    # connection ends after this response. Hypercorn hands the app the disconnect inside
    # that last send, so the rest of the body is drained meanwhile to leave room for it.
    reply.append((b"connection", b"close"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(body.drain)
        await _send_reply(send, status, reply, payload)
        nursery.cancel_scope.cancel()


class ShieldedEndHTTPConnection(TrioASGIHTTPConnection):
    """Sends a response's last message in a shielded scope; serves ``upload_audio`` itself.

    Hypercorn recycles a keep-alive connection inside that last ``send``: it tells the app
    ``http.disconnect`` and then restarts the connection's idle timer. quart-trio cancels
    the request's nursery as soon as it reads that disconnect, so the timer's restart is
    cancelled half-way and the connection never times out: an idle keep-alive client held
    its socket forever. The shielded send is bounded like any other (hypercorn already
    shields the socket write; ``TCP_USER_TIMEOUT`` ends a stuck one, app/_server.py).
    Cancelling a response still works everywhere else: only its final message is shielded.

    POST and PUT to ``upload_audio`` skip Quart altogether (see the module's docstring;
    no nursery cancels them, so their last send needs no shield). ``fast_paths = False``
    on a subclass sends them through Quart too (the tests compare the two).
    """

    fast_paths: ClassVar[bool] = True

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if self.fast_paths and self.scope["method"] in _UPLOAD_METHODS:
            match = _UPLOAD_PATH.fullmatch(self.scope["path"])
            if match is not None and not self.scope.get("root_path"):
                scope = cast("dict[str, object]", self.scope)
                await upload_audio(self.app, scope, match[1], receive, send)
                return

        async def send_shielding_the_end(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await super().__call__(receive, send_shielding_the_end)
