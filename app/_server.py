"""Serving the app with hypercorn's trio worker, with a draining shutdown."""

from __future__ import annotations

import logging
import math
import signal
import socket
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Event, RawData, Updated
from hypercorn.trio.run import worker_serve
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.utils import wrap_app

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from quart_trio import QuartTrio

    from app._config import ServerConfig

log = logging.getLogger(__name__)


def hypercorn_config(config: ServerConfig) -> HypercornConfig:
    """Hypercorn settings for long-lived streams (see docs/operations.md)."""
    hc = HypercornConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    # Only between requests; keep it above load balancers' idle timeouts (AWS 60 s).
    hc.keep_alive_timeout = config.keep_alive_timeout_s
    # A per-read deadline on the whole connection would kill streaming GETs: leave unset.
    hc.read_timeout = None
    hc.graceful_timeout = config.graceful_timeout_s
    hc.accesslog = None  # query strings may carry ?token=
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


def listening_sockets(hc: HypercornConfig, send_timeout_s: float) -> Sockets:
    """Hypercorn's sockets, with ``TCP_USER_TIMEOUT`` set (accepted sockets inherit it).

    A client that stops reading (or vanishes without a FIN) leaves hypercorn in a
    ``send_all`` that cancellation cannot interrupt (it is shielded): the response never
    ends, its session is never idle, and shutdown waits forever. The kernel then aborts
    the connection once sent data (or a zero-window probe) has gone unacknowledged for
    ``send_timeout_s``, which ends the send with an error.
    """
    sockets = hc.create_sockets()
    for sock in sockets.insecure_sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(send_timeout_s * 1000))
        sock.listen(hc.backlog)
    return sockets


class IdleDeadline:
    """hypercorn's keep-alive timer as one watcher task per connection.

    hypercorn's ``TrioSingleTask`` starts a task for every idle period and cancels it when
    the next request comes: about 0.2 ms per response (a stop and restart, measured in a
    loop), on every 20 ms upload POST. Here the watcher lives as long as the connection;
    a request only moves its deadline to infinity, the end of a response to now plus
    ``keep_alive_timeout``. Past the deadline, or when the worker shuts down while the
    connection is idle, the connection is closed, as hypercorn's own timer does.
    """

    def __init__(self, server: TCPServer) -> None:
        self._server = server
        self._scope: trio.CancelScope | None = None
        self._deadline = math.inf
        self._idle = False
        self._woken = trio.Event()
        self._ended = False

    async def restart(self, task_group: Any, action: object) -> None:
        """Idle from now (hypercorn's call; ``action`` is its own timer, not used)."""
        self._idle = True
        self._deadline = trio.current_time() + self._server.config.keep_alive_timeout
        if self._scope is None and not self._ended:
            self._scope = await task_group._nursery.start(self._watch)
        if self._scope is not None:
            self._scope.deadline = self._deadline
        self._woken.set()

    async def stop(self) -> None:
        """A request is in progress: no deadline."""
        self._idle = False
        self._deadline = math.inf
        if self._scope is not None:
            self._scope.deadline = math.inf

    def end(self) -> None:
        """The connection is closing anyway: the watcher ends without closing it."""
        self._ended = True
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope.deadline = self._deadline
            task_status.started(scope)
            await self._server.context.terminated.wait()
            while not self._idle:  # shutting down: close once the response has ended
                self._woken = trio.Event()
                await self._woken.wait()
        if self._ended:
            return
        with trio.CancelScope(shield=True):
            await self._server._initiate_server_close()


# How long a connection closed by the server, with the client still sending, goes on
# reading before it really closes (nginx's lingering_timeout is 5 s, lingering_time 30 s).
LINGER_S = 2.0


class HandBack(Exception):
    """Raised by the h11 protocol (app/_connection.py) on a request it gives back: the
    connection, at that request, returns to :class:`app._connection.Connection`."""

    def __init__(self, connection: Any, request: Any, requests: int) -> None:
        super().__init__()
        self.connection = connection  # the protocol's h11.Connection, the request parsed
        self.request = request
        self.requests = requests  # served on the connection so far (keep_alive_max_requests)


