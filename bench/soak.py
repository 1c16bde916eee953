"""Soak benchmark: K spoken sessions for an hour, with barge-ins, reconnects and session churn.

Not a test. Starts one ``run.py`` (real models, ``echo`` responder; load.py's ``Target``) and
keeps ``--sessions`` (2) conversations going for ``--duration-s`` (3600), each like load.py's
pipeline sessions (Piper sentences uploaded in real time in 100 ms chunks on a chunked POST,
``stream_audio`` and the SSE events read throughout), plus:

- **barge-in** every ``--barge-every`` turns: the next sentence starts ``--barge-after-s``
  (0.6 s) after the reply's first audio, as latency.py does; the reply must end ``cancelled``;
- **reconnect** every ``--reconnect-every`` turns: ``--drop-after-s`` (0.3 s) into the reply
  the client drops all three connections (the upload mid-body, the stream, the events), then
  reopens them; the events resume with ``Last-Event-ID`` and the ids must continue with no
  gap and no duplicate;
- **churn** every ``--turns-per-session`` turns: the session is DELETEd while its stream and
  events are open (both must end cleanly) and a new one is created.
- **quiet checkpoints** every ``--checkpoint-s`` (600): each conversation finishes its
  session and waits; once the server is idle for ``--settle-s`` (12, over its 10 s
  ``malloc_trim`` interval) its RSS, fds and tasks are taken, then the talking resumes.
  Idle RSS after a trim is live memory, nearly free of the ±100 MB that decode buffers
  add while talking, so its trend over the checkpoints is the sharpest leak test.

Every ``--sample-s`` (30) it prints the server's RSS (and its floor and peak over the
interval, polled every second), fds, threads, and from ``/metrics``
``voxwire_trio_tasks``, ``voxwire_sessions`` and ``voxwire_stream_readers``, with the turns,
barge-ins, reconnects, churns and errors so far, the p99 stream gap of the interval and the
CPU of the server, this client and every other process. At the end: the RSS slope (MB/h,
least squares) of idle RSS at the checkpoints, and over the talking samples after the
warm-up (over ``--block-s`` window means), of the sampled RSS and of its floor (the
interval's minimum: transient decode buffers lift the peaks, a leak lifts the floor), in
total and per session, the same for fds, threads and tasks, idle figures before and
after, end of speech → first reply audio, chunk gaps, errors by class and event-id
violations. The exit code is 1 when an RSS slope
is over ``--max-rss-slope-mb-h`` by more than its noise (2 s.e.), or fds or tasks grow (see
``verdict``); 2 when no RSS slope is under the limit by more than its noise (the run was
too short or too noisy to tell).

    .venv/bin/python bench/soak.py                                   # 2 sessions, 1 h
    .venv/bin/python bench/soak.py --duration-s 240 --sample-s 10 --checkpoint-s 60  # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
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
from _common import ROOT
from httpx_sse import aconnect_sse
from latency import RATE, SENTENCES
from load import (
    CHUNK,
    HTTP_TIMEOUT,
    STAGES,
    Pacer,
    SessionState,
    Target,
    Turn,
    cpu_by_process,
    errors_text,
    ms,
    other_cpu,
    read_stream,
    silence,
    waterfall,
)
from transport import loop_lag, pct, server_counters

sys.path.insert(0, str(ROOT))

from tests.speech import synthesize
from tests.voice import voiced_bounds

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


# -- state ------------------------------------------------------------------------------


@dataclass
class SoakTurn(Turn):
    barge: bool = False  # the next sentence interrupts this turn's reply
    reconnect: bool = False  # the connections drop while this turn's reply plays
    response_id: str | None = None
    status: str | None = None  # response.done's status


@dataclass
class Life:
    """One server session, from POST /api/sessions to its DELETE."""

    id: str
    auth: dict[str, str]
    urls: dict[str, str]
    st: SessionState = field(default_factory=SessionState)  # load.read_stream's record
    last_id: int = 0  # the last SSE id received (events resume after it)
    turns: int = 0  # turns started
    pending: SoakTurn | None = None  # its reply was playing when the connections dropped
    responses: dict[str, SoakTurn] = field(default_factory=dict)  # response id -> turn
    deleted: bool = False


@dataclass
class Leg:
    """One set of connections of a life (stream, events, upload) until a drop or the end.
    ``stop`` and ``errors`` are what load.read_stream expects of its step."""

    errors: Counter[str]
    stop: trio.Event = field(default_factory=trio.Event)  # the bench ends it: not an error
    drop: bool = False
    done: trio.Event = field(default_factory=trio.Event)  # the upload ended, or drop
    stream_open: trio.Event = field(default_factory=trio.Event)
    events_open: trio.Event = field(default_factory=trio.Event)
    stream_ended: trio.Event = field(default_factory=trio.Event)
    events_ended: trio.Event = field(default_factory=trio.Event)


@dataclass
class Gate:
    """Quiet checkpoints: while closed, each slot parks before it creates its next session,
    so the server goes idle without cutting a session short."""

    closed: bool = False
    parked: int = 0
    opened: trio.Event = field(default_factory=trio.Event)

    def close(self) -> None:
        self.closed, self.opened = True, trio.Event()

    def open(self) -> None:
        self.closed = False
        self.opened.set()

    async def passage(self) -> None:
        if not self.closed:
            return
        self.parked += 1
        try:
            await self.opened.wait()
        finally:
            self.parked -= 1


@dataclass
class Soak:
    args: argparse.Namespace
    base_url: str
    speech: list[np.ndarray]
    auth: dict[str, str]  # the API key, if the server wants one
    stop: trio.Event = field(default_factory=trio.Event)
    gate: Gate = field(default_factory=Gate)
    errors: Counter[str] = field(default_factory=Counter)
    turns: list[SoakTurn] = field(default_factory=list)
    barge_ins: int = 0  # attempted: the next sentence started into a playing reply
    reconnects: int = 0
    lives: int = 0  # sessions created
    churns: int = 0  # sessions ended by DELETE before the end of the soak
    id_missing: int = 0  # SSE ids skipped across (re)connections
    id_duplicate: int = 0  # SSE ids received twice
    id_mismatch: int = 0  # ``id:`` field and payload event_id disagree
    resumed: int = 0  # event streams opened with Last-Event-ID
    live: dict[int, SessionState] = field(default_factory=dict)  # open streams, by slot
    gaps: list[np.ndarray] = field(default_factory=list)  # stream read gaps (ms), all
    interval_gaps: list[np.ndarray] = field(default_factory=list)  # since the last sample

    def drain(self, st: SessionState, keep_last: bool = True) -> None:
        """Turn a stream's arrival times into gaps (its lists would grow for an hour)."""
        a = st.arrivals
        if len(a) >= 2:
            g = (np.diff(np.asarray(a)) * 1000).astype(np.float32)
            self.gaps.append(g)
            self.interval_gaps.append(g)
        del a[: -1 if keep_last else None]
        st.stream_bytes.clear()


