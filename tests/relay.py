"""A fault-injecting TCP relay for tests, in trio.

It listens on loopback and forwards every accepted connection to a target. Each
connection gets a :class:`Fault` from the relay's ``plan`` (called with the connection's
number, its first bytes, i.e. the request line, and a :class:`random.Random` seeded from the
relay's seed and that number), so runs are reproducible per connection:

- ``cut_up_at`` / ``cut_down_at``: close both sides once that many bytes went client→server
  (mid-upload body) or server→client (mid-stream, mid-event);
- ``delay_s``: latency added to every piece forwarded server→client;
- ``stall_down_at`` + ``stall_s``: stop forwarding server→client for a while at that offset;
- ``only``: cut only while the connection's latest request line contains these bytes (a
  kept-alive connection carries several requests); a cut that is due waits for one.

:meth:`Relay.cut_all` closes every open connection at once.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

PEEK_BYTES = 256


@dataclass(frozen=True)
class Fault:
    cut_up_at: int | None = None
    cut_down_at: int | None = None
    delay_s: float = 0.0
    stall_down_at: int | None = None
    stall_s: float = 0.0
    only: bytes | None = None


REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|PATCH|DELETE) /\S* HTTP/1\.1\r\n")
NO_FAULT = Fault()
#: A peer went away mid-copy: the connection ends, the relay carries on.
GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass(eq=False)
class Connection:
    number: int
    head: bytes
    fault: Fault
    scope: trio.CancelScope
    up: int = 0
    down: int = 0
    cut: str | None = None  # why it was cut, if it was
    request: bytes = b""  # the latest request line seen
    requests: list[bytes] = field(default_factory=list)  # every request line, in order

    def armed(self) -> bool:
        return self.fault.only is None or self.fault.only in self.request


@dataclass
class Relay:
    target_port: int
    seed: int = 0
    plan: Callable[[int, bytes, random.Random], Fault] = lambda n, head, rng: NO_FAULT
    target_host: str = "127.0.0.1"
    port: int = 0
    connections: list[Connection] = field(default_factory=list)
    _open: set[Connection] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cuts(self) -> list[Connection]:
        return [c for c in self.connections if c.cut is not None]

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def cut_all(self) -> int:
        """Close every open connection now; how many there were."""
        open_now = list(self._open)
        for conn in open_now:
            conn.cut = conn.cut or "cut_all"
            conn.scope.cancel()
        return len(open_now)

    async def _handle(self, client: trio.SocketStream) -> None:
        number = len(self.connections)
        async with client:
            head = b""
            with trio.move_on_after(10):
                head = await client.receive_some(PEEK_BYTES)
            if not head:
                return
            rng = random.Random(f"{self.seed}:{number}")
            conn = Connection(number, head, self.plan(number, head, rng), trio.CancelScope())
            conn.request = head.split(b"\r\n", 1)[0]
            self.connections.append(conn)
            self._open.add(conn)
            try:
                with conn.scope:
                    server = await trio.open_tcp_stream(self.target_host, self.target_port)
                    async with server, trio.open_nursery() as nursery:
                        await self._up(conn, head, server)
                        nursery.start_soon(self._pump_up, conn, client, server)
                        nursery.start_soon(self._pump_down, conn, server, client)
            except* GONE:
                conn.cut = conn.cut or "peer_gone"
            finally:
                self._open.discard(conn)

    async def _up(self, conn: Connection, data: bytes, server: trio.SocketStream) -> None:
        lines = REQUEST_LINE.findall(data)
        if lines:
            conn.request = lines[-1]
            conn.requests.extend(lines)
        cut = conn.fault.cut_up_at
        if cut is not None and conn.up + len(data) >= cut and conn.armed():
            keep = max(0, cut - conn.up)
            await server.send_all(data[:keep])
            conn.up += keep
            conn.cut = "up"
            conn.scope.cancel()
            await trio.lowlevel.checkpoint()  # raises Cancelled: the relay drops both sides
        await server.send_all(data)
        conn.up += len(data)

    async def _pump_up(
        self, conn: Connection, client: trio.SocketStream, server: trio.SocketStream
    ) -> None:
        while data := await client.receive_some(65536):
            await self._up(conn, data, server)
        # The client half-closed: pass that on, keep the answer flowing.
        await server.send_eof()

    async def _pump_down(
        self, conn: Connection, server: trio.SocketStream, client: trio.SocketStream
    ) -> None:
        fault = conn.fault
        stalled = False
        while data := await server.receive_some(65536):
            if fault.delay_s:
                await trio.sleep(fault.delay_s)
            if fault.stall_down_at is not None and not stalled:
                if conn.down + len(data) > fault.stall_down_at:
                    stalled = True
                    split = fault.stall_down_at - conn.down
                    await client.send_all(data[:split])
                    conn.down += split
                    data = data[split:]
                    await trio.sleep(fault.stall_s)
            cut = fault.cut_down_at
            if cut is not None and conn.down + len(data) >= cut and conn.armed():
                keep = max(0, cut - conn.down)
                await client.send_all(data[:keep])
                conn.down += keep
                conn.cut = "down"
                conn.scope.cancel()
                await trio.lowlevel.checkpoint()
            await client.send_all(data)
            conn.down += len(data)
        conn.scope.cancel()  # the server closed: so does the client side
