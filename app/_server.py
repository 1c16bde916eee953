"""Serving the app with hypercorn's trio worker, with a draining shutdown."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

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

    await hypercorn_serve(
        app, hypercorn_config(config), shutdown_trigger=trigger, task_status=task_status
    )