# -- one session slot -------------------------------------------------------------------

CONFIG = {"responder": "echo"}


async def reply_heard(soak: Soak, pacer: Pacer, turn: SoakTurn) -> AsyncIterator[bytes]:
    """Silence until the turn's reply audio arrives (or the reply timeout)."""
    deadline = max(turn.end_at, trio.current_time()) + soak.args.reply_timeout
    while math.isnan(turn.first_audio_at) and not turn.done and trio.current_time() < deadline:
        async for c in pacer.send(silence(CHUNK / RATE)):
            yield c


async def reply_done(soak: Soak, pacer: Pacer, turn: SoakTurn) -> AsyncIterator[bytes]:
    """Silence until the turn's response.done (or the reply timeout), then a pause."""
    deadline = max(turn.end_at, trio.current_time()) + soak.args.reply_timeout
    while not turn.done and trio.current_time() < deadline:
        async for c in pacer.send(silence(CHUNK / RATE)):
            yield c
    if not turn.done:
        soak.errors["missing reply" if math.isnan(turn.first_audio_at) else "no response.done"] += 1
    async for c in pacer.send(silence(random.uniform(*soak.args.pause_s))):
        yield c


async def talk(soak: Soak, life: Life, leg: Leg, lead_s: float) -> AsyncIterator[bytes]:
    """The upload body of one leg: turns until the life's last turn, the soak's end, or a
    reconnect turn (then ``leg.drop``, and silence until the leg is cancelled)."""
    args = soak.args
    st = life.st
    pacer = Pacer()
    async for c in pacer.send(silence(lead_s)):
        yield c
    if life.pending is not None:  # the reply that was playing when the connections dropped
        turn, life.pending = life.pending, None
        async for c in reply_done(soak, pacer, turn):
            yield c
    while not soak.stop.is_set() and life.turns < args.turns_per_session:
        life.turns += 1
        last = life.turns == args.turns_per_session
        reconnect = not last and life.turns % args.reconnect_every == 0
        barge = not last and not reconnect and life.turns % args.barge_every == 0
        samples = random.choice(soak.speech)
        _, off = voiced_bounds(samples)
        end_sample = pacer.sent + off
        st.awaiting = None
        turn: SoakTurn | None = None
        async for c in pacer.send(samples):
            yield c
            if turn is None and pacer.sent >= end_sample:
                # as load.py: the end of speech is when its last chunk was handed over
                turn = SoakTurn(
                    max(pacer.due(end_sample), trio.current_time()),
                    barge=barge,
                    reconnect=reconnect,
                )
                soak.turns.append(turn)
                st.awaiting = turn
        assert turn is not None
        if barge or reconnect:
            async for c in reply_heard(soak, pacer, turn):
                yield c
            if math.isnan(turn.first_audio_at) or turn.done:
                turn.barge = turn.reconnect = False  # nothing playing to cut or drop
            elif barge:
                async for c in pacer.send(silence(args.barge_after_s)):
                    yield c
                if soak.stop.is_set():  # no next sentence: not a barge-in after all
                    turn.barge = False
                else:
                    soak.barge_ins += 1
                continue
            else:
                async for c in pacer.send(silence(args.drop_after_s)):
                    yield c
                life.pending = turn
                leg.drop = True
                leg.done.set()
                while True:  # until the leg is cancelled: the connections drop mid-body
                    async for c in pacer.send(silence(CHUNK / RATE)):
                        yield c
        async for c in reply_done(soak, pacer, turn):
            yield c


