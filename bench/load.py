"""Load benchmark: how many concurrent sessions voxwire holds, ramped in steps until a limit breaks.

Not a test. Modes:

- ``--mode pipeline``: one ``run.py`` (real models, ``echo`` responder). Every session holds
  a spoken conversation: sentences made with the bundled Piper voice, uploaded in real time
  in 100 ms chunks on one chunked POST, a pause after each reply, while the session reads
  ``stream_audio`` and the SSE events. A step holds when the p95 of end of speech → first
  reply audio byte is ≤ 1 s and the p99 gap between stream reads is ≤ 100 ms.
- ``--mode cluster``: the same against ``--instances`` (default: the cores) ``run.py``
  processes behind a real nginx running ``deploy/nginx.conf`` (``deploy/cluster.py``).
- ``--mode transport``: one ``run.py``, ``loopback`` responder (no models): each session
  uploads a tone in real time (``--chunk-ms`` chunks on one chunked POST) and reads its
  stream; a step holds when the p99 gap is ≤ 50 ms.
- ``--mode cluster-transport``: transport sessions against the nginx cluster.

In every mode a step also fails when a session cannot be set up or loses its stream. The
ramp stops at the first step that fails; the last step that held is the figure.

    .venv/bin/python bench/load.py --mode pipeline        # 1,2,3,4,6,8... sessions x 40 s
    .venv/bin/python bench/load.py --mode cluster         # the same, 2 instances + nginx
    .venv/bin/python bench/load.py --mode transport       # 25,50,75,100,150... x 30 s
    .venv/bin/python bench/load.py --mode pipeline --steps 1,2 --step-s 10   # quick check

The load runs in this process's trio loop: client and server share the machine's cores,
so the client's own CPU and loop lag, and the CPU of every other process, are printed
with every step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import psutil
import trio
from _common import ROOT, Server, free_port
from httpx_sse import aconnect_sse
from latency import CHUNK, RATE, SENTENCES
from transport import loop_lag, pct, tone_chunk

sys.path.insert(0, str(ROOT))

from deploy.cluster import SESSION_ID_HEADER, proxy_command
from tests.speech import synthesize
from tests.voice import voiced_bounds

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

WAV_HEADER = 44
BYTES_PER_S = RATE * 2
MODES = ("pipeline", "cluster", "transport", "cluster-transport")
DEFAULT_STEPS = {
    "pipeline": "1,2,3,4,6,8,12,16",
    "cluster": "1,2,3,4,6,8,12,16",
    "transport": "25,50,75,100,150,200,300,400",
    "cluster-transport": "25,50,75,100,150,200,300,400",
}
DEFAULT_GAP_LIMIT_MS = {
    "pipeline": 100.0,
    "cluster": 100.0,
    "transport": 50.0,
    "cluster-transport": 50.0,
}


def loopback(mode: str) -> bool:
    """Transport-only sessions (the loopback responder, no models)?"""
    return mode.endswith("transport")


def clustered(mode: str) -> bool:
    """N processes behind nginx?"""
    return mode.startswith("cluster")


STAGES = ("turn_detected_ms", "transcript_ms", "first_audio_queued_ms", "first_audio_byte_ms")
HTTP_TIMEOUT = httpx.Timeout(15.0, read=60.0)  # events may be quiet for 15 s (the ping)


# -- one session ------------------------------------------------------------------------


@dataclass
class Turn:
    end_at: float  # trio time the last voiced sample was due (and handed to the upload)
    first_audio_at: float = math.nan  # first non-zero reply sample read from the stream
    done: bool = False  # its response.done came
    server_latency: dict = field(default_factory=dict)  # response.done's latency waterfall

    @property
    def latency(self) -> float:
        """End of speech → first reply audio; inf when no reply audio came."""
        return math.inf if math.isnan(self.first_audio_at) else self.first_audio_at - self.end_at


@dataclass
class SessionState:
    turns: list[Turn] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # trio time of every stream read
    stream_bytes: list[int] = field(default_factory=list)
    awaiting: Turn | None = None  # the turn whose reply the stream is waiting for
    responses_done: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@dataclass
class Step:
    n: int
    mode: str
    stop: trio.Event = field(default_factory=trio.Event)
    go: trio.Event = field(default_factory=trio.Event)
    settled: trio.Event = field(default_factory=trio.Event)
    ready: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    sessions: list[SessionState] = field(default_factory=list)

    def note_setup(self, ok: bool) -> None:
        if ok:
            self.ready += 1
        else:
            self.failed += 1
        if self.ready + self.failed >= self.n:
            self.settled.set()


class Pacer:
    """Hands out PCM chunks no faster than real time, like a microphone (latency.py's pacing:
    a chunk goes out at the start of the 100 ms it covers)."""

    def __init__(self) -> None:
        self.t0 = trio.current_time()
        self.sent = 0  # samples

    def due(self, sample: int) -> float:
        """When sample ``sample`` (counted from the first uploaded) is due."""
        return self.t0 + sample / RATE

    async def send(self, samples: np.ndarray, chunk: int = CHUNK) -> AsyncIterator[bytes]:
        for at in range(0, len(samples), chunk):
            piece = samples[at : at + chunk]
            yield piece.astype("<i2").tobytes()
            self.sent += len(piece)
            await trio.sleep_until(self.due(self.sent))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.int16)


async def conversation(
    step: Step, st: SessionState, speech: list[np.ndarray], args: argparse.Namespace
) -> AsyncIterator[bytes]:
    """The upload body of a pipeline session: sentences, each followed by silence until its
    reply has been played (or ``--reply-timeout``), then a pause; until the step stops."""
    pacer = Pacer()
    async for c in pacer.send(silence(0.5 + random.uniform(0, args.stagger_s))):
        yield c
    i = random.randrange(len(speech))
    while not step.stop.is_set():
        samples = speech[i % len(speech)]
        i += 1
        _, off = voiced_bounds(samples)
        end_sample = pacer.sent + off
        turn: Turn | None = None
        before = st.responses_done
        async for c in pacer.send(samples):
            yield c
            if turn is None and pacer.sent >= end_sample:
                # the chunk holding the last voiced sample was just handed over; if the
                # client runs late, that moment, not the schedule, is the end of speech
                turn = Turn(max(pacer.due(end_sample), trio.current_time()))
                st.turns.append(turn)
                st.awaiting = turn
        assert turn is not None
        deadline = turn.end_at + args.reply_timeout
        while st.responses_done == before and trio.current_time() < deadline:
            async for c in pacer.send(silence(CHUNK / RATE)):
                yield c
        if st.responses_done == before:
            step.errors["missing reply"] += 1
        st.awaiting = None
        async for c in pacer.send(silence(random.uniform(*args.pause_s))):
            yield c


async def tone_stream(step: Step, chunk_ms: int) -> AsyncIterator[bytes]:
    """The upload body of a transport session: a quiet tone, in real time, until the stop."""
    chunk = tone_chunk(chunk_ms)
    step_s = chunk_ms / 1000
    t0 = trio.current_time() + random.random() * step_s  # clients are not in phase
    k = 0
    while not step.stop.is_set():
        await trio.sleep_until(t0 + k * step_s)
        k += 1
        yield chunk


async def read_stream(resp: httpx.Response, step: Step, st: SessionState) -> None:
    offset = 0
    carry = b""
    async for data in resp.aiter_raw():
        now = trio.current_time()
        st.arrivals.append(now)
        st.stream_bytes.append(len(data))
        if offset >= WAV_HEADER:
            pcm = carry + data
        elif offset + len(data) > WAV_HEADER:
            pcm = carry + data[WAV_HEADER - offset :]
        else:
            pcm = b""
        offset += len(data)
        usable = len(pcm) & ~1
        carry = pcm[usable:]
        turn = st.awaiting
        if turn is not None and math.isnan(turn.first_audio_at) and now >= turn.end_at:
            # silence frames are exact zeros: the first non-zero sample is the reply
            if np.any(np.frombuffer(pcm[:usable], "<i2")):
                turn.first_audio_at = now
    if not step.stop.is_set():
        step.errors["stream ended early"] += 1


async def read_events(
    client: httpx.AsyncClient, url: str, auth: dict, step: Step, st: SessionState
) -> None:
    async with aconnect_sse(client, "GET", url, headers=auth) as source:
        if source.response.status_code != 200:
            step.errors[f"events HTTP {source.response.status_code}"] += 1
            return
        async for sse in source.aiter_sse():
            if not sse.data:
                continue
            event = json.loads(sse.data)
            kind = event.get("type")
            if kind == "error":
                step.errors[f"error event {event.get('error', {}).get('code')}"] += 1
            elif kind == "response.done":
                response = event.get("response", {})
                status = response.get("status")
                if status != "completed":
                    step.errors[f"response {status}"] += 1
                turn = st.awaiting
                if turn is not None and not turn.done:
                    turn.done = True
                    turn.server_latency = response.get("latency") or {}
                    if math.isnan(turn.first_audio_at):
                        step.errors["reply without audio"] += 1
                st.responses_done += 1
                st.poke()
    if not step.stop.is_set():
        step.errors["events ended early"] += 1


async def run_session(
    base_url: str,
    step: Step,
    setup: trio.Semaphore,
    speech: list[np.ndarray],
    args: argparse.Namespace,
) -> None:
    st = SessionState()
    step.sessions.append(st)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    noted = False
    session_id = auth = None
    phase = "setup"

    def note(ok: bool) -> None:
        nonlocal noted
        if not noted:
            noted = True
            step.note_setup(ok)

    # One client per session: a shared pool scans its connections on every request.
    async with httpx.AsyncClient(base_url=base_url, timeout=HTTP_TIMEOUT, limits=limits) as client:
        try:
            async with setup:
                config = {"responder": "loopback" if loopback(step.mode) else "echo"}
                r = await client.post("/api/sessions", json=config)
                if r.status_code != 201:
                    step.errors[f"create HTTP {r.status_code}"] += 1
                    return
                info = r.json()
                session_id = info["id"]
                auth = {"Authorization": f"Bearer {info['token']}"}
                urls = info["urls"]
                stream = client.stream("GET", urls["stream_audio"], headers=auth)
                resp = await stream.__aenter__()
            try:
                if resp.status_code != 200:
                    step.errors[f"stream HTTP {resp.status_code}"] += 1
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_stream, resp, step, st)
                    if not loopback(step.mode):
                        nursery.start_soon(read_events, client, urls["events"], auth, step, st)
                    note(True)
                    phase = "session"
                    await step.go.wait()
                    if loopback(step.mode):
                        body = tone_stream(step, args.chunk_ms)
                    else:
                        body = conversation(step, st, speech, args)
                    headers = {**auth, "Content-Type": "application/octet-stream"}
                    r = await client.post(urls["upload_audio"], content=body, headers=headers)
                    if r.status_code != 204:
                        step.errors[f"upload HTTP {r.status_code}"] += 1
                    await step.stop.wait()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await stream.__aexit__(None, None, None)
        except Exception as exc:  # a bench counts failures, it does not stop
            step.errors[f"{phase} {type(exc).__name__}"] += 1
        finally:
            note(False)
            if session_id is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(15):
                    try:
                        r = await client.delete(f"/api/sessions/{session_id}", headers=auth)
                        if r.status_code != 204:
                            step.errors[f"delete HTTP {r.status_code}"] += 1
                    except httpx.HTTPError as exc:
                        step.errors[f"delete {type(exc).__name__}"] += 1


# -- the servers ------------------------------------------------------------------------


class Target:
    """What the load goes to: one process, or N processes behind nginx."""

    def __init__(self, mode: str, instances: int, log_dir: Path) -> None:
        self.mode = mode
        self.log_dir = log_dir
        args = ("--responder", "loopback") if loopback(mode) else ()
        n = instances if clustered(mode) else 1
        self.servers = [
            Server(log_dir / f"server{i}.log", *args, ready_path="/readyz") for i in range(n)
        ]
        self.proxy: subprocess.Popen[bytes] | None = None
        self.proxy_port = 0

    @property
    def base_url(self) -> str:
        if self.proxy is not None:
            return f"http://127.0.0.1:{self.proxy_port}"
        return self.servers[0].base_url

    async def start(self) -> None:
        if clustered(self.mode):
            os.environ["VOXWIRE_SESSION_ID_HEADER"] = SESSION_ID_HEADER
        for s in self.servers:
            s.spawn()  # all load their models at once
        for s in self.servers:
            await s.wait_ready()
        if clustered(self.mode):
            self.spawn_proxy()
            async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:
                with trio.fail_after(20):
                    while True:
                        if self.proxy.poll() is not None:
                            raise RuntimeError(f"nginx exited; see {self.log_dir}")
                        try:
                            if (await client.get("/readyz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await trio.sleep(0.1)

    def spawn_proxy(self) -> None:
        self.proxy_port = free_port()
        ports = [s.port for s in self.servers]
        cmd = proxy_command("nginx", self.proxy_port, ports, self.log_dir / "nginx")
        with (self.log_dir / "nginx.err").open("wb") as err:
            self.proxy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)

    def processes(self) -> list[psutil.Process]:
        procs = []
        roots = [s.ps for s in self.servers if s.ps is not None]
        if self.proxy is not None:
            roots.append(psutil.Process(self.proxy.pid))
        for p in roots:
            try:
                procs.append(p)
                procs.extend(p.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return procs

    def rss(self) -> int:
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def alive(self) -> bool:
        return all(s.alive() for s in self.servers) and (
            self.proxy is None or self.proxy.poll() is None
        )

    async def sessions_per_instance(self) -> list[int] | None:
        """Sessions registered on each instance (asked directly, not through the proxy)."""
        out = []
        async with httpx.AsyncClient(timeout=5) as client:
            for s in self.servers:
                try:
                    out.append((await client.get(f"{s.base_url}/readyz")).json()["sessions"])
                except (httpx.HTTPError, ValueError, KeyError):
                    return None
        return out

    async def sessions_left(self) -> int | None:
        per = await self.sessions_per_instance()
        return None if per is None else sum(per)

    def log_problems(self, offsets: list[int]) -> Counter[str]:
        out: Counter[str] = Counter()
        for s, off in zip(self.servers, offsets, strict=True):
            log = s.log_since(off)
            out["warnings"] += log.count(" WARNING ")
            out["errors"] += log.count(" ERROR ") + log.count(" CRITICAL ")
            out["tracebacks"] += log.count("Traceback (most recent call last)")
        return out

    def stop(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
        for s in self.servers:
            s.stop()


ProcKey = tuple[int, float, str]  # pid, start time, name


def cpu_by_process() -> dict[ProcKey, float]:
    """CPU seconds of every process on the machine."""
    out = {}
    for p in psutil.process_iter(["create_time", "cpu_times", "name"]):
        t = p.info["cpu_times"]
        if t is not None:
            out[(p.pid, p.info["create_time"], p.info["name"])] = t.user + t.system
    return out


def other_cpu(
    before: dict[ProcKey, float], after: dict[ProcKey, float], ours: set[int]
) -> tuple[float, str]:
    """CPU seconds used between two snapshots by processes other than ours (ones that ended
    in between are missed: a lower bound), and the biggest users by name."""
    used: Counter[str] = Counter()
    for k, v in after.items():
        if k[0] not in ours:
            used[k[2]] += v - before.get(k, 0.0)
    top = ", ".join(f"{name} {s:.1f} s" for name, s in used.most_common(2) if s >= 0.5)
    return sum(used.values()), top


# -- a step -----------------------------------------------------------------------------


async def run_step(
    target: Target, n: int, args: argparse.Namespace, speech: list[np.ndarray], baseline: int
) -> dict:
    step = Step(n, args.mode)
    setup = trio.Semaphore(args.setup_concurrency)
    lag: list[float] = []
    me = psutil.Process()
    offsets = [s.log_size() for s in target.servers]
    async with trio.open_nursery() as nursery:
        t_setup = trio.current_time()
        for _ in range(n):
            nursery.start_soon(run_session, target.base_url, step, setup, speech, args)
        with trio.move_on_after(args.setup_timeout):
            await step.settled.wait()
        setup_s = trio.current_time() - t_setup
        lag_scope = trio.CancelScope()

        async def lag_task() -> None:
            with lag_scope:
                await loop_lag(lag)

        nursery.start_soon(lag_task)
        s_cpu0, c_cpu0, m_cpu0 = target.cpu_s(), sum(me.cpu_times()[:2]), cpu_by_process()
        t0 = trio.current_time()
        step.go.set()
        peak_rss = target.rss()
        end = t0 + args.step_s
        while trio.current_time() < end and target.alive():
            await trio.sleep(min(1.0, end - trio.current_time()))
            if target.alive():
                peak_rss = max(peak_rss, target.rss())
        t1 = trio.current_time()
        s_cpu1, c_cpu1, m_cpu1 = target.cpu_s(), sum(me.cpu_times()[:2]), cpu_by_process()
        ours = {me.pid, *(p.pid for p in target.processes())}
        other_s, other_top = other_cpu(m_cpu0, m_cpu1, ours)
        lag_scope.cancel()
        alive = target.alive()
        spread = await target.sessions_per_instance() if alive else None
        # Talking sessions finish the turn in flight (its reply, or the reply timeout).
        step.stop.set()
        t_grace = trio.current_time()
        nursery.cancel_scope.deadline = t_grace + args.reply_timeout + 20
    grace_s = trio.current_time() - t_grace
    left = None
    if alive:
        with trio.move_on_after(20):
            while True:
                left = await target.sessions_left()
                if left in (0, None):
                    break
                await trio.sleep(0.2)
    wall = t1 - t0
    gaps: list[float] = []
    rx = 0
    for st in step.sessions:
        a = np.asarray(st.arrivals)
        b = np.asarray(st.stream_bytes)
        inside = (a >= t0) & (a <= t1)
        if inside.sum() > 1:
            gaps.extend(np.diff(a[inside]) * 1000)
        rx += int(b[inside].sum()) if len(a) else 0
    turns = [t for st in step.sessions for t in st.turns]
    lat = [t.latency * 1000 for t in turns]
    answered = [x for x in lat if math.isfinite(x)]
    waterfall = {
        stage: [t.server_latency[stage] for t in turns if t.server_latency.get(stage) is not None]
        for stage in STAGES
    }
    result = {
        "sessions": n,
        "ready": step.ready,
        "setup_s": setup_s,
        "grace_s": grace_s,
        "measured_s": wall,
        "turns": len(turns),
        "answered": len(answered),
        "eos_p50_ms": pct(lat, 50) if lat else math.nan,
        "eos_p95_ms": pct(lat, 95) if lat else math.nan,
        "eos_max_ms": max(answered) if answered else math.nan,
        "server_p50_ms": {k: pct(v, 50) for k, v in waterfall.items()},
        "server_p95_ms": {k: pct(v, 95) for k, v in waterfall.items()},
        "gap_p50_ms": pct(gaps, 50),
        "gap_p99_ms": pct(gaps, 99),
        "gap_max_ms": max(gaps) if gaps else math.nan,
        "audio_rx_pct": 100 * rx / (BYTES_PER_S * wall * max(1, step.ready)),
        "errors": dict(step.errors),
        "server_alive": alive,
        "server_cpu_pct": 100 * (s_cpu1 - s_cpu0) / wall,
        "client_cpu_pct": 100 * (c_cpu1 - c_cpu0) / wall,
        # every other process on the machine (other jobs disturb the figures)
        "other_cpu_pct": 100 * other_s / wall,
        "other_top": other_top,
        "lag_p99_ms": pct(np.asarray(lag) * 1000, 99),
        "rss_mb": peak_rss / 2**20,
        "rss_per_session_mb": (peak_rss - baseline) / 2**20 / max(1, step.ready),
        "sessions_left": left,
        "sessions_per_instance": spread,
        "log": dict(target.log_problems(offsets)),
    }
    result["fails"] = verdict(result, args)
    return result


def verdict(r: dict, args: argparse.Namespace) -> list[str]:
    """Why the step did not hold (empty: it held)."""
    why = []
    if not r["server_alive"]:
        why.append("server died")
    if r["ready"] < r["sessions"]:
        why.append(f"{r['sessions'] - r['ready']} sessions not set up")
    lost = r["errors"].get("stream ended early", 0)
    if lost:
        why.append(f"{lost} streams lost")
    if not loopback(args.mode):
        if r["turns"] == 0:
            why.append("no turns")
        elif not r["eos_p95_ms"] <= args.latency_limit_ms:
            why.append(f"p95 latency {r['eos_p95_ms']:.0f} > {args.latency_limit_ms:.0f} ms")
    if not r["gap_p99_ms"] <= args.gap_limit_ms:
        why.append(f"p99 gap {r['gap_p99_ms']:.0f} > {args.gap_limit_ms:.0f} ms")
    return why


# -- output -----------------------------------------------------------------------------


def ms(x: float) -> str:
    return "inf" if x == math.inf else ("n/a" if math.isnan(x) else f"{x:.0f}")


def waterfall(r: dict) -> str:
    """The server's per-stage latency line (p50/p95 from ``/metrics``)."""
    p50, p95 = r["server_p50_ms"], r["server_p95_ms"]
    return "  server's waterfall from end of speech, ms p50/p95: " + ", ".join(
        f"{k.removesuffix('_ms')} {ms(p50[k])}/{ms(p95[k])}" for k in STAGES
    )


