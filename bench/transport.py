"""Transport benchmark: N concurrent loopback sessions against one voxwire process.

Not a test: it starts ``run.py`` as a subprocess on a free port, and for each level N
runs N sessions at once. Each session creates itself with ``responder: loopback``, opens
``stream_audio`` and, in real time, POSTs 20 ms of PCM16 (a quiet 400 Hz tone) every
20 ms while reading its stream and timing every chunk it receives. After a warmup it
measures for ``--seconds`` and prints the figures (see bench/README.md).

    .venv/bin/python bench/transport.py --sessions 10 --seconds 5     # quick check
    .venv/bin/python bench/transport.py                                # 10, 100, 500 x 20 s

Needs ``psutil`` (dev extra) besides the project's dependencies.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path

import httpx
import numpy as np
import psutil
import trio
from _common import Server

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
    trio.run(main, parse_args())
    print(f"\n(total {time.monotonic() - started:.0f} s)")
