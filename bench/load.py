"""Load benchmark: how many concurrent sessions voxwire holds, ramped in steps until a limit breaks.

Not a test. The goal (the open load issue): **at least 8 talking sessions on one process on
the 2 cores, with p95 end of speech → first reply audio ≤ 1.2 s and a WER no worse than
with one session.** Modes:

- ``--mode pipeline``: one ``run.py`` (real models, ``echo`` responder, default turn
  detection, ``--turn-detection`` to change it). Every session talks like a person: a
  conversational sentence of several clauses (5.6-7.5 s, ``tests/corpus.py``: the Piper
  voice, slowed Piper and espeak-ng voices, one turn in ``--noise-every`` with pink noise
  22 dB under the speech), then silence while the echo says it back, until the reply has
  finished playing (``response.done``), a random pause (``--pause-min-s`` to
  ``--pause-max-s``), the next sentence; while it reads ``stream_audio`` and the SSE
  events. Sessions start staggered over ``--stagger-s`` so their turns do not align. The
  microphone hands a chunk to the upload once all of it has been "recorded", in one of two
  styles (``--upload``):

  - ``stream``: 20 ms chunks on one long chunked POST per session (like ``curl -T -``);
  - ``posts``: 100 ms chunks, one POST each with ``X-Sequence`` on a keep-alive connection,
    one in flight at a time, 429 answered by waiting ``Retry-After`` and sending the chunk
    again (the Swift client's ``AudioUploader``).

  Per step, over the turns whose speech ended in the measured window (client side, trio
  clock; times as bench/latency.py's, whose recorders and scoring this bench uses):

  - end of speech → first reply audio: from when the chunk holding the last voiced sample
    was handed over (its write finished / its POST began) to the arrival of the first
    non-zero sample of the reply on ``stream_audio``; a turn that gets no reply (none, or
    an empty transcript) counts as infinitely late;
  - speech onset → first partial: from when the chunk holding the first voiced sample was
    handed over to the turn's first ``conversation.item.input_audio_transcription.delta``;
  - WER of the final transcripts against the corpus text (corpus level, ``tests/corpus.py``'s
    ``word_errors``; a turn split in two is scored on both joined), for all turns and by
    engine (Piper, espeak-ng: Whisper hears espeak-ng's formant voices much worse);
  - upload lag: the microphone's end of speech → that hand-over (the chunk's length, plus
    any backlog of POSTs), and, in ``posts`` style, the POST round trip and the 429s;
  - server CPU (psutil on the server process: 100% = one core), RSS per session (peak RSS
    during the step over the idle RSS before the first step, ÷ sessions);
  - the scheduler from ``/metrics``: queue wait p50/p95 by priority
    (``voxwire_scheduler_wait_seconds``, histogram, label ``priority``) and queue depth
    mean/max by priority (``voxwire_scheduler_queue_depth``, gauge, read every second);
    "n/a" where the server does not expose them;
  - the server's own waterfall from ``response.done``'s ``latency``.

  A step holds when p95 end of speech → first reply audio is ≤ ``--latency-limit-ms``
  (1200) and the p99 gap between stream reads is ≤ 100 ms.
- ``--mode cluster``: the same sessions against ``--instances`` (default: the cores)
  ``run.py`` processes behind a real nginx running ``deploy/nginx.conf``
  (``deploy/cluster.py``).
- ``--mode transport``: one ``run.py``, ``loopback`` responder (no models): each session
  uploads a tone in real time (``--chunk-ms`` chunks on one chunked POST) and reads its
  stream; a step holds when the p99 gap is ≤ 50 ms.
- ``--mode cluster-transport``: transport sessions against the nginx cluster.

In every mode a step also fails when a session cannot be set up or loses its stream. The
ramp stops at the first step that fails; the last step that held is the figure.

    .venv/bin/python bench/load.py --mode pipeline                  # 1,2,4,6,8,10 x 60 s (~8 min)
    .venv/bin/python bench/load.py --mode pipeline --upload posts   # the same, 100 ms POSTs
    .venv/bin/python bench/load.py --mode cluster                   # 2 instances + nginx
    .venv/bin/python bench/load.py --mode transport                 # 25,50,75,100,150... x 30 s
    .venv/bin/python bench/load.py --mode pipeline --steps 1,2 --step-s 30 --all-steps  # check

The load runs in this process's trio loop: client and server share the machine's cores,
so the client's own CPU and loop lag, and the CPU of every other process, are printed
with every step.
"""

from __future__ import annotations

import argparse
import bisect
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
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import psutil
import trio
from _common import ROOT, Server, by_label, free_port, histogram_delta, histogram_quantile
from latency import RATE, Figures, Playback, measure, plan, td_for, view
from latency import Turn as Spoken
from transport import loop_lag, pct, server_counters, tone_chunk