def errors_text(errors: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"


def show_step(r: dict, args: argparse.Namespace) -> None:
    held = "HELD" if not r["fails"] else "FAILED: " + "; ".join(r["fails"])
    print(
        f"\n== {r['sessions']} sessions: {held}\n"
        f"  {r['ready']} set up in {r['setup_s']:.1f} s, {r['measured_s']:.0f} s measured, "
        f"{r['grace_s']:.1f} s to wind down (turns in flight finish)"
    )
    if not loopback(args.mode):
        print(
            f"  turns {r['turns']} ({r['answered']} answered) | end of speech -> first reply "
            f"audio ms p50 {ms(r['eos_p50_ms'])}  p95 {ms(r['eos_p95_ms'])}  max answered "
            f"{ms(r['eos_max_ms'])}"
        )
        print(waterfall(r))
    print(
        f"  stream gap ms p50 {r['gap_p50_ms']:.1f}  p99 {r['gap_p99_ms']:.1f}  max "
        f"{r['gap_max_ms']:.0f} | audio received {r['audio_rx_pct']:.1f}% of real time"
    )
    log = r["log"]
    print(
        f"  errors {errors_text(r['errors'])} | server log: {log.get('warnings', 0)} warnings, "
        f"{log.get('errors', 0)} errors, {log.get('tracebacks', 0)} tracebacks"
    )
    print(
        f"  server CPU {r['server_cpu_pct']:.0f}% | RSS {r['rss_mb']:.0f} MB peak, "
        f"{r['rss_per_session_mb']:.1f} MB/session over idle | client CPU "
        f"{r['client_cpu_pct']:.0f}%, loop lag p99 {r['lag_p99_ms']:.1f} ms | other "
        f"processes {r['other_cpu_pct']:.0f}%"
        + (f" ({r['other_top']})" if r["other_top"] else "")
        + ("" if r["sessions_left"] == 0 else f" | sessions left: {r['sessions_left']}")
    )
    spread = r["sessions_per_instance"]
    if spread and len(spread) > 1:
        print(f"  sessions per instance: {' + '.join(map(str, spread))}")
    sys.stdout.flush()


def show_table(results: list[dict], args: argparse.Namespace) -> None:
    tail = "server / client / other CPU | client lag p99 (ms) | RSS per session (marginal) | held |"
    if loopback(args.mode):
        print(f"\n| sessions | gap p50 / p99 / max (ms) | audio rx | errors | {tail}")
        print("|---:|---|---:|---|---|---:|---|---|")
    else:
        print(
            "\n| sessions | turns | end of speech → first audio p50 / p95 (ms) | gap p50 / p99 "
            f"/ max (ms) | errors | {tail}"
        )
        print("|---:|---:|---|---|---|---|---:|---|---|")
    prev: dict | None = None
    for r in results:
        marginal = (
            (r["rss_mb"] - prev["rss_mb"]) / (r["sessions"] - prev["sessions"])
            if prev is not None and r["sessions"] > prev["sessions"]
            else math.nan
        )
        prev = r
        gap = f"{r['gap_p50_ms']:.0f} / {r['gap_p99_ms']:.0f} / {r['gap_max_ms']:.0f}"
        common = (
            f"{errors_text(r['errors'])} | {r['server_cpu_pct']:.0f}% / "
            f"{r['client_cpu_pct']:.0f}% / {r['other_cpu_pct']:.0f}% | {r['lag_p99_ms']:.0f} | "
            f"{r['rss_per_session_mb']:.1f} MB"
            + ("" if math.isnan(marginal) else f" ({marginal:.1f} MB)")
            + f" | {'yes' if not r['fails'] else 'no'} |"
        )
        if loopback(args.mode):
            print(f"| {r['sessions']} | {gap} | {r['audio_rx_pct']:.0f}% | {common}")
        else:
            lat = f"{ms(r['eos_p50_ms'])} / {ms(r['eos_p95_ms'])}"
            print(f"| {r['sessions']} | {r['turns']} | {lat} | {gap} | {common}")


def show_summary(results: list[dict], args: argparse.Namespace, target: Target) -> None:
    cores = psutil.cpu_count() or 1
    held = [r for r in results if not r["fails"]]
    where = (
        f"{len(target.servers)} processes behind nginx" if clustered(args.mode) else "one process"
    )
    print(f"\n== summary ({args.mode}: {where}; client and server share {cores} cores)")
    if not held:
        print("  no step held")
        return
    best = held[-1]
    broke = next((r for r in results if r["fails"]), None)
    print(
        f"  held {best['sessions']} sessions = {best['sessions'] / cores:.1f} per core "
        f"(the machine's {cores}, client included)"
        + (
            f"; {broke['sessions']} failed: {'; '.join(broke['fails'])}"
            if broke
            else "; no step failed (raise --steps)"
        )
    )
    if not loopback(args.mode):
        print(
            f"  at {best['sessions']}: end of speech -> first audio p50 {ms(best['eos_p50_ms'])}"
            f" / p95 {ms(best['eos_p95_ms'])} ms over {best['turns']} turns"
        )
    print(
        f"  at {best['sessions']}: p99 chunk gap {best['gap_p99_ms']:.0f} ms, RSS "
        f"{best['rss_per_session_mb']:.1f} MB per session over idle, errors "
        f"{errors_text(best['errors'])}, server CPU {best['server_cpu_pct']:.0f}%, client "
        f"CPU {best['client_cpu_pct']:.0f}%"
    )


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=MODES, default="pipeline")
    p.add_argument("--steps", help="comma-separated session counts (default: per mode)")
    p.add_argument(
        "--step-s", type=float, help="measured seconds per step (default 40, transport 30)"
    )
    p.add_argument(
        "--instances", type=int, default=psutil.cpu_count() or 2, help="cluster mode: processes"
    )
    p.add_argument("--latency-limit-ms", type=float, default=1000.0, help="p95 limit")
    p.add_argument("--gap-limit-ms", type=float, help="p99 gap limit (100, transport 50)")
    p.add_argument("--reply-timeout", type=float, default=8.0, help="s; then 'missing reply'")
    p.add_argument("--stagger-s", type=float, default=3.0, help="random extra lead silence")
    p.add_argument("--pause-min-s", type=float, default=0.5, help="pause after a reply")
    p.add_argument("--pause-max-s", type=float, default=1.5)
    p.add_argument("--chunk-ms", type=int, default=100, help="transport mode: upload chunks")
    p.add_argument("--setup-concurrency", type=int, default=32)
    p.add_argument("--setup-timeout", type=float, default=120.0)
    p.add_argument("--all-steps", action="store_true", help="do not stop at the first failure")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    args.levels = [int(x) for x in (args.steps or DEFAULT_STEPS[args.mode]).split(",")]
    if args.step_s is None:
        args.step_s = 30.0 if loopback(args.mode) else 40.0
    if args.gap_limit_ms is None:
        args.gap_limit_ms = DEFAULT_GAP_LIMIT_MS[args.mode]
    args.pause_s = (args.pause_min_s, args.pause_max_s)
    return args


