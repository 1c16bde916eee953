"""Transport benchmark: N concurrent loopback sessions against one voxwire process.

Not a test: it starts ``run.py`` as a subprocess on a free port, and for each level N
runs N sessions at once. Each session creates itself with ``responder: loopback``, opens
``stream_audio`` and, in real time, POSTs 20 ms of PCM16 (a quiet 400 Hz tone) every
20 ms while reading its stream and timing every chunk it receives. After a warmup it
measures for ``--seconds`` and prints the figures (see bench/README.md).

    .venv/bin/python bench/transport.py --sessions 10 --seconds 5     # quick check
    .venv/bin/python bench/transport.py                                # 10, 100, 500 x 20 s

``--cost`` instead measures server CPU per upload POST and per open stream, against
bench/floor.py (trio + h11 doing the same HTTP work) and ``floor.py --asgi`` (hypercorn
and a bare ASGI app), interleaved in one run (bench/README.md, "transport.py"):

    .venv/bin/python bench/transport.py --cost
    .venv/bin/python bench/transport.py --cost --cost-baseline /tmp/vox-before  # before/after

Needs ``psutil`` (dev extra) besides the project's dependencies; ``--py-spy`` needs py-spy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import psutil
import trio
from _common import Server, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

RATE = 16000  # session input and output rate (the defaults)
BYTES_PER_S = RATE * 2
WAV_HEADER = 44
TONE_HZ = 400  # 40-sample period: every 20 ms chunk is the same bytes
TONE_AMPLITUDE = 1000  # about -30 dBFS; the phase offset keeps every sample non-zero
MAX_BATCH_S = 0.5  # a late uploader sends at most this much backlog; older audio is skipped


def tone_chunk(ms: int) -> bytes:
    n = np.arange(RATE * ms // 1000)
    x = TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * (n + 0.5) / RATE)
    return np.round(x).astype("<i2").tobytes()


def pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


async def server_counters(client: httpx.AsyncClient) -> dict[str, float]:
    """The voxwire_* samples of /metrics (name with labels -> value)."""
    try:
        text = (await client.get("/metrics")).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("voxwire_"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


# -- one session ------------------------------------------------------------------------


@dataclass
class SessionRecord:
    arrivals: list[float] = field(default_factory=list)  # trio time of each stream chunk
    sizes: list[int] = field(default_factory=list)  # its bytes (the first holds the header)
    tone_samples: list[tuple[float, int, int]] = field(default_factory=list)  # t, nonzero, n
    posts: list[tuple[float, float, int]] = field(default_factory=list)  # start, latency, chunks
    skipped_chunks: int = 0
    stream_ended_at: float | None = None


@dataclass
class Level:
    n: int
    chunk_ms: int
    stop: trio.Event = field(default_factory=trio.Event)
    ready: int = 0
    failed: int = 0
    settled: trio.Event = field(default_factory=trio.Event)
    errors: Counter[str] = field(default_factory=Counter)
    records: list[SessionRecord] = field(default_factory=list)

    def note_setup(self, ok: bool) -> None:
        if ok:
            self.ready += 1
        else:
            self.failed += 1
        if self.ready + self.failed >= self.n:
            self.settled.set()


def error_class(exc: BaseException) -> str:
    return type(exc).__name__


async def uploader(client, url, auth, level: Level, rec: SessionRecord) -> None:
    chunk_s = level.chunk_ms / 1000
    chunk = tone_chunk(level.chunk_ms)
    max_batch = max(1, round(MAX_BATCH_S / chunk_s))
    headers = {**auth, "Content-Type": "application/octet-stream"}
    t0 = trio.current_time() + random.random() * chunk_s  # clients are not in phase
    sent = 0  # chunks of the schedule dealt with (sent or skipped)
    while True:
        await trio.sleep_until(t0 + sent * chunk_s)
        start = trio.current_time()
        due = int((start - t0) / chunk_s) + 1 - sent  # late: send the backlog in one POST
        if due > max_batch:
            rec.skipped_chunks += due - max_batch
            sent += due - max_batch
            due = max_batch
        sent += due
        try:
            r = await client.post(url, content=chunk * due, headers=headers)
        except httpx.HTTPError as exc:
            level.errors[f"upload {error_class(exc)}"] += 1
            await trio.sleep(0.1)
            continue
        rec.posts.append((start, trio.current_time() - start, due))
        if r.status_code != 204:
            level.errors[f"upload HTTP {r.status_code}"] += 1
            retry = r.headers.get("Retry-After")
            if retry and retry.isdigit():
                await trio.sleep(min(int(retry), 5))


async def reader(resp: httpx.Response, level: Level, rec: SessionRecord) -> None:
    offset = 0  # stream bytes seen
    carry = b""
    try:
        async for data in resp.aiter_raw():
            now = trio.current_time()
            rec.arrivals.append(now)
            rec.sizes.append(len(data))
            if offset + len(data) > WAV_HEADER:
                pcm = carry + (data[WAV_HEADER - offset :] if offset < WAV_HEADER else data)
                usable = len(pcm) & ~1
                samples = np.frombuffer(pcm[:usable], dtype="<i2")
                carry = pcm[usable:]
                rec.tone_samples.append((now, int(np.count_nonzero(samples)), len(samples)))
            offset += len(data)
    except httpx.HTTPError as exc:
        if not level.stop.is_set():
            level.errors[f"stream {error_class(exc)}"] += 1
        return
    if not level.stop.is_set():
        rec.stream_ended_at = trio.current_time()
        level.errors["stream ended early"] += 1


async def run_session(base_url: str, level: Level, setup: trio.Semaphore) -> None:
    rec = SessionRecord()
    level.records.append(rec)
    timeout = httpx.Timeout(15.0)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    session_id = auth = None
    noted = False

    def note(ok: bool) -> None:
        nonlocal noted
        if not noted:
            noted = True
            level.note_setup(ok)

    # One client per session: a shared pool scans its connections on every request.
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout, limits=limits, verify=False
    ) as client:
        try:
            async with setup:
                r = await client.post("/api/sessions", json={"responder": "loopback"})
                if r.status_code != 201:
                    level.errors[f"create HTTP {r.status_code}"] += 1
                    return
                info = r.json()
                session_id = info["id"]
                auth = {"Authorization": f"Bearer {info['token']}"}
                stream = client.stream("GET", info["urls"]["stream_audio"], headers=auth)
                resp = await stream.__aenter__()
            try:
                if resp.status_code != 200:
                    level.errors[f"stream HTTP {resp.status_code}"] += 1
                    return
                note(True)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader, resp, level, rec)
                    nursery.start_soon(
                        uploader, client, info["urls"]["upload_audio"], auth, level, rec
                    )
                    await level.stop.wait()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await stream.__aexit__(None, None, None)
        except Exception as exc:  # a bench counts failures, it does not stop
            phase = "setup" if not noted else "session"
            level.errors[f"{phase} {error_class(exc)}"] += 1
        finally:
            note(False)
            if session_id is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(15):
                    try:
                        r = await client.delete(f"/api/sessions/{session_id}", headers=auth)
                        if r.status_code != 204:
                            level.errors[f"delete HTTP {r.status_code}"] += 1
                    except httpx.HTTPError as exc:
                        level.errors[f"delete {error_class(exc)}"] += 1


# -- measuring --------------------------------------------------------------------------


class HealthProbe(threading.Thread):
    """GET /healthz every ``period`` from a thread of its own, on a keep-alive connection.

    It does not wait for the client's trio loop, so its latency is mostly the server's
    responsiveness (plus, at worst, a GIL switch interval of 5 ms).
    """

    def __init__(self, port: int, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.period = period
        self.measuring = threading.Event()
        self.done = threading.Event()
        self.latencies: list[float] = []
        self.failures = 0

    def run(self) -> None:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=15)
        while not self.done.is_set():
            start = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                if self.measuring.is_set():
                    self.latencies.append(time.perf_counter() - start)
            except (OSError, ValueError):
                self.failures += 1
                conn.close()
                conn = HTTPConnection("127.0.0.1", self.port, timeout=15)
            self.done.wait(max(0.0, self.period - (time.perf_counter() - start)))
        conn.close()


async def loop_lag(out: list[float], period: float = 0.01) -> None:
    """How late the client's own trio loop wakes up (its saturation shows here)."""
    due = trio.current_time()
    while True:
        due += period
        await trio.sleep_until(due)
        late = trio.current_time() - due
        out.append(late)
        if late > period:
            due = trio.current_time()