sys.path.insert(0, str(ROOT))

from deploy.cluster import SESSION_ID_HEADER, proxy_command
from tests import corpus
from tests.conftest import SessionHandle
from tests.voice import Events

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

WAV_HEADER = 44
BYTES_PER_S = RATE * 2
CHUNK = RATE // 10  # Pacer's default: 100 ms
MODES = ("pipeline", "cluster", "transport", "cluster-transport")
DEFAULT_STEPS = {
    "pipeline": "1,2,4,6,8,10",
    "cluster": "1,2,4,6,8,10,12,16",
    "transport": "25,50,75,100,150,200,300,400",
    "cluster-transport": "25,50,75,100,150,200,300,400",
}
DEFAULT_GAP_LIMIT_MS = {
    "pipeline": 100.0,
    "cluster": 100.0,
    "transport": 50.0,
    "cluster-transport": 50.0,
}
UPLOAD_CHUNK_MS = {"stream": 20, "posts": 100}  # talking sessions' chunk, by --upload
TAIL_S = 0.8  # a noisy turn's noise runs on this long after the speech
SCHED_WAIT = "voxwire_scheduler_wait_seconds"
SCHED_DEPTH = "voxwire_scheduler_queue_depth"
SCHED_DROPPED = "voxwire_scheduler_dropped_total"
PARTIALS_SKIPPED = "voxwire_partials_skipped_total"
REPLY_GAPS = "voxwire_reply_gaps_total"


def loopback(mode: str) -> bool:
    """Transport-only sessions (the loopback responder, no models)?"""
    return mode.endswith("transport")


def clustered(mode: str) -> bool:
    """N processes behind nginx?"""
    return mode.startswith("cluster")


STAGES = ("turn_detected_ms", "transcript_ms", "first_audio_queued_ms", "first_audio_byte_ms")
HTTP_TIMEOUT = httpx.Timeout(15.0, read=60.0)  # events may be quiet for 15 s (the ping)
# One client per session (a shared pool scans its connections on every request): the
# stream, the events, the upload and a spare.
SESSION_LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


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
    sessions: list[SessionState | Talker] = field(default_factory=list)
    stop_at: float = math.inf  # when stop was set

    def note_setup(self, ok: bool) -> None:
        if ok:
            self.ready += 1
        else:
            self.failed += 1
        if self.ready + self.failed >= self.n:
            self.settled.set()


class SetupNote:
    """Tells the step, once, whether one session got set up."""

    def __init__(self, step: Step) -> None:
        self.step = step
        self.told = False

    def __call__(self, ok: bool) -> None:
        if not self.told:
            self.told = True
            self.step.note_setup(ok)


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


async def run_session(
    base_url: str,
    step: Step,
    setup: trio.Semaphore,
    args: argparse.Namespace,
) -> None:
    """A transport session: a tone up, the loopback down."""
    st = SessionState()
    step.sessions.append(st)
    note = SetupNote(step)
    session_id = auth = None
    phase = "setup"
    # One client per session: a shared pool scans its connections on every request.
    async with httpx.AsyncClient(
        base_url=base_url, timeout=HTTP_TIMEOUT, limits=SESSION_LIMITS
    ) as client:
        try:
            async with setup:
                r = await client.post("/api/sessions", json={"responder": "loopback"})
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
                    note(True)
                    phase = "session"
                    await step.go.wait()
                    body = tone_stream(step, args.chunk_ms)
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
                await delete_session(client, session_id, auth, step)


async def delete_session(
    client: httpx.AsyncClient, session_id: str, auth: dict[str, str], step: Step
) -> None:
    """The end of a session (shielded: it runs when the step's sessions are cancelled)."""
    with trio.CancelScope(shield=True), trio.move_on_after(15):
        try:
            r = await client.delete(f"/api/sessions/{session_id}", headers=auth)
            if r.status_code != 204:
                step.errors[f"delete HTTP {r.status_code}"] += 1
        except httpx.HTTPError as exc:
            step.errors[f"delete {type(exc).__name__}"] += 1


# -- a talking session ------------------------------------------------------------------


def speech_pool(voices: tuple[str, ...], noise_every: int) -> list[corpus.Utterance]:
    """Every conversational sentence once, the voices in turn, 1 in ``noise_every`` noisy
    (bench/latency.py's plan), each with 0.5 s before it and a noisy one's noise running
    on for :data:`TAIL_S` after it."""
    every = argparse.Namespace(
        turns=len(corpus.CONVERSATIONAL), hesitations=0, commands=0, noise_every=noise_every
    )
    return [t.utt.padded(0.0, TAIL_S, seed=i) for i, t in enumerate(plan(every, voices))]