async def read_events(client: httpx.AsyncClient, soak: Soak, life: Life, leg: Leg) -> None:
    headers = {**life.auth}
    if life.last_id:
        headers["Last-Event-ID"] = str(life.last_id)
        soak.resumed += 1
    try:
        async with aconnect_sse(client, "GET", life.urls["events"], headers=headers) as source:
            if source.response.status_code != 200:
                soak.errors[f"events HTTP {source.response.status_code}"] += 1
                return
            leg.events_open.set()
            async for sse in source.aiter_sse():
                if sse.data:
                    on_event(soak, life, json.loads(sse.data), sse.id)
        if not leg.stop.is_set():
            soak.errors["events ended early"] += 1
    except httpx.HTTPError as exc:
        soak.errors[f"events {type(exc).__name__}"] += 1
    finally:
        leg.events_ended.set()


def on_event(soak: Soak, life: Life, event: dict, sse_id: str) -> None:
    kind = event.get("type")
    event_id = event.get("event_id")
    if event_id is not None:  # errors outside the log (replay unavailable) have none
        n = int(event_id.removeprefix("event_"))
        if sse_id != str(n):
            soak.id_mismatch += 1
        if n <= life.last_id:
            soak.id_duplicate += 1
        elif n > life.last_id + 1:
            soak.id_missing += n - life.last_id - 1
        life.last_id = max(life.last_id, n)
    if kind == "error":
        soak.errors[f"error event {event.get('error', {}).get('code')}"] += 1
    elif kind == "response.created":
        turn = life.st.awaiting
        rid = event["response"]["id"]
        if turn is not None and turn.response_id is None:
            turn.response_id = rid
            life.responses[rid] = turn
    elif kind == "response.done":
        response = event.get("response", {})
        status = response.get("status")
        turn = life.responses.pop(response.get("id"), None)
        if turn is None:
            soak.errors["response.done of no awaited turn"] += 1
            return
        turn.done = True
        turn.status = status
        turn.server_latency = response.get("latency") or {}
        if status == "cancelled" and not turn.barge:
            soak.errors["response cancelled without a barge-in"] += 1
        elif status not in ("completed", "cancelled"):
            soak.errors[f"response {status}"] += 1
        if status == "completed" and math.isnan(turn.first_audio_at):
            soak.errors["reply without audio"] += 1


async def read_audio(client: httpx.AsyncClient, soak: Soak, slot: int, life: Life, leg: Leg):
    st = life.st
    st.arrivals.clear()
    try:
        async with client.stream("GET", life.urls["stream_audio"], headers=life.auth) as resp:
            if resp.status_code != 200:
                soak.errors[f"stream HTTP {resp.status_code}"] += 1
                return
            leg.stream_open.set()
            soak.live[slot] = st
            await read_stream(resp, leg, st)  # counts "stream ended early"
    except httpx.HTTPError as exc:
        soak.errors[f"stream {type(exc).__name__}"] += 1
    finally:
        soak.live.pop(slot, None)
        soak.drain(st, keep_last=False)
        leg.stream_ended.set()


async def upload(client: httpx.AsyncClient, soak: Soak, life: Life, leg: Leg, lead_s: float):
    try:
        headers = {**life.auth, "Content-Type": "application/octet-stream"}
        body = talk(soak, life, leg, lead_s)
        r = await client.post(life.urls["upload_audio"], content=body, headers=headers)
        if r.status_code != 204:
            soak.errors[f"upload HTTP {r.status_code}"] += 1
    except httpx.HTTPError as exc:
        soak.errors[f"upload {type(exc).__name__}"] += 1
    finally:
        leg.done.set()


async def delete(client: httpx.AsyncClient, soak: Soak, life: Life) -> None:
    life.deleted = True
    with trio.CancelScope(shield=True), trio.move_on_after(15):
        try:
            r = await client.delete(life.urls["session"], headers=life.auth)
            if r.status_code != 204:
                soak.errors[f"delete HTTP {r.status_code}"] += 1
        except httpx.HTTPError as exc:
            soak.errors[f"delete {type(exc).__name__}"] += 1


async def run_leg(
    client: httpx.AsyncClient, soak: Soak, slot: int, life: Life, lead_s: float
) -> bool:
    """One set of connections; True if they were dropped (reconnect), False at the end."""
    leg = Leg(soak.errors)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_audio, client, soak, slot, life, leg)
        nursery.start_soon(read_events, client, soak, life, leg)
        with trio.move_on_after(10):
            await leg.stream_open.wait()
            await leg.events_open.wait()
        if not (leg.stream_open.is_set() and leg.events_open.is_set()):
            soak.errors["connect timeout"] += 1
            leg.stop.set()
            nursery.cancel_scope.cancel()
            return False
        nursery.start_soon(upload, client, soak, life, leg, lead_s)
        await leg.done.wait()
        if leg.drop:
            nursery.cancel_scope.cancel()  # all three connections go at once
            return True
        # The life is over: DELETE with the stream and the events open; both must end.
        leg.stop.set()
        await delete(client, soak, life)
        with trio.move_on_after(5):
            await leg.stream_ended.wait()
            await leg.events_ended.wait()
        if not (leg.stream_ended.is_set() and leg.events_ended.is_set()):
            soak.errors["stream or events still open 5 s after DELETE"] += 1
        nursery.cancel_scope.cancel()
    return False