async def main(args: argparse.Namespace) -> list[dict]:
    speech: list[np.ndarray] = []
    if not loopback(args.mode):
        speech = [synthesize((t,), gap_s=0.0, lead_s=0.0).samples for t in SENTENCES]
        seconds = sum(len(s) for s in speech) / len(speech) / RATE
        print(f"{len(speech)} Piper sentences, {seconds:.1f} s each on average")
    log_dir = Path(tempfile.mkdtemp(prefix="voxwire-load-"))
    target = Target(args.mode, args.instances, log_dir)
    results: list[dict] = []
    await target.start()
    try:
        await trio.sleep(1)
        baseline = target.rss()
        cores = psutil.cpu_count()
        print(
            f"voxwire load bench, mode {args.mode}: {len(target.servers)} server process(es)"
            + (f" behind nginx at {target.base_url}" if target.proxy else f" at {target.base_url}")
            + f"; logs in {log_dir}; idle RSS {baseline / 2**20:.0f} MB; {cores} CPUs shared by "
            f"the client (this process) and the server(s); limits: p99 stream gap <= "
            f"{args.gap_limit_ms:g} ms"
            + (
                ""
                if loopback(args.mode)
                else f", p95 end of speech -> first audio <= {args.latency_limit_ms:g} ms"
            )
        )
        for n in args.levels:
            if not target.alive():
                print("a server process died; stopping")
                break
            r = await run_step(target, n, args, speech, baseline)
            results.append(r)
            show_step(r, args)
            if r["fails"] and not args.all_steps:
                break
            await trio.sleep(2)
    finally:
        target.stop()
    if results:
        show_table(results, args)
        show_summary(results, args, target)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    started = time.monotonic()
    trio.run(main, parse_args())
    print(f"\n(total {time.monotonic() - started:.0f} s)")