class PromptCloseTCPServer(TCPServer):
    """Hypercorn's connection handler, with one keep-alive watcher per connection
    (:class:`IdleDeadline`) that ends once the peer has closed the connection, and a
    lingering close.

    After a response, hypercorn restarts the connection's keep-alive timer
    (``ShieldedEndHTTPConnection`` in app/_asgi.py makes sure it does). When the client
    then closes the connection, hypercorn's reader ends but the timer does not: the
    handler, and its socket, waited out the whole ``keep_alive_timeout`` (75 s) for a
    client that was gone.

    An answer given before the request's body has arrived (a 404 or 429 to an upload)
    ends the connection. Hypercorn closed the socket right after it, and a socket closed
    with unread data, or that data arriving after the close, makes the kernel reset the
    connection: a reset can destroy the answer in the client's buffers before the client
    has read it (URLSession saw a 404 with an empty body). So the server sends its FIN and
    its reader goes on reading, and dropping, what the client still sends, until the
    client closes too or ``LINGER_S`` has passed; only then is the socket closed.
    """

    _lingering = False

    def __init__(
        self,
        *args: Any,
        initial: bytes = b"",
        hand_back: bool = False,
        served: int = 0,
        **kwargs: Any,
    ) -> None:
        """``initial``: bytes already read from the connection (app/_connection.py), served
        first; ``served``: requests it has served. ``hand_back``: the protocol may give the
        connection back (:class:`HandBack`), which ends this handler without closing the
        connection (``handed_back`` says so).
        """
        super().__init__(*args, **kwargs)
        self.idle_task = IdleDeadline(self)  # type: ignore[assignment]
        self._reader_done = trio.Event()  # the peer has closed (or the socket is gone)
        self._initial = initial
        self._hand_back = hand_back
        self._served = served
        self.handed_back: HandBack | None = None

    async def _read_data(self) -> None:
        protocol = self.protocol.protocol
        if self._hand_back and hasattr(protocol, "hand_back"):
            protocol.hand_back = True
            protocol.keep_alive_requests = self._served
        try:
            if self._initial:
                await self.protocol.handle(RawData(self._initial))
            await super()._read_data()
        except HandBack as back:
            self.handed_back = back
        finally:
            self._reader_done.set()
            self.idle_task.end()  # type: ignore[attr-defined]

    async def _close(self) -> None:
        if self.handed_back is not None:
            return  # the connection goes on, in app/_connection.py
        # (a close from the reader itself while lingering, on a protocol error: at once)
        if not self._reader_done.is_set() and not self._lingering:
            self._lingering = True
            try:
                await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError):
                pass
            else:
                with trio.move_on_after(LINGER_S):
                    await self._reader_done.wait()
        await super()._close()

    async def protocol_send(self, event: Event) -> None:
        # A response that ends after the peer has gone would start the timer again.
        if self._reader_done.is_set() and isinstance(event, Updated) and event.idle:
            return
        await super().protocol_send(event)


async def wait_for_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            return


async def serve(
    app: QuartTrio,
    config: ServerConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = wait_for_signal,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then drain.

    Draining refuses new sessions (503) and ends every open stream with its final chunk
    before hypercorn's graceful deadline. ``task_status`` reports the bound URLs.

    Cancellation: cancelling stops the server at once (tests do this).
    """

    async def trigger() -> None:
        if shutdown_trigger is None:
            await trio.sleep_forever()
        else:
            await shutdown_trigger()
        app.config["VOXWIRE_REGISTRY"].drain()
        # Let the ended responses flush their final chunk before hypercorn stops, and
        # give load balancers the notice period to see /readyz fail.
        await trio.sleep(max(0.05, config.shutdown_notice_s))

    from app._connection import install  # (it builds on this module's classes)

    install()
    hc = hypercorn_config(config)
    # hypercorn.trio.serve creates its own sockets; its worker_serve takes ours.
    await worker_serve(
        wrap_app(app, hc.wsgi_max_body_size, None),
        hc,
        sockets=listening_sockets(hc, config.send_timeout_s),
        shutdown_trigger=trigger,
        task_status=task_status,
    )
