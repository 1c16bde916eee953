"""Run the voxwire server (hypercorn, trio worker).

Every flag has an environment variable twin (``VOXWIRE_<NAME>``); flags win.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from functools import partial

# numpy's OpenBLAS pool spins beside every Whisper decode (~110 ms of CPU each, measured
# by bench/batch.py) for matrix work that is tiny here: one thread. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import trio

from app import ServerConfig, create_app, limit_malloc_arenas, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python run.py",
        description="voxwire: real-time voice over plain HTTP/1.1.",
        epilog="Other settings (caps, timeouts, TTLs) come from VOXWIRE_* variables: "
        "see docs/operations.md.",
    )
    parser.add_argument("--host", help="address to bind (VOXWIRE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (VOXWIRE_PORT, default 8000)")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (VOXWIRE_LOG_LEVEL, default info)",
    )
    parser.add_argument(
        "--responder",
        dest="default_responder",
        choices=["echo", "none", "loopback", "llm"],
        help="responder for sessions that do not choose one (VOXWIRE_DEFAULT_RESPONDER)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = ServerConfig.from_env(**vars(args))
    except (ValueError, TypeError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if config.malloc_arenas > 0:
        limit_malloc_arenas(config.malloc_arenas)  # before any thread starts
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    trio.run(partial(serve, create_app(config), config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