async def run_slot(soak: Soak, slot: int) -> None:
    """One of the K conversations: sessions one after another until the soak ends."""
    limits = httpx.Limits(max_connections=6, max_keepalive_connections=4)
    lead_s = 0.5 + random.uniform(0, soak.args.stagger_s)  # staggers the sessions
    async with httpx.AsyncClient(
        base_url=soak.base_url, timeout=HTTP_TIMEOUT, limits=limits
    ) as client:
        while not soak.stop.is_set():
            await soak.gate.passage()
            if soak.stop.is_set():
                break
            try:
                r = await client.post(
                    "/api/sessions", json={"responder": "echo"}, headers=soak.auth
                )
            except httpx.HTTPError as exc:
                soak.errors[f"create {type(exc).__name__}"] += 1
                await trio.sleep(2)
                continue
            if r.status_code != 201:
                soak.errors[f"create HTTP {r.status_code}"] += 1
                await trio.sleep(2)
                continue
            info = r.json()
            life = Life(info["id"], {"Authorization": f"Bearer {info['token']}"}, info["urls"])
            soak.lives += 1
            try:
                while await run_leg(client, soak, slot, life, lead_s):
                    soak.reconnects += 1
                    lead_s = 0.0
                lead_s = 0.0
            except Exception as exc:  # a bench counts failures, it does not stop
                soak.errors[f"session {type(exc).__name__}"] += 1
            finally:
                if not life.deleted:
                    await delete(client, soak, life)
            if not soak.stop.is_set():
                soak.churns += 1


# -- sampling ---------------------------------------------------------------------------


@dataclass
class Sampler:
    soak: Soak
    target: Target
    t0: float
    samples: list[dict] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    rss_seen: list[float] = field(default_factory=list)  # MB, every second since the sample
    idle: list[dict] = field(default_factory=list)  # quiet checkpoints' idle snapshots
    was_quiet: bool = False  # a checkpoint began since the last sample

    def __post_init__(self) -> None:
        self.me = psutil.Process()
        self.server = self.target.servers[0]
        self.ours = {self.me.pid, *(p.pid for p in self.target.processes())}
        self.mark()

    def mark(self) -> None:
        self.t_mark = trio.current_time()
        self.cpu_marks = (
            self.target.cpu_s(),
            sum(self.me.cpu_times()[:2]),
            cpu_by_process(),
        )

    async def snapshot(self, client: httpx.AsyncClient) -> dict:
        """The server's figures now (also used idle, before and after the soak)."""
        ps = self.server.ps
        assert ps is not None
        m = await server_counters(client)
        return {
            "rss_mb": self.target.rss() / 2**20,
            "fds": ps.num_fds(),
            "threads": ps.num_threads(),
            "tasks": m.get("voxwire_trio_tasks", math.nan),
            "sessions": m.get("voxwire_sessions", math.nan),
            "readers": m.get("voxwire_stream_readers", math.nan),
            "metrics": m,
        }

    async def sample(self, client: httpx.AsyncClient) -> dict:
        soak = self.soak
        for st in list(soak.live.values()):
            soak.drain(st)
        snap = await self.snapshot(client)
        now = trio.current_time()
        wall = now - self.t_mark
        s0, c0, m0 = self.cpu_marks
        self.mark()
        s1, c1, m1 = self.cpu_marks
        other_s, other_top = other_cpu(m0, m1, self.ours)
        gaps = np.concatenate(soak.interval_gaps) if soak.interval_gaps else np.zeros(0)
        soak.interval_gaps.clear()
        snap.update(
            t=now - self.t0,
            quiet=self.was_quiet or soak.gate.closed,  # (part of) it was a checkpoint
            turns=len(soak.turns),
            barge_ins=soak.barge_ins,
            reconnects=soak.reconnects,
            churns=soak.churns,
            errors=sum(soak.errors.values()),
            gap_p99_ms=pct(gaps, 99),
            server_cpu=100 * (s1 - s0) / wall,
            client_cpu=100 * (c1 - c0) / wall,
            other_cpu=100 * other_s / wall,
            other_top=other_top,
            lag_p99_ms=pct(np.asarray(self.lag) * 1000, 99),
        )
        self.was_quiet = soak.gate.closed
        self.lag.clear()
        seen = [*self.rss_seen, snap["rss_mb"]]
        self.rss_seen.clear()
        # The floor: a leak raises it; concurrent decodes only lift the peaks.
        snap.update(rss_min_mb=min(seen), rss_max_mb=max(seen))
        del snap["metrics"]
        self.samples.append(snap)
        return snap

    async def watch_rss(self) -> None:
        while True:
            await trio.sleep(1)
            if self.target.alive():
                self.rss_seen.append(self.target.rss() / 2**20)

    async def run(self, client: httpx.AsyncClient) -> None:
        """A sample every ``--sample-s`` until the soak stops (not while it winds down)."""
        print(SAMPLE_HEADER, flush=True)
        due = self.t0
        while True:
            due += self.soak.args.sample_s
            await trio.sleep_until(due)
            if not self.target.alive() or self.soak.stop.is_set():
                return
            print(sample_line(await self.sample(client)), flush=True)


SAMPLE_HEADER = (
    "     t   RSS MB (min-max)    fds  thr  tasks  sess  rdrs  turns  barge  recon  churn  errs  "
    "gap p99  srv/cli/other CPU"
)