def stall_ms(rec: SessionRecord, t0: float, t1: float) -> float:
    """Silence a real-time player would insert within [t0, t1].

    The player starts at the first byte and plays 32 kB/s while it holds audio; when it
    runs dry it waits for the next chunk (so a stall delays, never skips, later audio).
    """
    if not rec.arrivals:
        return (t1 - t0) * 1000
    buffered = float(rec.sizes[0] - WAV_HEADER)
    last = rec.arrivals[0]
    stalled = 0.0
    for t, n in zip(rec.arrivals[1:], rec.sizes[1:], strict=True):
        dry = last + buffered / BYTES_PER_S
        if dry < t:
            stalled += max(0.0, min(t, t1) - max(dry, t0))
            buffered = 0.0
        else:
            buffered -= (t - last) * BYTES_PER_S
        buffered += n
        last = t
    dry = last + buffered / BYTES_PER_S
    if dry < t1:
        stalled += t1 - max(dry, t0)
    return stalled * 1000


def summarise(level: Level, t0: float, t1: float) -> dict:
    wall = t1 - t0
    gaps: list[float] = []
    bytes_in_window = 0
    nonzero = total = 0
    stalls = []
    latencies: list[float] = []
    posts = chunks_posted = skipped = 0
    for rec in level.records:
        arr = np.asarray(rec.arrivals)
        sizes = np.asarray(rec.sizes)
        inside = (arr >= t0) & (arr <= t1)
        a = arr[inside]
        if len(a) > 1:
            gaps.extend(np.diff(a) * 1000)
        bytes_in_window += int(sizes[inside].sum()) if len(arr) else 0
        for t, nz, n in rec.tone_samples:
            if t0 <= t <= t1:
                nonzero += nz
                total += n
        stalls.append(stall_ms(rec, t0, t1))
        for start, latency, due in rec.posts:
            if t0 <= start <= t1:
                latencies.append(latency * 1000)
                posts += 1
                chunks_posted += due
        skipped += rec.skipped_chunks
    n_ok = max(1, level.ready)
    stalls_arr = np.asarray(stalls)
    return {
        "sessions": level.n,
        "ready": level.ready,
        "gap_p50_ms": pct(gaps, 50),
        "gap_p99_ms": pct(gaps, 99),
        "gap_max_ms": max(gaps) if gaps else math.nan,
        "stream_chunks": len(gaps),
        "stream_rate_pct": 100 * bytes_in_window / (BYTES_PER_S * wall * n_ok),
        "tone_pct": 100 * nonzero / total if total else math.nan,
        "stall_ms_total": float(stalls_arr.sum()),
        "stall_pct": 100 * float(stalls_arr.sum()) / (1000 * wall * n_ok),
        "sessions_stalled": int((stalls_arr > 0).sum()),
        "posts": posts,
        "posts_per_s": posts / wall,
        "post_p50_ms": pct(latencies, 50),
        "post_p99_ms": pct(latencies, 99),
        "post_max_ms": max(latencies) if latencies else math.nan,
        "upload_rate_pct": 100 * chunks_posted * level.chunk_ms / 1000 / (wall * n_ok),
        "chunks_per_post": chunks_posted / posts if posts else math.nan,
        "skipped_s": skipped * level.chunk_ms / 1000,
        "errors": dict(level.errors),
    }


