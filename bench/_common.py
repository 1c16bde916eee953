"""What the benchmarks share: ``run.py`` as a subprocess on a free port."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
# The checkout whose run.py the benches start: this one, or a baseline (another commit's
# worktree) to compare against in the same session.
SERVER_ROOT = Path(os.environ.get("VOXWIRE_BENCH_SERVER_ROOT") or ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the server ------------------------------------------------------------------------


class Server:
    """``run.py`` in a subprocess, its log in a file; ``env`` is added to (and wins over)
    this process's environment."""

    def __init__(
        self,
        log_path: Path,
        *args: str,
        ready_path: str = "/healthz",
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self.args = args
        self.ready_path = ready_path
        self.env = dict(env or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.spawn()
        await self.wait_ready()

    def spawn(self) -> None:
        self.port = free_port()
        env = dict(os.environ) | self.env
        env.setdefault("VOXWIRE_MAX_SESSIONS", "1000")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "run.py",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.args,
            ],
            cwd=SERVER_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.ps = psutil.Process(self.proc.pid)

    async def wait_ready(self) -> None:
        assert self.proc is not None
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:
            with trio.fail_after(120):
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(
                            f"server exited with {self.proc.returncode}; see {self.log_path}"
                        )
                    try:
                        if (await client.get(self.ready_path)).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def cpu_s(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


# -- /metrics ----------------------------------------------------------------------------

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def sample_labels(key: str) -> tuple[str, dict[str, str]]:
    """``'name{a="x",b="y"}'`` (a key of ``transport.server_counters``) -> name and labels."""
    name, _, rest = key.partition("{")
    return name, dict(_LABEL.findall(rest))


def by_label(samples: dict[str, float], name: str, label: str) -> dict[str, float]:
    """The samples of ``name`` by the value of ``label`` (summed over the other labels)."""
    out: dict[str, float] = {}
    for key, value in samples.items():
        n, labels = sample_labels(key)
        if n == name and label in labels:
            out[labels[label]] = out.get(labels[label], 0.0) + value
    return out


def histogram_delta(
    before: dict[str, float], after: dict[str, float], name: str, label: str
) -> dict[str, list[tuple[float, float]]]:
    """The cumulative buckets ``(le, count)`` that histogram ``name`` gained between two
    scrapes, by the value of ``label``: empty when the server does not expose it."""
    out: dict[str, dict[float, float]] = {}
    for key, value in after.items():
        n, labels = sample_labels(key)
        if n != f"{name}_bucket" or label not in labels or "le" not in labels:
            continue
        le = float(labels["le"])
        per = out.setdefault(labels[label], {})
        per[le] = per.get(le, 0.0) + value - before.get(key, 0.0)
    return {k: sorted(v.items()) for k, v in out.items()}


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus's estimate of quantile ``q`` (0..1) from cumulative ``(le, count)`` buckets:
    linear inside the bucket that holds it; its lower bound when that is the +Inf bucket;
    NaN without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 0)
        lower, below = le, count
    return lower
