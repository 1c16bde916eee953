"""Run the voxwire server (hypercorn, trio worker).

Every flag has an environment variable twin (``VOXWIRE_<NAME>``); flags win.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys
from functools import partial

import trio

from app import ServerConfig, create_app, serve


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


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own arena (up to 8 per core), and the
    model threads' short-lived buffers fragment them. With two arenas (and Piper's
    onnxruntime arena off) the soak's RSS ran ~80-170 MB lower (bench/README.md). No-op
    off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_arena_max = -8
    libc.mallopt(m_arena_max, arenas)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit_malloc_arenas()
    try:
        config = ServerConfig.from_env(**vars(args))
    except (ValueError, TypeError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    trio.run(partial(serve, create_app(config), config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
