"""quart-trio's per-request ASGI handler, with the end of a response shielded."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import trio
from quart_trio.asgi import TrioASGIHTTPConnection

if TYPE_CHECKING:
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent


class ShieldedEndHTTPConnection(TrioASGIHTTPConnection):
    """Sends a response's last message in a shielded scope.

    Hypercorn recycles a keep-alive connection inside that last ``send``: it tells the app
    ``http.disconnect`` and then restarts the connection's idle timer. quart-trio cancels
    the request's nursery as soon as it reads that disconnect, so the timer's restart is
    cancelled half-way and the connection never times out: an idle keep-alive client held
    its socket forever. The shielded send is bounded like any other (hypercorn already
    shields the socket write; ``TCP_USER_TIMEOUT`` ends a stuck one, app/_server.py).
    Cancelling a response still works everywhere else: only its final message is shielded.

    ``fast_paths``: POST and PUT to ``upload_audio`` over HTTP/1.1 never reach this class
    (app/_connection.py serves them on h11 directly); ``False`` on a subclass sends them
    through Quart too (the tests compare the two).
    """

    fast_paths: ClassVar[bool] = True

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        async def send_shielding_the_end(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await super().__call__(receive, send_shielding_the_end)