async def run_level(server: Server, n: int, args, baseline_rss: int) -> dict:
    level = Level(n, args.chunk_ms)
    setup = trio.Semaphore(args.setup_concurrency)
    lag: list[float] = []
    me = psutil.Process()
    log_offset = server.log_size()
    result: dict = {}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=15) as probe:
        before_level_rss = server.rss()
        async with trio.open_nursery() as nursery:
            t_setup = trio.current_time()
            for _ in range(n):
                nursery.start_soon(run_session, server.base_url, level, setup)
            with trio.move_on_after(args.setup_timeout):
                await level.settled.wait()
            setup_s = trio.current_time() - t_setup
            lag_scope = trio.CancelScope()

            async def lag_task() -> None:
                with lag_scope:
                    await loop_lag(lag)

            nursery.start_soon(lag_task)
            health = HealthProbe(server.port)
            health.start()
            await trio.sleep(args.warmup)
            c0 = await server_counters(probe)
            s_cpu0, c_cpu0 = server.cpu_s(), sum(me.cpu_times()[:2])
            t0 = trio.current_time()
            health.measuring.set()
            peak_rss = server.rss()
            end = t0 + args.seconds
            while trio.current_time() < end and server.alive():
                await trio.sleep(min(1.0, end - trio.current_time()))
                peak_rss = max(peak_rss, server.rss()) if server.alive() else peak_rss
            t1 = trio.current_time()
            health.measuring.clear()
            health.done.set()
            alive = server.alive()
            s_cpu1 = server.cpu_s() if alive else s_cpu0
            c_cpu1 = sum(me.cpu_times()[:2])
            c1 = await server_counters(probe) if alive else {}
            lag_in = list(lag)
            level.stop.set()  # each session closes its stream and DELETEs itself
            lag_scope.cancel()
            t_clean = trio.current_time()
            nursery.cancel_scope.deadline = t_clean + 60
        cleanup_s = trio.current_time() - t_clean
        result = summarise(level, t0, t1)
        wall = t1 - t0
        delta = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1 if k.endswith("_total")}
        result.update(
            setup_s=setup_s,
            cleanup_s=cleanup_s,
            server_alive=alive,
            server_cpu_pct=100 * (s_cpu1 - s_cpu0) / wall,
            client_cpu_pct=100 * (c_cpu1 - c_cpu0) / wall,
            rss_mb=peak_rss / 2**20,
            rss_before_level_mb=before_level_rss / 2**20,
            rss_baseline_mb=baseline_rss / 2**20,
            rss_per_session_kb=(peak_rss - baseline_rss) / 1024 / max(1, level.ready),
            lag_p99_ms=pct(np.asarray(lag_in) * 1000, 99),
            lag_max_ms=max(lag_in) * 1000 if lag_in else math.nan,
            health_p50_ms=pct(np.asarray(health.latencies) * 1000, 50),
            health_p99_ms=pct(np.asarray(health.latencies) * 1000, 99),
            health_max_ms=max(health.latencies) * 1000 if health.latencies else math.nan,
            server_underruns=delta.get("voxwire_stream_underruns_total", 0),
            server_readers_dropped=delta.get("voxwire_stream_readers_dropped_total", 0),
            server_throttled=delta.get("voxwire_upload_throttled_total", 0),
        )
        result["sessions_left"] = None
        if alive:
            with trio.move_on_after(20):
                while True:
                    try:
                        left = (await probe.get("/readyz")).json().get("sessions")
                    except (httpx.HTTPError, ValueError):
                        left = None
                    result["sessions_left"] = left
                    if left == 0:
                        break
                    await trio.sleep(0.2)
    log = server.log_since(log_offset)
    result["log_lines"] = {
        "warnings": len(re.findall(r" WARNING ", log)),
        "errors": len(re.findall(r" (?:ERROR|CRITICAL) ", log)),
        "tracebacks": log.count("Traceback (most recent call last)"),
        "readers_dropped": log.count("slower than real time"),
    }
    return result