def sample_line(s: dict) -> str:
    return (
        f"{s['t']:6.0f}  {s['rss_mb']:6.1f} ({s['rss_min_mb']:3.0f}-{s['rss_max_mb']:3.0f})  "
        f"{s['fds']:3d}  {s['threads']:3d}  "
        f"{s['tasks']:5.0f}  {s['sessions']:4.0f}  {s['readers']:4.0f}  {s['turns']:5d}  "
        f"{s['barge_ins']:5d}  {s['reconnects']:5d}  {s['churns']:5d}  {s['errors']:4d}  "
        f"{s['gap_p99_ms']:7.1f}  {s['server_cpu']:3.0f}% / {s['client_cpu']:2.0f}% / "
        f"{s['other_cpu']:2.0f}%" + (f" ({s['other_top']})" if s["other_top"] else "")
    )


# -- figures ----------------------------------------------------------------------------


def fit(t_s: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares slope per hour and its standard error (NaN with < 3 points)."""
    t = np.asarray(t_s, float) / 3600
    v = np.asarray(y, float)
    if len(t) < 3 or np.ptp(t) == 0:
        return math.nan, math.nan
    slope, icept = np.polyfit(t, v, 1)
    resid = v - (slope * t + icept)
    se = math.sqrt(float(resid @ resid) / (len(t) - 2) / float(((t - t.mean()) ** 2).sum()))
    return float(slope), se


def block_fit(t_s: list[float], y: list[float], block_s: float) -> tuple[float, float]:
    """``fit`` over the means of ``block_s`` windows (with 4 or more windows; else ``fit``).

    Talking RSS is not a line plus independent noise: it depends on which decodes happen to
    be running when a sample is taken, and neighbouring samples share that, so a fit over
    the raw samples understates the error (runs 5 and 6 disagreed far beyond their
    per-sample errors). Window means are close to independent.
    """
    t = np.asarray(t_s, float)
    v = np.asarray(y, float)
    if len(t) == 0:
        return math.nan, math.nan
    edges = np.arange(t.min(), t.max() + block_s, block_s)
    blocks = [(t >= a) & (t < a + block_s) for a in edges]
    means = [(t[b].mean(), v[b].mean()) for b in blocks if b.sum() >= 3]
    if len(means) < 4:
        return fit(t_s, y)
    bt, bv = zip(*means, strict=True)
    return fit(list(bt), list(bv))


def describe(t: list[float], v: list[float], fitted: tuple[float, float]) -> dict:
    """A series' range, ends and fitted slope (``fitted``: slope per hour, its s.e.)."""
    slope, se = fitted
    return {
        "min": min(v) if v else math.nan,
        "max": max(v) if v else math.nan,
        "first": v[0] if v else math.nan,
        "last": v[-1] if v else math.nan,
        "slope_per_h": slope,
        "slope_se": se,
        "growth": slope * (t[-1] - t[0]) / 3600 if len(t) >= 3 else math.nan,
    }


def summarise(soak: Soak, sampler: Sampler, idle: tuple[dict, dict], wall: float) -> dict:
    args = soak.args
    warmup = args.warmup_s if args.warmup_s is not None else min(300.0, 0.2 * args.duration_s)
    kept = [s for s in sampler.samples if s["t"] >= warmup and not s.get("quiet")]
    t = [s["t"] for s in kept]
    series = {}
    for key in ("rss_mb", "rss_min_mb", "fds", "threads", "tasks"):
        v = [float(s[key]) for s in kept]
        rss = key.startswith("rss")
        series[key] = describe(t, v, block_fit(t, v, args.block_s) if rss else fit(t, v))
    gaps = np.concatenate(soak.gaps) if soak.gaps else np.zeros(0)
    lat = [x.latency * 1000 for x in soak.turns]
    answered = [x for x in lat if math.isfinite(x)]
    barge = [x for x in soak.turns if x.barge]
    waterfall = {
        k: [x.server_latency[k] for x in soak.turns if x.server_latency.get(k) is not None]
        for k in STAGES
    }
    hours = wall / 3600
    rss_slope = series["rss_min_mb"]["slope_per_h"]
    before, after = idle
    # Idle RSS at the quiet checkpoints and at the end (all after a trim), by time and by
    # sessions created.
    points = [*sampler.idle, *([{**after, "t": wall, "lives": soak.lives}] if after else [])]
    idle_t, idle_rss = [p["t"] for p in points], [p["rss_mb"] for p in points]
    lives = np.asarray([p["lives"] for p in points], float)
    per_life_kb = (
        1024 * float(np.polyfit(lives, idle_rss, 1)[0])
        if len(points) >= 3 and np.ptp(lives) > 0
        else math.nan
    )
    series["idle_rss_mb"] = describe(idle_t, idle_rss, fit(idle_t, idle_rss))
    return {
        "warmup_s": warmup,
        "samples_kept": len(kept),
        "wall_s": wall,
        "series": series,
        "rss_slope_per_session": rss_slope / args.sessions,  # of the floor
        # MB per session created: the slope spread over the churn rate
        "rss_per_life_kb": 1024 * rss_slope / (soak.lives / hours) if soak.lives else math.nan,
        "idle_before": before,
        "idle_after": after,
        "idle_points": [
            {k: p[k] for k in ("t", "lives", "rss_mb", "fds", "tasks", "sessions")} for p in points
        ],
        "idle_rss_per_life_kb": per_life_kb,
        "turns": len(soak.turns),
        "answered": len(answered),
        "eos_p50_ms": pct(answered, 50),
        "eos_p95_ms": pct(answered, 95),
        "eos_max_ms": max(answered) if answered else math.nan,
        "server_p50_ms": {k: pct(v, 50) for k, v in waterfall.items()},
        "server_p95_ms": {k: pct(v, 95) for k, v in waterfall.items()},
        "gap_p50_ms": pct(gaps, 50),
        "gap_p99_ms": pct(gaps, 99),
        "gap_max_ms": float(gaps.max()) if len(gaps) else math.nan,
        "gap_reads": len(gaps),
        "barge_ins": soak.barge_ins,
        "barge_cancelled": sum(x.status == "cancelled" for x in barge),
        "barge_completed": sum(x.status == "completed" for x in barge),
        "reconnects": soak.reconnects,
        "resumed": soak.resumed,
        "lives": soak.lives,
        "churns": soak.churns,
        "id_missing": soak.id_missing,
        "id_duplicate": soak.id_duplicate,
        "id_mismatch": soak.id_mismatch,
        "errors": dict(soak.errors),
        "server_cpu": np.mean([s["server_cpu"] for s in sampler.samples]),
        "client_cpu": np.mean([s["client_cpu"] for s in sampler.samples]),
        "other_cpu": np.mean([s["other_cpu"] for s in sampler.samples]),
        "other_cpu_max": max(s["other_cpu"] for s in sampler.samples),
        "lag_p99_ms": max(s["lag_p99_ms"] for s in sampler.samples),
    }


SERIES = {
    "idle_rss_mb": "idle RSS",
    "rss_mb": "RSS",
    "rss_min_mb": "RSS floor",
    "fds": "fds",
    "threads": "threads",
    "tasks": "tasks",
}


# Idle RSS at the quiet checkpoints (live memory after a trim: little noise), RSS while
# talking, and its floor per interval.
RSS_SERIES = ("idle_rss_mb", "rss_mb", "rss_min_mb")


def rss_inconclusive(r: dict, args: argparse.Namespace) -> str | None:
    """Why the RSS slopes prove nothing either way (None: one is within the limit by more
    than its noise, or ``verdict`` failed them)."""
    s = r["series"]
    bounds = [s[k]["slope_per_h"] + 2 * s[k]["slope_se"] for k in RSS_SERIES]
    if any(b <= args.max_rss_slope_mb_h for b in bounds):
        return None
    noise = float(np.nanmin([2 * s[k]["slope_se"] for k in RSS_SERIES]))
    return (
        f"RSS slopes are within their noise (±{noise:.0f} MB/h at best) but the noise is over "
        f"the {args.max_rss_slope_mb_h:g} MB/h limit: run longer"
    )


def verdict(r: dict, args: argparse.Namespace, alive: bool) -> list[str]:
    """Why the soak failed (empty: it passed). RSS fails only when a slope is over the limit
    by more than its noise (2 standard errors): growth beyond noise."""
    why = []
    if not alive:
        why.append("the server died")
    s = r["series"]
    if r["samples_kept"] < 3:
        why.append(f"only {r['samples_kept']} samples after the warm-up")
    for key in RSS_SERIES:
        slope, se = s[key]["slope_per_h"], s[key]["slope_se"]
        if slope - 2 * se > args.max_rss_slope_mb_h:
            why.append(
                f"{SERIES[key]} slope {slope:+.1f} ± {2 * se:.1f} MB/h > "
                f"{args.max_rss_slope_mb_h:g}"
            )
    for key, limit in (("fds", args.max_fd_growth), ("tasks", args.max_task_growth)):
        if s[key]["growth"] > limit:
            why.append(f"{key} grew {s[key]['growth']:+.1f} over the measured window (> {limit})")
    before, after = r["idle_before"], r["idle_after"]
    if after and before:
        if after["fds"] - before["fds"] > args.max_fd_growth:
            why.append(f"idle fds {before['fds']} -> {after['fds']}")
        if after["tasks"] - before["tasks"] > args.max_task_growth:
            why.append(f"idle tasks {before['tasks']:.0f} -> {after['tasks']:.0f}")
        if after["sessions"]:
            why.append(f"{after['sessions']:.0f} sessions left after the soak")
    if r["id_missing"] or r["id_duplicate"] or r["id_mismatch"]:
        why.append("event id continuity broken")
    return why


def show(
    r: dict, sampler: Sampler, args: argparse.Namespace, fails: list[str], unsure: str | None
) -> None:
    s = r["series"]
    rows = sampler.samples
    step = max(1, math.ceil(len(rows) / args.table_rows))
    print(
        "\n| t (min) | RSS MB (floor) | fds | threads | tasks | sessions | readers | turns "
        "| errors | gap p99 ms | server / client / other CPU |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for x in [*rows[::step][:-1], rows[-1]] if rows else []:
        print(
            f"| {x['t'] / 60:.1f} | {x['rss_mb']:.1f} ({x['rss_min_mb']:.0f}) | {x['fds']} | "
            f"{x['threads']} | "
            f"{x['tasks']:.0f} | {x['sessions']:.0f} | {x['readers']:.0f} | {x['turns']} | "
            f"{x['errors']} | {x['gap_p99_ms']:.0f} | {x['server_cpu']:.0f}% / "
            f"{x['client_cpu']:.0f}% / {x['other_cpu']:.0f}% |"
        )
    print(
        f"\n== summary: {args.sessions} sessions, {r['wall_s'] / 60:.1f} min, "
        f"{len(rows)} samples, {r['samples_kept']} after the {r['warmup_s']:.0f} s warm-up"
    )
    for key, unit in (
        ("idle_rss_mb", "MB"),
        ("rss_mb", "MB"),
        ("rss_min_mb", "MB"),
        ("fds", ""),
        ("threads", ""),
        ("tasks", ""),
    ):
        x = s[key]
        print(
            f"  {SERIES[key]:9s} min {x['min']:.1f}  max {x['max']:.1f}  "
            f"first {x['first']:.1f}  last {x['last']:.1f}  slope {x['slope_per_h']:+.2f} "
            f"± {2 * x['slope_se']:.2f} {unit}/h (2 s.e.), fitted growth {x['growth']:+.1f}"
        )
    print(
        f"  RSS floor slope per session {r['rss_slope_per_session']:+.2f} MB/h; per session "
        f"created "
        f"{r['rss_per_life_kb']:+.1f} KB ({r['lives']} created)"
    )
    if r["idle_points"]:
        print(
            "  idle RSS at the quiet checkpoints (min: MB after N sessions): "
            + ", ".join(
                f"{p['t'] / 60:.0f}: {p['rss_mb']:.0f} after {p['lives']}" for p in r["idle_points"]
            )
            + f"; {r['idle_rss_per_life_kb']:+.1f} KB per session created"
        )
    for name in ("idle_before", "idle_after"):
        x = r[name]
        if x:
            print(
                f"  {name.replace('_', ' '):11s}: RSS {x['rss_mb']:.1f} MB, fds {x['fds']}, "
                f"threads {x['threads']}, tasks {x['tasks']:.0f}, sessions {x['sessions']:.0f}, "
                f"readers {x['readers']:.0f}"
            )
    print(
        f"  turns {r['turns']} ({r['answered']} with reply audio) | end of speech -> first "
        f"reply audio ms p50 {ms(r['eos_p50_ms'])}  p95 {ms(r['eos_p95_ms'])}  max "
        f"{ms(r['eos_max_ms'])}"
    )
    print(waterfall(r))
    print(
        f"  stream gap ms p50 {r['gap_p50_ms']:.1f}  p99 {r['gap_p99_ms']:.1f}  max "
        f"{r['gap_max_ms']:.0f} ({r['gap_reads']} reads)"
    )
    print(
        f"  barge-ins {r['barge_ins']} (reply cancelled {r['barge_cancelled']}, finished first "
        f"{r['barge_completed']}) | reconnects {r['reconnects']} ({r['resumed']} event streams "
        f"resumed) | sessions created {r['lives']}, churned {r['churns']}"
    )
    print(
        f"  event ids: {r['id_missing']} missing, {r['id_duplicate']} duplicated, "
        f"{r['id_mismatch']} id/event_id mismatches"
    )
    log = r["log"]
    print(
        f"  errors {errors_text(r['errors'])} | server log: {log.get('warnings', 0)} warnings, "
        f"{log.get('errors', 0)} errors, {log.get('tracebacks', 0)} tracebacks"
    )
    print(
        f"  CPU mean: server {r['server_cpu']:.0f}%, client {r['client_cpu']:.0f}%, other "
        f"processes {r['other_cpu']:.0f}% (max {r['other_cpu_max']:.0f}% in a sample); client "
        f"loop lag p99 {r['lag_p99_ms']:.1f} ms (worst sample)"
    )
    if fails:
        print("  FAIL: " + "; ".join(fails))
    else:
        print(f"  INCONCLUSIVE: {unsure}" if unsure else "  PASS")


# -- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=2, help="concurrent conversations (K)")
    p.add_argument("--duration-s", type=float, default=3600.0)
    p.add_argument("--sample-s", type=float, default=30.0)
    p.add_argument(
        "--warmup-s", type=float, help="samples ignored by the fits (min(300, 20%% of duration))"
    )
    p.add_argument("--barge-every", type=int, default=3, help="turns; interrupt that reply")
    p.add_argument("--barge-after-s", type=float, default=0.6, help="into the reply's audio")
    p.add_argument("--reconnect-every", type=int, default=4, help="turns; drop the connections")
    p.add_argument("--drop-after-s", type=float, default=0.3, help="into the reply's audio")
    p.add_argument("--turns-per-session", type=int, default=10, help="then DELETE and a new one")
    p.add_argument("--reply-timeout", type=float, default=8.0, help="s; then 'missing reply'")
    p.add_argument("--stagger-s", type=float, default=3.0, help="random extra lead silence")
    p.add_argument("--pause-min-s", type=float, default=0.5, help="pause after a reply")
    p.add_argument("--pause-max-s", type=float, default=1.5)
    p.add_argument(
        "--checkpoint-s",
        type=float,
        default=600.0,
        help="a quiet checkpoint this often: sessions pause, idle RSS is taken (0: none)",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=12.0,
        help="idle this long before an idle snapshot (over the server's 10 s trim interval)",
    )
    p.add_argument(
        "--block-s", type=float, default=600.0, help="talking RSS is fitted over these windows"
    )
    p.add_argument("--max-rss-slope-mb-h", type=float, default=20.0)
    p.add_argument("--max-fd-growth", type=float, default=4.0, help="fitted, and idle after")
    p.add_argument("--max-task-growth", type=float, default=20.0, help="fitted, and idle after")
    p.add_argument("--table-rows", type=int, default=13, help="rows of the condensed table")
    p.add_argument("--json", type=Path, help="also write the samples and figures here")
    args = p.parse_args(argv)
    args.pause_s = (args.pause_min_s, args.pause_max_s)
    return args


async def settle(client: httpx.AsyncClient, sampler: Sampler, quiet_s: float) -> dict:
    """An idle snapshot ``quiet_s`` after no session is left (waiting 20 s at most for that).

    ``quiet_s`` should cover the server's ``malloc_trim`` interval (10 s): the snapshot
    then shows live memory, not what the allocator has not handed back yet.
    """
    with trio.move_on_after(20):
        while True:
            if (await sampler.snapshot(client))["sessions"] == 0:
                break
            await trio.sleep(0.5)
    await trio.sleep(quiet_s)  # the last connections close, the server trims
    snap = await sampler.snapshot(client)
    del snap["metrics"]
    return snap


async def checkpoints(soak: Soak, sampler: Sampler, client: httpx.AsyncClient) -> None:
    """Every ``--checkpoint-s``: let every slot finish its session and park, take an idle
    snapshot (``settle``), then let them go on. Idle RSS after a trim is live memory, so
    its trend across checkpoints shows a leak far above the noise of RSS while talking."""
    args = soak.args
    if args.checkpoint_s <= 0:
        return
    due = sampler.t0
    while True:
        due += args.checkpoint_s
        await trio.sleep_until(due)
        if soak.stop.is_set():
            return
        soak.gate.close()
        sampler.was_quiet = True
        try:
            with trio.move_on_after(args.turns_per_session * (args.reply_timeout + 10)):
                while soak.gate.parked < args.sessions:  # noqa: ASYNC110 - a counter
                    await trio.sleep(0.5)
            snap = await settle(client, sampler, args.settle_s)
        finally:
            soak.gate.open()
        snap.update(t=trio.current_time() - sampler.t0, lives=soak.lives)
        sampler.idle.append(snap)
        print(
            f"  quiet checkpoint at {snap['t']:.0f} s after {snap['lives']} sessions: idle RSS "
            f"{snap['rss_mb']:.1f} MB, {snap['fds']} fds, {snap['tasks']:.0f} tasks, "
            f"{snap['sessions']:.0f} sessions",
            flush=True,
        )


async def main(args: argparse.Namespace) -> int:
    speech = [synthesize((t,), gap_s=0.0, lead_s=0.0).samples for t in SENTENCES]
    log_dir = Path(tempfile.mkdtemp(prefix="voxwire-soak-"))
    target = Target("pipeline", 1, log_dir)
    await target.start()
    key = os.environ.get("VOXWIRE_API_KEY")
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    soak = Soak(args, target.base_url, speech, auth)
    try:
        async with httpx.AsyncClient(base_url=target.base_url, timeout=10, headers=auth) as mc:
            await trio.sleep(1)
            t0 = trio.current_time()
            sampler = Sampler(soak, target, t0)
            before = await settle(mc, sampler, args.settle_s)
            print(
                f"voxwire soak: {args.sessions} sessions for {args.duration_s:.0f} s, server "
                f"{target.base_url}, log {log_dir / 'server0.log'}; idle RSS "
                f"{before['rss_mb']:.0f} MB, {before['fds']} fds, {before['tasks']:.0f} tasks; "
                f"barge-in every {args.barge_every} turns, reconnect every "
                f"{args.reconnect_every}, new session every {args.turns_per_session}",
                flush=True,
            )
            t0 = trio.current_time()
            sampler.t0 = t0
            sampler.mark()
            async with trio.open_nursery() as nursery:

                async def lag_task() -> None:
                    await loop_lag(sampler.lag)

                nursery.start_soon(lag_task)
                nursery.start_soon(sampler.watch_rss)
                nursery.start_soon(sampler.run, mc)
                nursery.start_soon(checkpoints, soak, sampler, mc)
                async with trio.open_nursery() as sessions:
                    for slot in range(args.sessions):
                        sessions.start_soon(run_slot, soak, slot)
                    end = t0 + args.duration_s
                    while trio.current_time() < end:
                        if not target.alive():
                            break
                        await trio.sleep(min(1.0, end - trio.current_time()))
                    # sessions finish the turn in flight, then DELETE their session
                    soak.stop.set()
                    soak.gate.open()
                    sessions.cancel_scope.deadline = trio.current_time() + args.reply_timeout + 30
                wall = trio.current_time() - t0
                nursery.cancel_scope.cancel()
            alive = target.alive()
            after = await settle(mc, sampler, args.settle_s) if alive else {}
    finally:
        target.stop()
    if not sampler.samples:
        print("no samples")
        return 1
    r = summarise(soak, sampler, (before, after), wall)
    r["log"] = dict(target.log_problems([0]))
    fails = verdict(r, args, alive)
    unsure = None if fails else rss_inconclusive(r, args)
    show(r, sampler, args, fails, unsure)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args), "samples": sampler.samples, "summary": r},
                indent=2,
                default=str,
            )
        )
    return 1 if fails else (2 if unsure else 0)


if __name__ == "__main__":
    started = time.monotonic()
    code = trio.run(main, parse_args())
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    sys.exit(code)