def engine(voice: str) -> str:
    """What a turn's WER is grouped by: ``piper`` or ``espeak``."""
    return corpus.voice(voice).engine


@dataclass
class Talker:
    """What one talking session recorded. Samples are counted from the microphone's first."""

    events: Events = field(default_factory=Events)
    playback: Playback = field(default_factory=Playback)
    turns: list[Spoken] = field(default_factory=list)
    voiced: list[tuple[int, int]] = field(default_factory=list)  # per turn: onset, offset
    t0: float = math.nan  # when the microphone's first sample was recorded
    handed_at: list[float] = field(default_factory=list)  # per chunk handed to the upload
    handed_total: list[int] = field(default_factory=list)  # samples handed over by then
    post_s: list[float] = field(default_factory=list)  # posts style: each POST's round trip
    throttled: int = 0  # posts style: 429s

    def handed(self, when: float, samples: int) -> None:
        self.handed_at.append(when)
        self.handed_total.append((self.handed_total[-1] if self.handed_total else 0) + samples)

    def handed_over(self, sample: int) -> float:
        """When the chunk holding sample ``sample`` was handed over (NaN: never)."""
        i = bisect.bisect_right(self.handed_total, sample)
        return self.handed_at[i] if i < len(self.handed_at) else math.nan

    def mic_time(self, sample: int) -> float:
        return self.t0 + sample / RATE

    def settle(self) -> None:
        """The turns' onset and end of speech: when their voiced edges were handed over."""
        for turn, (on, off) in zip(self.turns, self.voiced, strict=True):
            turn.onset_at = self.handed_over(on)
            turn.end_at = self.handed_over(off - 1)

    # the stream record that the gap figures read (as SessionState's)
    @property
    def arrivals(self) -> list[float]:
        return [t for t, _ in self.playback.chunks]

    @property
    def stream_bytes(self) -> list[int]:
        totals = [n for _, n in self.playback.chunks]
        return [2 * (b - a) for a, b in zip([0, *totals], totals, strict=False)]


def reply_over(
    tk: Talker, turn: Spoken, end_mic: float, stopping: bool, args: argparse.Namespace
) -> bool:
    """Can the person speak again: the reply has finished playing, or none is coming?"""
    v = view(turn, tk.events, tk.playback, start=turn.first_event)
    now = trio.current_time()
    if v.done is not None:
        return True  # response.done comes once the playout has played the reply
    if v.first_audio is None and now > end_mic + args.reply_timeout:
        return True  # no reply (counted when the step is measured)
    final = v.final
    if final is not None and not final[1].strip() and now > final[0] + 1.0:
        return True  # an empty transcript: the server does not answer
    if stopping and v.first_audio is not None:
        return True  # the step is over and this turn's figure is in
    return now > end_mic + args.reply_timeout + 60


async def talk(
    tk: Talker,
    mic: trio.MemorySendChannel[np.ndarray],
    pool: list[corpus.Utterance],
    first: int,
    lead_s: float,
    step: Step,
    args: argparse.Namespace,
    rng: random.Random,
) -> None:
    """The person at the microphone: sentences from ``pool`` (from ``first`` on), each
    followed by silence until its reply has played, then a pause; until the step stops."""
    chunk = RATE * args.chunk_ms // 1000
    recorded = 0

    async def say(samples: np.ndarray) -> None:
        nonlocal recorded
        for at in range(0, len(samples), chunk):
            piece = samples[at : at + chunk]
            recorded += len(piece)
            await trio.sleep_until(tk.mic_time(recorded))  # a chunk once all of it is recorded
            mic.send_nowait(piece)

    async with mic:
        tk.t0 = trio.current_time()
        await say(silence(lead_s))
        k = first
        while not step.stop.is_set():
            u = pool[k % len(pool)]
            k += 1
            turn = Spoken(engine(u.voice), u)
            turn.start_at = tk.mic_time(recorded)
            turn.first_event = len(tk.events.got)
            if tk.turns:
                tk.turns[-1].next_at = turn.start_at
            tk.turns.append(turn)
            tk.voiced.append((recorded + u.onset, recorded + u.offset))
            end_mic = tk.mic_time(recorded + u.offset)
            await say(u.samples)
            while not reply_over(tk, turn, end_mic, step.stop.is_set(), args):
                await say(silence(0.1))
            if not step.stop.is_set():
                await say(silence(rng.uniform(*args.pause_s)))