# -- cost: server CPU per upload POST and per open stream, voxwire against the floor -----
#
# The load comes from a raw-socket client (pre-built requests, a minimal response parser)
# so that the generator stays cheap next to the servers it measures: both share the
# machine's 2 cores with it.

FLOOR_SCRIPT = Path(__file__).resolve().parent / "floor.py"


class FloorServer(Server):
    """bench/floor.py (or ``--cost-floor``) in a subprocess (the interface of :class:`Server`)."""

    def __init__(self, log_path: Path, script: Path, *args: str) -> None:
        super().__init__(log_path, *args)
        self.script = script

    def spawn(self) -> None:
        self.port = free_port()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), "--port", str(self.port), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.ps = psutil.Process(self.proc.pid)

    async def wait_ready(self) -> None:
        with trio.fail_after(30):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return


class VoxwireAt(Server):
    """``run.py`` of another checkout (``--cost-baseline``), e.g. the commit before a change."""

    def __init__(self, root: Path, log_path: Path, *args: str, ready_path: str) -> None:
        super().__init__(log_path, *args, ready_path=ready_path)
        self.root = root

    def spawn(self) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.setdefault("VOXWIRE_MAX_SESSIONS", "1000")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "run.py", "--host", "127.0.0.1", "--port", str(self.port), *self.args],
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.ps = psutil.Process(self.proc.pid)


class RawConnection:
    """One keep-alive HTTP/1.1 connection: send prepared bytes, read one response."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.buffer += data

    async def response(self) -> tuple[int, bool]:
        """Read one response (Content-Length or no body): its status, and whether the
        server asked to close."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self.buffer[:end]).decode("latin-1").lower()
        del self.buffer[: end + 4]
        status = int(head.split(" ", 2)[1])
        length = 0
        if m := re.search(r"\r\ncontent-length:\s*(\d+)", head):
            length = int(m.group(1))
        while len(self.buffer) < length:
            await self._fill()
        del self.buffer[:length]
        return status, bool(re.search(r"\r\nconnection:\s*close", head))


