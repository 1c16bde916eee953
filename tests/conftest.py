"""Fixtures: the real app under hypercorn on an ephemeral loopback port, httpx clients."""

from __future__ import annotations

import os

# as run.py does for the server (in-process here): before numpy loads, where it has not
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import trio

from app import ServerConfig, create_app, serve
from tests import tools

if TYPE_CHECKING:
    from app._registry import SessionRegistry


@dataclass
class Running:
    url: str
    app: Any
    config: ServerConfig

    @property
    def registry(self) -> SessionRegistry:
        reg: SessionRegistry = self.app.config["VOXWIRE_REGISTRY"]
        return reg


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """Start a server with config overrides; it stops when the test ends."""

    async def start(**overrides: Any) -> Running:
        config = ServerConfig(host="127.0.0.1", port=0, **overrides)
        app = create_app(config)
        binds = await nursery.start(partial(serve, app, config, shutdown_trigger=None))
        return Running(binds[0], app, config)

    return start


@pytest.fixture
async def server(start_server: StartServer) -> Running:
    return await start_server()


@pytest.fixture
async def client(server: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c


@dataclass
class SessionHandle:
    id: str
    token: str
    urls: dict[str, str]
    body: dict[str, Any]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def create_session(client: httpx.AsyncClient, **config: Any) -> SessionHandle:
    r = await client.post("/api/sessions", json=config or None)
    assert r.status_code == 201, r.text
    body = r.json()
    return SessionHandle(body["id"], body["token"], body["urls"], body)


def tone(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    """A recognisable int16 test signal (no zero runs, so silence padding is obvious)."""
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t) + 1000).astype(np.int16)


def count_tasks() -> int:
    """Every task alive in this trio run."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(c) for n in task.child_nurseries for c in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


async def eventually(predicate: Callable[[], bool], interval: float = 0.05) -> None:
    """Poll server-side state the test cannot wait on directly (the caller bounds it)."""
    while not predicate():  # noqa: ASYNC110 - no event exists for this state
        await trio.sleep(interval)


def free_port() -> int:
    """A loopback port free now (for servers started in another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def never_reading_stream(url: str, s: SessionHandle) -> socket.socket:
    """A raw client that requests stream_audio with a tiny receive window, then never reads.

    The caller closes the socket.
    """
    host, port = url.rsplit("/", 1)[1].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        sock.connect((host, int(port)))
    except BlockingIOError:
        pass
    await trio.lowlevel.wait_writable(sock)
    head = (
        f"GET {s.urls['stream_audio']} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {s.token}\r\n\r\n"
    )
    sock.send(head.encode())
    return sock


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under CI nothing may be skipped for a missing tool: stop here, naming them all."""
    if tools.on_ci() and tools.NEEDED:
        lines = "\n".join(f"  {reason}" for reason in tools.NEEDED.values())
        pytest.exit(f"CI=true and tools are missing (.ci/system-deps installs them):\n{lines}", 3)