async def upload_stream(
    client: httpx.AsyncClient,
    tk: Talker,
    s: SessionHandle,
    mic: trio.MemoryReceiveChannel[np.ndarray],
    step: Step,
) -> None:
    """``stream`` style: every chunk on one chunked POST (``curl -T -``)."""

    async def body() -> AsyncIterator[bytes]:
        async with mic:
            async for piece in mic:
                yield piece.astype("<i2").tobytes()
                tk.handed(trio.current_time(), len(piece))  # its write has finished

    headers = {**s.auth, "Content-Type": "application/octet-stream"}
    r = await client.post(s.urls["upload_audio"], content=body(), headers=headers)
    if r.status_code != 204:
        step.errors[f"upload HTTP {r.status_code}"] += 1


async def upload_posts(
    client: httpx.AsyncClient,
    tk: Talker,
    s: SessionHandle,
    mic: trio.MemoryReceiveChannel[np.ndarray],
    step: Step,
) -> None:
    """``posts`` style: one POST a chunk, in order, one in flight (the Swift client)."""
    async with mic:
        sequence = 0
        async for piece in mic:
            body = piece.astype("<i2").tobytes()
            while True:
                began = trio.current_time()
                headers = {
                    **s.auth,
                    "Content-Type": "application/octet-stream",
                    "X-Sequence": str(sequence),
                }
                r = await client.post(s.urls["upload_audio"], content=body, headers=headers)
                tk.post_s.append(trio.current_time() - began)
                if r.status_code != 429:
                    break
                tk.throttled += 1
                await trio.sleep(float(r.headers.get("Retry-After", "1")))
            if r.status_code != 204:
                step.errors[f"upload HTTP {r.status_code}"] += 1
            tk.handed(began, len(piece))
            sequence += 1


async def keep_reading(
    what: str,
    read: Callable[[httpx.AsyncClient, SessionHandle], Awaitable[None]],
    client: httpx.AsyncClient,
    s: SessionHandle,
    step: Step,
) -> None:
    """Runs a recorder (stream or events) and counts it when it ends before the step does."""
    try:
        await read(client, s)
    except httpx.HTTPError as exc:
        if not step.stop.is_set():
            step.errors[f"{what} {type(exc).__name__}"] += 1
        return
    if not step.stop.is_set():
        step.errors[f"{what} ended early"] += 1