def upload_request(port: int, path: str, token: str, ms: int = 20) -> bytes:
    """A POST of ``ms`` of tone (the period's worth of audio: 640 bytes for 20 ms)."""
    body = tone_chunk(ms)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def stream_request(port: int, path: str, token: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


@dataclass
class Target:
    """A server under test, and the (path, token) pairs its clients use."""

    name: str
    server: Server
    uploads: list[tuple[str, str]]
    streams: list[tuple[str, str]]


@dataclass
class Phase:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    stream_bytes: int = 0


async def post_loop(port: int, request: bytes, period: float, until: float, phase: Phase) -> None:
    """POST ``request`` every ``period`` until ``until`` (a late one skips, never bursts)."""
    conn = await RawConnection.open(port)
    try:
        due = trio.current_time() + random.random() * period
        while (due := max(due + period, trio.current_time())) < until:
            await trio.sleep_until(due)
            start = trio.current_time()
            await conn.stream.send_all(request)
            status, close = await conn.response()
            phase.latencies.append(trio.current_time() - start)
            if status == 204:
                phase.ok += 1
            else:
                phase.errors[f"HTTP {status}"] += 1
            if close:
                await conn.stream.aclose()
                conn = await RawConnection.open(port)
    finally:
        await conn.stream.aclose()


async def stream_loop(port: int, request: bytes, phase: Phase) -> None:
    """Hold one stream open and read (and drop) whatever it sends until cancelled."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(request)
        while data := await stream.receive_some(65536):
            phase.stream_bytes += len(data)
        phase.errors["stream ended"] += 1
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def measure(server: Server, seconds: float, warmup: float, load) -> tuple[float, Phase]:
    """Server CPU seconds spent during ``seconds`` of ``load`` (after ``warmup``)."""
    phase = Phase()
    async with trio.open_nursery() as nursery:
        t_start = trio.current_time()
        end = t_start + warmup + seconds + 0.5
        load(nursery, phase, end)
        await trio.sleep_until(t_start + warmup)
        cpu0, ok0, bytes0 = server.cpu_s(), phase.ok, phase.stream_bytes
        t0 = trio.current_time()
        await trio.sleep(seconds)
        cpu1, t1 = server.cpu_s(), trio.current_time()
        counted = Phase(phase.ok - ok0, phase.errors, phase.latencies, phase.stream_bytes - bytes0)
        nursery.cancel_scope.cancel()
    return (cpu1 - cpu0) * seconds / (t1 - t0), counted


@contextmanager
def profiled(target: Target, what: str, args) -> Iterator[None]:
    """With ``--py-spy DIR``: py-spy samples voxwire during the phase (collapsed stacks
    and a flame graph). It costs the server CPU too: figures of such a run are inflated."""
    if args.py_spy is None or target.name not in ("voxwire", "before"):
        yield
        return
    args.py_spy.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(target.server.proc.pid),
                "--rate",
                "200",
                "--format",
                fmt,
                "--output",
                str(args.py_spy / f"{target.name}-{what}.{ext}"),
                "--duration",
                str(int(args.cost_seconds + 1)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, ext in (("raw", "txt"), ("flamegraph", "svg"))
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.wait()


async def cost_round(target: Target, args) -> dict:
    port, seconds = target.server.port, args.cost_seconds
    idle_cpu, _ = await measure(target.server, seconds / 2, 0.5, lambda *_: None)
    idle_per_s = idle_cpu / (seconds / 2)
    idle_cpu = idle_per_s * seconds  # over a phase

    def uploads(nursery: trio.Nursery, phase: Phase, end: float) -> None:
        for path, token in target.uploads:
            request = upload_request(port, path, token, int(args.cost_period_ms))
            nursery.start_soon(post_loop, port, request, args.cost_period_ms / 1000, end, phase)

    def streams(nursery: trio.Nursery, phase: Phase, end: float) -> None:
        for path, token in target.streams:
            nursery.start_soon(stream_loop, port, stream_request(port, path, token), phase)

    with profiled(target, "uploads", args):
        up_cpu, up = await measure(target.server, seconds, 1.0, uploads)
    await trio.sleep(0.5)
    with profiled(target, "streams", args):
        st_cpu, st = await measure(target.server, seconds, 1.0, streams)
    await trio.sleep(0.5)
    n_streams = len(target.streams)
    return {
        "target": target.name,
        "idle_cpu_pct": 100 * idle_per_s,
        "posts": up.ok,
        "post_errors": dict(up.errors),
        "post_p50_ms": pct(np.asarray(up.latencies) * 1000, 50),
        "ms_per_post": 1000 * (up_cpu - idle_cpu) / max(1, up.ok),
        "upload_cpu_pct": 100 * up_cpu / seconds,
        "streams": n_streams,
        "stream_errors": dict(st.errors),
        "stream_rx_pct": 100 * st.stream_bytes / (BYTES_PER_S * seconds * max(1, n_streams)),
        "pct_per_stream": 100 * (st_cpu - idle_cpu) / seconds / max(1, n_streams),
        "stream_cpu_pct": 100 * st_cpu / seconds,
    }


async def voxwire_sessions(server: Server, n: int, config: dict) -> list[tuple[str, str, str]]:
    """``n`` sessions: (upload path, stream path, token) each."""
    out = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=15) as client:
        for _ in range(n):
            r = await client.post("/api/sessions", json=config)
            r.raise_for_status()
            info = r.json()
            out.append((info["urls"]["upload_audio"], info["urls"]["stream_audio"], info["token"]))
    return out


def show_cost(rounds: list[dict], names: list[str], args) -> None:
    def median(name: str, key: str) -> float:
        return float(np.median([r[key] for r in rounds if r["target"] == name]))

    def ratios(name: str, key: str) -> str:
        by_round: dict[int, dict[str, float]] = {}
        for r in rounds:
            by_round.setdefault(r["round"], {})[r["target"]] = r[key]
        each = [v[name] / v["floor"] for v in by_round.values() if name in v and "floor" in v]
        if not each:
            return ""
        return f"{float(np.median(each)):.2f}x (" + ", ".join(f"{x:.2f}" for x in each) + ")"

    titles = {
        "voxwire": "voxwire",
        "before": f"voxwire at {args.cost_baseline}",
        "hypercorn": "hypercorn + bare ASGI app (`floor.py --asgi`)",
        "inline": "hypercorn, POSTs answered in its h11 protocol (`floor.py --inline`)",
        "floor": "trio + h11 floor (`floor.py`)",
    }
    print(
        f"\n| server | one {args.cost_period_ms:g} ms upload POST ({args.cost_uploads} x "
        f"{1000 / args.cost_period_ms:.0f}/s) | / floor | one open silent stream "
        f"({args.cost_streams} open) | / floor |\n|---|---:|---|---:|---|"
    )
    for name in names:
        print(
            f"| {titles[name]} | {median(name, 'ms_per_post'):.2f} ms | "
            f"{ratios(name, 'ms_per_post')} | {median(name, 'pct_per_stream'):.2f} % of a core | "
            f"{ratios(name, 'pct_per_stream')} |"
        )
    print(
        "(server CPU less its idle rate, medians over the rounds; ratios: the median of the "
        "per-round ratios, each round's in brackets)"
    )


async def cost_main(args) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="voxwire-cost-"))
    vox = Server(tmp / "server.log", "--responder", "none", ready_path="/readyz")
    floor = FloorServer(tmp / "floor.log", args.cost_floor)
    hyper = FloorServer(tmp / "hypercorn.log", args.cost_floor, "--asgi")
    inline = FloorServer(tmp / "inline.log", args.cost_floor, "--inline")
    before = None
    if args.cost_baseline:
        before = VoxwireAt(
            args.cost_baseline, tmp / "before.log", "--responder", "none", ready_path="/readyz"
        )
    await vox.start()
    await floor.start()
    if not args.cost_no_asgi:
        await hyper.start()
        await inline.start()
    if before is not None:
        await before.start()
    rounds: list[dict] = []
    try:
        config = json.loads(args.cost_config)
        targets = []
        for name, server in (("voxwire", vox), ("before", before)):
            if server is None:
                continue
            n = args.cost_uploads + args.cost_streams
            sessions = await voxwire_sessions(server, n, config)
            ups, sts = sessions[: args.cost_uploads], sessions[args.cost_uploads :]
            targets.append(
                Target(name, server, [(u, t) for u, _, t in ups], [(s, t) for _, s, t in sts])
            )
        targets += [
            *(
                Target(
                    name,
                    server,
                    [(f"/upload/{i}", "x") for i in range(args.cost_uploads)],
                    [(f"/stream/{i}", "x") for i in range(args.cost_streams)],
                )
                for name, server in (("hypercorn", hyper), ("inline", inline), ("floor", floor))
                if name == "floor" or not args.cost_no_asgi
            ),
        ]
        print(
            "cost: "
            + ", ".join(f"{t.name} pid {t.server.proc.pid} on {t.server.base_url}" for t in targets)
            + f"; logs in {tmp}; voxwire session config {config}; {args.cost_rounds} rounds of "
            f"idle ({args.cost_seconds / 2:g} s), uploads and streams ({args.cost_seconds:g} s "
            f"each) per server, the servers' order rotating"
        )
        for i in range(args.cost_rounds):
            for target in targets[i % len(targets) :] + targets[: i % len(targets)]:
                r = await cost_round(target, args)
                r["round"] = i
                rounds.append(r)
                print(
                    f"  round {i} {r['target']:>9}: idle {r['idle_cpu_pct']:.1f}% | "
                    f"{r['posts']} POSTs, {r['upload_cpu_pct']:.1f}% CPU, "
                    f"{r['ms_per_post']:.3f} ms/POST (p50 {r['post_p50_ms']:.1f} ms) "
                    f"{r['post_errors'] or ''}| {r['streams']} streams, "
                    f"{r['stream_cpu_pct']:.1f}% CPU, {r['pct_per_stream']:.2f}%/stream, rx "
                    f"{r['stream_rx_pct']:.0f}% {r['stream_errors'] or ''}"
                )
                sys.stdout.flush()
    finally:
        for server in (vox, floor, hyper, inline, before):
            if server is not None and server.proc is not None:
                server.stop()
    show_cost(rounds, [t.name for t in targets], args)
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))
    return rounds


# -- output -----------------------------------------------------------------------------


def show_level(r: dict, args) -> None:
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
    logs = r["log_lines"]
    print(
        f"\n== {r['sessions']} sessions ({r['ready']} set up in {r['setup_s']:.1f} s; "
        f"{args.warmup:g} s warmup, {args.seconds:g} s measured; cleanup "
        f"{r['cleanup_s']:.1f} s) =="
    )
    print(
        f"  stream  gap ms p50 {r['gap_p50_ms']:.1f}  p99 {r['gap_p99_ms']:.1f}  max "
        f"{r['gap_max_ms']:.1f} | {r['stream_chunks']} gaps | audio received "
        f"{r['stream_rate_pct']:.1f}% of real time | player stalls {r['stall_pct']:.2f}% "
        f"({r['sessions_stalled']}/{r['ready']} sessions) | tone in {r['tone_pct']:.1f}%"
        f" of received samples"
    )
    print(
        f"  upload  {r['posts']} POSTs ({r['posts_per_s']:.0f}/s, "
        f"{r['chunks_per_post']:.2f} x {args.chunk_ms} ms each) latency ms p50 "
        f"{r['post_p50_ms']:.1f}  p99 {r['post_p99_ms']:.1f}  max {r['post_max_ms']:.1f} | "
        f"audio sent {r['upload_rate_pct']:.1f}% of real time, {r['skipped_s']:.1f} s "
        f"skipped"
    )
    print(f"  errors  {errs}")
    print(
        f"  server  CPU {r['server_cpu_pct']:.0f}% | RSS {r['rss_mb']:.1f} MB (baseline "
        f"{r['rss_baseline_mb']:.1f} MB, {r['rss_per_session_kb']:.0f} KB/session) | "
        f"underruns +{r['server_underruns']:.0f}, readers dropped "
        f"+{r['server_readers_dropped']:.0f}, 429s +{r['server_throttled']:.0f} | log: "
        f"{logs['warnings']} warnings, {logs['errors']} errors, {logs['tracebacks']} "
        f"tracebacks{'' if r['server_alive'] else ' | SERVER DIED'}"
    )
    left = r["sessions_left"]
    print(
        f"          /healthz from a probe thread ms p50 {r['health_p50_ms']:.1f}  p99 "
        f"{r['health_p99_ms']:.1f}  max {r['health_max_ms']:.1f}"
        + ("" if left == 0 else f" | sessions left after cleanup: {left}")
    )
    print(
        f"  client  CPU {r['client_cpu_pct']:.0f}% | own loop lag p99 {r['lag_p99_ms']:.1f} "
        f"ms, max {r['lag_max_ms']:.1f} ms"
    )
    sys.stdout.flush()


def show_table(results: list[dict]) -> None:
    print(
        "\n| sessions | gap p50 / p99 / max (ms) | audio rx | stalls | POST p50 / p99 (ms) "
        "| POSTs/s | errors | server CPU | /healthz p99 (ms) | server RSS (per session) "
        "| client CPU |"
    )
    print("|---:|---|---:|---:|---|---:|---|---:|---:|---|---:|")
    for r in results:
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        print(
            f"| {r['sessions']} | {r['gap_p50_ms']:.1f} / {r['gap_p99_ms']:.1f} / "
            f"{r['gap_max_ms']:.0f} | {r['stream_rate_pct']:.0f}% | {r['stall_pct']:.1f}% | "
            f"{r['post_p50_ms']:.1f} / {r['post_p99_ms']:.1f} | {r['posts_per_s']:.0f} | "
            f"{errs} | {r['server_cpu_pct']:.0f}% | {r['health_p99_ms']:.1f} | "
            f"{r['rss_mb']:.0f} MB ({r['rss_per_session_kb']:.0f} KB) | "
            f"{r['client_cpu_pct']:.0f}% |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sessions",
        default="10,100,500",
        help="comma-separated concurrency levels (default 10,100,500)",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument(
        "--chunk-ms",
        type=int,
        default=20,
        help="audio per upload POST and upload period (default 20)",
    )
    p.add_argument(
        "--setup-concurrency",
        type=int,
        default=32,
        help="sessions being created at once (default 32)",
    )
    p.add_argument("--setup-timeout", type=float, default=120.0)
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    cost = p.add_argument_group(
        "cost", "server CPU per upload POST and per open stream, voxwire against bench/floor.py"
    )
    cost.add_argument("--cost", action="store_true", help="run this instead of the levels")
    cost.add_argument("--cost-uploads", type=int, default=4, help="uploading sessions (4)")
    cost.add_argument("--cost-period-ms", type=float, default=20, help="POST period each (20)")
    cost.add_argument("--cost-streams", type=int, default=20, help="open streams (20)")
    cost.add_argument("--cost-seconds", type=float, default=8.0, help="per phase (8)")
    cost.add_argument("--cost-rounds", type=int, default=3, help="interleaved rounds (3)")
    cost.add_argument(
        "--cost-floor",
        type=Path,
        default=FLOOR_SCRIPT,
        metavar="SCRIPT",
        help="the floor server (default bench/floor.py; it takes --port N)",
    )
    cost.add_argument(
        "--cost-baseline",
        type=Path,
        metavar="DIR",
        help="also measure the voxwire of another checkout (e.g. the commit before a change)",
    )
    cost.add_argument(
        "--cost-no-asgi",
        action="store_true",
        help="leave out the hypercorn + bare ASGI app reference (floor.py --asgi)",
    )
    cost.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile voxwire's phases with py-spy into DIR (inflates its CPU figures)",
    )
    cost.add_argument(
        "--cost-config",
        default='{"responder": "none"}',
        help='voxwire session config, JSON (default {"responder": "none"})',
    )
    args = p.parse_args(argv)
    args.levels = [int(x) for x in args.sessions.split(",") if x.strip()]
    return args


async def main(args) -> list[dict]:
    log_path = Path(tempfile.mkdtemp(prefix="voxwire-bench-")) / "server.log"
    server = Server(log_path, "--responder", "loopback", ready_path="/readyz")
    results: list[dict] = []
    await server.start()
    try:
        await trio.sleep(1)
        baseline = server.rss()
        print(
            f"voxwire transport bench: server pid {server.proc.pid} on {server.base_url}, "
            f"log {log_path}; {psutil.cpu_count()} CPUs; baseline RSS "
            f"{baseline / 2**20:.1f} MB; uploads of {args.chunk_ms} ms every "
            f"{args.chunk_ms} ms"
        )
        for n in args.levels:
            if not server.alive():
                print(f"server died (exit {server.proc.returncode}); restarting")
                await server.start()
                await trio.sleep(1)
                baseline = server.rss()
            try:
                r = await run_level(server, n, args, baseline)
            except Exception as exc:  # a broken level still leaves the others
                print(f"\n== {n} sessions: level failed: {exc!r}")
                continue
            results.append(r)
            show_level(r, args)
            await trio.sleep(2)
    finally:
        server.stop()
    if results:
        show_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    started = time.monotonic()
    arguments = parse_args()
    trio.run(cost_main if arguments.cost else main, arguments)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
