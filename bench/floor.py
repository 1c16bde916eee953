"""The floor for bench/transport.py: the same HTTP work on bare trio + h11, nothing else.

- ``POST`` (or ``PUT``) any path: the body is read and dropped, answered ``204``;
- ``GET`` any path: ``200 audio/wav``, chunked: a 44-byte WAV header, then 640 bytes
  (20 ms of 16 kHz PCM16 silence) every 20 ms, each frame its own chunk, until the
  client goes away. One ``trio.sleep_until`` schedule per stream, as the plainest
  server would write it.

Keep-alive on both. No routing, auth, JSON, validation or audio handling: what this
costs is the least a trio + h11 process can spend on that traffic.

``--asgi`` serves the same through hypercorn's trio worker (voxwire's HTTP server) and a
bare ASGI app instead: what hypercorn itself costs, the least an ASGI-level path in
voxwire can get to. ``--inline`` also answers the POSTs inside hypercorn's h11 protocol, in
the connection's reader task (no ASGI stream, app task or messages per request; GETs go to
the ASGI app): the least voxwire's own upload stream (app/_uploads.py) can get to.

    .venv/bin/python bench/floor.py --port 8123
    .venv/bin/python bench/floor.py --port 8123 --asgi
    .venv/bin/python bench/floor.py --port 8123 --inline
"""

from __future__ import annotations

import argparse
import struct

import h11
import trio

FRAME = bytes(640)
FRAME_S = 0.020
WAV_HEADER = (
    b"RIFF"
    + struct.pack("<I", 0xFFFFFFFF)
    + b"WAVEfmt "
    + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    + b"data"
    + struct.pack("<I", 0xFFFFFFFF)
)
assert len(WAV_HEADER) == 44


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        conn.receive_data(await stream.receive_some(65536))


async def _send(conn: h11.Connection, stream: trio.SocketStream, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def handle(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = await _next_event(conn, stream)
            if not isinstance(event, h11.Request):
                return  # the client closed the connection (or broke the protocol)
            if event.method == b"GET":
                headers = [(b"content-type", b"audio/wav"), (b"cache-control", b"no-cache")]
                await _send(conn, stream, h11.Response(status_code=200, headers=headers))
                await _send(conn, stream, h11.Data(data=WAV_HEADER))
                due = trio.current_time()
                while True:
                    due += FRAME_S
                    await trio.sleep_until(due)
                    await _send(conn, stream, h11.Data(data=FRAME))
            while not isinstance(await _next_event(conn, stream), h11.EndOfMessage):
                pass
            await _send(conn, stream, h11.Response(status_code=204, headers=[]))
            await _send(conn, stream, h11.EndOfMessage())
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await stream.aclose()


async def _stream_asgi(send) -> None:
    due = trio.current_time()
    while True:
        due += FRAME_S
        await trio.sleep_until(due)
        await send({"type": "http.response.body", "body": FRAME, "more_body": True})


async def asgi_app(scope, receive, send) -> None:
    """The same work as an ASGI app (for ``--asgi``)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "GET":
        headers = [(b"content-type", b"audio/wav"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": WAV_HEADER, "more_body": True})
        async with trio.open_nursery() as nursery:
            # Hypercorn drops writes to a closed connection without an error: only
            # ``receive`` tells that the client has gone.
            nursery.start_soon(_stream_asgi, send)
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()
        return
    while (message := await receive())["type"] == "http.request" and message.get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _serve_posts_inline() -> None:
    """Patch hypercorn's h11 protocol so that POSTs never reach a stream or the app."""
    import hypercorn.protocol
    from hypercorn.protocol.events import Body, EndBody, Request, Response, StreamClosed
    from hypercorn.protocol.h11 import H11Protocol

    class InlinePost:
        def __init__(self, send) -> None:
            self.send = send

        async def handle(self, event) -> None:
            if isinstance(event, EndBody):
                await self.send(Response(stream_id=1, status_code=204, headers=[]))
                await self.send(EndBody(stream_id=1))
                await self.send(StreamClosed(stream_id=1))
            elif not isinstance(event, (Request, Body, StreamClosed)):
                raise AssertionError(event)

    class InlineH11Protocol(H11Protocol):
        async def _create_stream(self, request: h11.Request) -> None:
            if request.method != b"POST":
                await super()._create_stream(request)
                return
            self.stream = InlinePost(self.stream_send)  # type: ignore[assignment]
            self.keep_alive_requests += 1

    hypercorn.protocol.H11Protocol = InlineH11Protocol  # ProtocolWrapper's name for it


async def main(port: int, host: str, asgi: bool, inline: bool = False) -> None:
    if not asgi and not inline:
        await trio.serve_tcp(handle, port, host=host)
        return
    from hypercorn.config import Config
    from hypercorn.trio import serve

    if inline:
        _serve_posts_inline()

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    await serve(asgi_app, config)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--asgi", action="store_true", help="hypercorn + a bare ASGI app")
    parser.add_argument("--inline", action="store_true", help="POSTs inside hypercorn's h11")
    args = parser.parse_args()
    trio.run(main, args.port, args.host, args.asgi, args.inline)