async def run_talker(
    base_url: str,
    step: Step,
    setup: trio.Semaphore,
    pool: list[corpus.Utterance],
    index: int,
    args: argparse.Namespace,
) -> None:
    """Session ``index`` of the step's ``step.n``: set up, then talk once ``step.go`` is set."""
    tk = Talker()
    step.sessions.append(tk)
    rng = random.Random(f"{step.n}:{index}")
    slot = args.stagger_s / step.n  # session starts spread evenly, jittered in their slot
    lead_s = 0.3 + index * slot + rng.uniform(0, min(1.0, slot))
    first = index * len(pool) // step.n
    note = SetupNote(step)
    s: SessionHandle | None = None
    phase = "setup"
    upload = upload_stream if args.upload == "stream" else upload_posts
    async with httpx.AsyncClient(
        base_url=base_url, timeout=HTTP_TIMEOUT, limits=SESSION_LIMITS
    ) as client:
        try:
            async with setup:
                config = {"responder": "echo", "turn_detection": td_for(args.turn_detection)}
                r = await client.post("/api/sessions", json=config)
                if r.status_code != 201:
                    step.errors[f"create HTTP {r.status_code}"] += 1
                    return
                info = r.json()
                s = SessionHandle(info["id"], info["token"], info["urls"], info)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_reading, "stream", tk.playback.run, client, s, step)
                nursery.start_soon(keep_reading, "events", tk.events.run, client, s, step)
                await tk.events.wait_for("session.created", within=args.setup_timeout)
                with trio.fail_after(args.setup_timeout):
                    while True:  # the stream's first samples: it is open
                        if tk.playback.n:
                            break
                        await trio.sleep(0.05)
                note(True)
                phase = "session"
                await step.go.wait()
                send, receive = trio.open_memory_channel[np.ndarray](math.inf)
                async with trio.open_nursery() as person:
                    person.start_soon(upload, client, tk, s, receive, step)
                    person.start_soon(talk, tk, send, pool, first, lead_s, step, args, rng)
                nursery.cancel_scope.cancel()
        except Exception as exc:  # a bench counts failures, it does not stop
            step.errors[f"{phase} {type(exc).__name__}"] += 1
        finally:
            note(False)
            if s is not None:
                await delete_session(client, s.id, s.auth, step)


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

    async def scrape(self) -> dict[str, float]:
        """The voxwire_* samples of every instance's ``/metrics``, summed."""
        out: Counter[str] = Counter()
        for s in self.servers:
            async with httpx.AsyncClient(base_url=s.base_url, timeout=5) as client:
                out.update(await server_counters(client))
        return dict(out)

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
    target: Target,
    n: int,
    args: argparse.Namespace,
    pool: list[corpus.Utterance],
    baseline: int,
) -> dict[str, Any]:
    step = Step(n, args.mode)
    setup = trio.Semaphore(args.setup_concurrency)
    lag: list[float] = []
    depth: list[dict[str, float]] = []  # the scheduler's queue depth, read every second
    me = psutil.Process()
    offsets = [s.log_size() for s in target.servers]
    async with trio.open_nursery() as nursery:
        t_setup = trio.current_time()
        for i in range(n):
            if loopback(args.mode):
                nursery.start_soon(run_session, target.base_url, step, setup, args)
            else:
                nursery.start_soon(run_talker, target.base_url, step, setup, pool, i, args)
        with trio.move_on_after(args.setup_timeout):
            await step.settled.wait()
        setup_s = trio.current_time() - t_setup
        lag_scope = trio.CancelScope()

        async def lag_task() -> None:
            with lag_scope:
                await loop_lag(lag)

        nursery.start_soon(lag_task)
        metrics0 = await target.scrape()
        s_cpu0, c_cpu0, m_cpu0 = target.cpu_s(), sum(me.cpu_times()[:2]), cpu_by_process()
        t0 = trio.current_time()
        step.go.set()
        peak_rss = target.rss()
        end = t0 + args.step_s
        while trio.current_time() < end and target.alive():
            await trio.sleep(min(1.0, end - trio.current_time()))
            if target.alive():
                peak_rss = max(peak_rss, target.rss())
                if not loopback(args.mode):
                    depth.append(by_label(await target.scrape(), SCHED_DEPTH, "priority"))
        t1 = trio.current_time()
        s_cpu1, c_cpu1, m_cpu1 = target.cpu_s(), sum(me.cpu_times()[:2]), cpu_by_process()
        metrics1 = await target.scrape() if target.alive() else metrics0
        ours = {me.pid, *(p.pid for p in target.processes())}
        other_s, other_top = other_cpu(m_cpu0, m_cpu1, ours)
        lag_scope.cancel()
        alive = target.alive()
        spread = await target.sessions_per_instance() if alive else None
        # Talking sessions finish the turn in flight (until its first reply audio).
        step.stop.set()
        t_grace = step.stop_at = trio.current_time()
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
    result: dict[str, Any] = {
        "sessions": n,
        "ready": step.ready,
        "setup_s": setup_s,
        "grace_s": grace_s,
        "measured_s": wall,
        "gap_p50_ms": pct(gaps, 50),
        "gap_p99_ms": pct(gaps, 99),
        "gap_max_ms": max(gaps) if gaps else math.nan,
        "audio_rx_pct": 100 * rx / (BYTES_PER_S * wall * max(1, step.ready)),
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
    if not loopback(args.mode):
        talkers = [tk for tk in step.sessions if isinstance(tk, Talker)]
        result |= conversation_figures(talkers, step, t0, t1)
        result["scheduler"] = scheduler_figures(metrics0, metrics1, depth)
        dropped0, dropped1 = (by_label(m, SCHED_DROPPED, "reason") for m in (metrics0, metrics1))
        result["scheduler_dropped"] = {k: v - dropped0.get(k, 0.0) for k, v in dropped1.items()}
        skipped = [m.get(PARTIALS_SKIPPED) for m in (metrics0, metrics1)]
        result["partials_skipped"] = (
            math.nan if None in skipped else float(skipped[1] or 0) - float(skipped[0] or 0)
        )
        gaps = [m.get(REPLY_GAPS) for m in (metrics0, metrics1)]
        result["reply_gaps"] = (
            math.nan if None in gaps else float(gaps[1] or 0) - float(gaps[0] or 0)
        )
    result["errors"] = dict(step.errors)
    result["fails"] = verdict(result, args)
    return result


def merge(into: Figures, f: Figures) -> None:
    for k, v in f.values.items():
        into.values.setdefault(k, []).extend(v)
    into.edits += f.edits
    into.words += f.words
    into.turns += f.turns
    into.split += f.split
    into.missed += f.missed


def p50_p95_ms(values: list[float]) -> tuple[float, float]:
    """p50 and p95 in ms of values in seconds; NaN when empty. With an infinite value
    (a turn without a reply) they are taken without interpolation, so inf stays inf."""
    if not values:
        return math.nan, math.nan
    x = np.asarray(values) * 1000
    method = "linear" if np.isfinite(x).all() else "higher"
    p50, p95 = np.percentile(x, [50, 95], method=method)
    return float(p50), float(p95)


def conversation_figures(talkers: list[Talker], step: Step, t0: float, t1: float) -> dict[str, Any]:
    """The turns whose speech ended in the measured window ``t0``..``t1``, scored."""
    groups: dict[str, Figures] = {}
    lag: list[float] = []
    waterfall: dict[str, list[float]] = {k: [] for k in STAGES}
    post_s: list[float] = []
    throttled = 0
    for tk in talkers:
        tk.settle()
        counted = [
            t
            for t, (_, off) in zip(tk.turns, tk.voiced, strict=True)
            if t0 <= tk.mic_time(off) <= t1 and not math.isnan(t.end_at)
        ]
        for t, (_, off) in zip(tk.turns, tk.voiced, strict=True):
            if t in counted:
                lag.append(t.end_at - tk.mic_time(off))
                v = view(t, tk.events, tk.playback, start=t.first_event, until=t.next_at)
                latency = (v.done or {}).get("response", {}).get("latency") or {}
                for k in STAGES:
                    if latency.get(k) is not None:
                        waterfall[k].append(latency[k])
        for kind, f in measure(counted, tk.events, tk.playback).items():
            merge(groups.setdefault(kind, Figures()), f)
        post_s += tk.post_s
        throttled += tk.throttled
        for t, e in tk.events.got:
            if t >= step.stop_at:
                break
            if e["type"] == "error":
                step.errors[f"error event {e.get('error', {}).get('code')}"] += 1
            elif e["type"] == "response.done":
                status = e.get("response", {}).get("status")
                if status != "completed":
                    step.errors[f"response {status}"] += 1
    every = Figures()
    for f in groups.values():
        merge(every, f)
    answered = every.values.get("eos_first_audio", [])
    eos = answered + [math.inf] * (every.turns - len(answered))  # no reply: never
    eos_p50, eos_p95 = p50_p95_ms(eos)
    onset = p50_p95_ms(every.values.get("onset_partial", []))
    final = p50_p95_ms(every.values.get("eos_transcript", []))
    return {
        "turns": every.turns,
        "answered": len(answered),
        "split": every.split,
        "missed": every.missed,
        "eos_p50_ms": eos_p50,
        "eos_p95_ms": eos_p95,
        "eos_max_ms": 1000 * max(answered) if answered else math.nan,
        "partial_p50_ms": onset[0],
        "partial_p95_ms": onset[1],
        "final_p50_ms": final[0],
        "final_p95_ms": final[1],
        "wer": {
            k: {"edits": f.edits, "words": f.words}
            for k, f in sorted({**groups, "all": every}.items())
        },
        "upload_lag_p50_ms": p50_p95_ms(lag)[0],
        "upload_lag_p95_ms": p50_p95_ms(lag)[1],
        "post_p50_ms": p50_p95_ms(post_s)[0],
        "post_p95_ms": p50_p95_ms(post_s)[1],
        "throttled": throttled,
        "server_p50_ms": {k: pct(v, 50) for k, v in waterfall.items()},
        "server_p95_ms": {k: pct(v, 95) for k, v in waterfall.items()},
    }


def scheduler_figures(
    before: dict[str, float], after: dict[str, float], depth: list[dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Queue wait (from the histogram's growth over the step) and depth, by priority."""
    out: dict[str, dict[str, float]] = {}
    for prio, buckets in histogram_delta(before, after, SCHED_WAIT, "priority").items():
        out[prio] = {
            "jobs": buckets[-1][1] if buckets else 0.0,
            "wait_p50_ms": 1000 * histogram_quantile(buckets, 0.50),
            "wait_p95_ms": 1000 * histogram_quantile(buckets, 0.95),
        }
    for prio in sorted({p for d in depth for p in d}):
        seen = [d.get(prio, 0.0) for d in depth]
        out.setdefault(prio, {}).update(depth_mean=float(np.mean(seen)), depth_max=max(seen))
    return out


def wer_of(r: dict[str, Any], group: str = "all") -> float:
    w = r.get("wer", {}).get(group)
    return w["edits"] / w["words"] if w and w["words"] else math.nan


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
    """The server's per-stage latency line (p50/p95 of ``response.done``'s ``latency``)."""
    p50, p95 = r["server_p50_ms"], r["server_p95_ms"]
    return "  server's waterfall from end of speech, ms p50/p95: " + ", ".join(
        f"{k.removesuffix('_ms')} {ms(p50[k])}/{ms(p95[k])}" for k in STAGES
    )


def errors_text(errors: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"


def pair(a: float, b: float) -> str:
    return f"{ms(a)} / {ms(b)}"


def wer_text(r: dict[str, Any], group: str = "all") -> str:
    w = r["wer"].get(group)
    return "n/a" if not w or not w["words"] else f"{w['edits'] / w['words']:.1%} of {w['words']}"


def scheduler_text(r: dict[str, Any]) -> str:
    sched = r["scheduler"]
    waits = [
        f"{p} {pair(f['wait_p50_ms'], f['wait_p95_ms'])} ({f['jobs']:.0f} jobs)"
        for p, f in sorted(sched.items())
        if "wait_p50_ms" in f
    ]
    depths = [
        f"{p} {f['depth_mean']:.1f} / {f['depth_max']:.0f}"
        for p, f in sorted(sched.items())
        if "depth_mean" in f
    ]
    dropped = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["scheduler_dropped"].items()))
    skipped = r["partials_skipped"]
    return (
        f"  scheduler queue wait ms p50/p95 by priority: {', '.join(waits) or 'n/a'}\n"
        f"  scheduler queue depth mean/max by priority: {', '.join(depths) or 'n/a'} | jobs "
        f"dropped: {dropped or ('none' if sched else 'n/a')} | partials skipped: {ms(skipped)}"
        f" | reply pieces late (voxwire_reply_gaps): {ms(r.get('reply_gaps', math.nan))}"
    )


def show_conversation(r: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"  turns {r['turns']} ({r['answered']} answered, {r['split']} split, {r['missed']} "
        f"missed) | end of speech -> first reply audio ms p50 {ms(r['eos_p50_ms'])}  p95 "
        f"{ms(r['eos_p95_ms'])}  max answered {ms(r['eos_max_ms'])}"
    )
    print(
        f"  speech onset -> first partial ms p50/p95 "
        f"{pair(r['partial_p50_ms'], r['partial_p95_ms'])} | end of speech -> final "
        f"transcript {pair(r['final_p50_ms'], r['final_p95_ms'])}"
    )
    print(
        f"  WER {wer_text(r)} words (piper {wer_text(r, 'piper')}, espeak-ng "
        f"{wer_text(r, 'espeak')})"
    )
    posts = (
        f" | POST round trip ms p50/p95 {pair(r['post_p50_ms'], r['post_p95_ms'])}, "
        f"{r['throttled']} answered 429"
        if args.upload == "posts"
        else ""
    )
    print(
        f"  upload lag (end of speech at the microphone -> handed over) ms p50/p95 "
        f"{pair(r['upload_lag_p50_ms'], r['upload_lag_p95_ms'])}{posts}"
    )
    print(waterfall(r))
    print(scheduler_text(r))


def show_step(r: dict[str, Any], args: argparse.Namespace) -> None:
    held = "HELD" if not r["fails"] else "FAILED: " + "; ".join(r["fails"])
    print(
        f"\n== {r['sessions']} sessions: {held}\n"
        f"  {r['ready']} set up in {r['setup_s']:.1f} s, {r['measured_s']:.0f} s measured, "
        f"{r['grace_s']:.1f} s to wind down (turns in flight finish)"
    )
    if not loopback(args.mode):
        show_conversation(r, args)
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


def show_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    tail = "server / client / other CPU | client lag p99 (ms) | RSS per session (marginal) | held |"
    if loopback(args.mode):
        print(f"\n| sessions | gap p50 / p99 / max (ms) | audio rx | errors | {tail}")
        print("|---:|---|---:|---|---|---:|---|---|")
    else:
        print(
            "\n| sessions | turns | end of speech → first audio p50 / p95 (ms) | onset → first "
            "partial p50 / p95 (ms) | WER | scheduler wait p95 (ms) | gap p50 / p99 / max (ms) "
            f"| errors | {tail}"
        )
        print("|---:|---:|---|---|---|---|---|---|---|---:|---|---|")
    prev: dict[str, Any] | None = None
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
            lat = pair(r["eos_p50_ms"], r["eos_p95_ms"])
            partial = pair(r["partial_p50_ms"], r["partial_p95_ms"])
            waits = ", ".join(
                f"{p} {ms(f['wait_p95_ms'])}"
                for p, f in sorted(r["scheduler"].items())
                if "wait_p95_ms" in f
            )
            print(
                f"| {r['sessions']} | {r['turns']} | {lat} | {partial} | {wer_text(r)} | "
                f"{waits or 'n/a'} | {gap} | {common}"
            )


def show_summary(results: list[dict[str, Any]], args: argparse.Namespace, target: Target) -> None:
    cores = psutil.cpu_count() or 1
    held = [r for r in results if not r["fails"]]
    where = (
        f"{len(target.servers)} processes behind nginx" if clustered(args.mode) else "one process"
    )
    style = "" if loopback(args.mode) else f", upload {args.upload} ({args.chunk_ms} ms chunks)"
    print(f"\n== summary ({args.mode}: {where}{style}; client and server share {cores} cores)")
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
            f"  at {best['sessions']}: end of speech -> first reply audio p50 "
            f"{ms(best['eos_p50_ms'])} / p95 {ms(best['eos_p95_ms'])} ms over {best['turns']} "
            f"turns; speech onset -> first partial p50 {ms(best['partial_p50_ms'])} / p95 "
            f"{ms(best['partial_p95_ms'])} ms"
        )
        one = next((r for r in results if r["sessions"] == 1), None)
        print(
            f"  at {best['sessions']}: WER {wer_text(best)} words"
            + ("" if one is None else f" (1 session: {wer_text(one)})")
        )
        print(scheduler_text(best).replace("  scheduler", f"  at {best['sessions']}: scheduler"))
        goal = best["sessions"] >= 8 and (
            one is None or not wer_of(best) > wer_of(one) or best is one
        )
        print(
            f"  goal (>= 8 sessions with p95 <= {args.latency_limit_ms:g} ms and WER no worse "
            f"than with one session): {'met' if goal else 'not met'}"
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
        "--step-s", type=float, help="measured seconds per step (default 60, transport 30)"
    )
    p.add_argument(
        "--instances", type=int, default=psutil.cpu_count() or 2, help="cluster mode: processes"
    )
    p.add_argument(
        "--upload",
        choices=tuple(UPLOAD_CHUNK_MS),
        default="stream",
        help="talking sessions: 20 ms chunks on one chunked POST, or 100 ms chunks one POST each",
    )
    p.add_argument(
        "--chunk-ms", type=int, help="upload chunks (default: stream 20, posts 100, transport 100)"
    )
    p.add_argument(
        "--turn-detection",
        default="server_vad:500",
        help="server_vad[:silence_ms] or semantic_vad[:eagerness]",
    )
    p.add_argument("--voices", default="", help="comma-separated; default all available")
    p.add_argument("--noise-every", type=int, default=3, help="1 turn in N gets pink noise")
    p.add_argument("--latency-limit-ms", type=float, default=1200.0, help="p95 limit")
    p.add_argument("--gap-limit-ms", type=float, help="p99 gap limit (100, transport 50)")
    p.add_argument(
        "--reply-timeout", type=float, default=8.0, help="s from end of speech to first audio"
    )
    p.add_argument("--stagger-s", type=float, default=10.0, help="session starts spread over")
    p.add_argument("--pause-min-s", type=float, default=0.5, help="pause after a reply")
    p.add_argument("--pause-max-s", type=float, default=1.5)
    p.add_argument("--setup-concurrency", type=int, default=32)
    p.add_argument("--setup-timeout", type=float, default=120.0)
    p.add_argument("--all-steps", action="store_true", help="do not stop at the first failure")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    args.levels = [int(x) for x in (args.steps or DEFAULT_STEPS[args.mode]).split(",")]
    if args.step_s is None:
        args.step_s = 30.0 if loopback(args.mode) else 60.0
    if args.gap_limit_ms is None:
        args.gap_limit_ms = DEFAULT_GAP_LIMIT_MS[args.mode]
    if args.chunk_ms is None:
        args.chunk_ms = 100 if loopback(args.mode) else UPLOAD_CHUNK_MS[args.upload]
    args.pause_s = (args.pause_min_s, args.pause_max_s)
    td_for(args.turn_detection)  # fail early on a typo
    return args


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    pool: list[corpus.Utterance] = []
    if not loopback(args.mode):
        voices = tuple(args.voices.split(",")) if args.voices else corpus.available_voices()
        pool = speech_pool(voices, args.noise_every)  # renders (or loads) before the server
        speech = [u.speech_s for u in pool]
        print(
            f"{len(pool)} conversational sentences, speech {np.mean(speech):.1f} s mean "
            f"({min(speech):.1f}-{max(speech):.1f} s), voices {', '.join(voices)}, 1 in "
            f"{args.noise_every} with pink noise; upload {args.upload}: {args.chunk_ms} ms "
            + ("chunks on one chunked POST" if args.upload == "stream" else "chunks, one POST each")
            + f"; turn detection {args.turn_detection}"
        )
    log_dir = Path(tempfile.mkdtemp(prefix="voxwire-load-"))
    target = Target(args.mode, args.instances, log_dir)
    results: list[dict[str, Any]] = []
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
            r = await run_step(target, n, args, pool, baseline)
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
