"""Turn latency benchmark: conversational speech through one real voxwire process.

Not a test. Starts ``run.py`` (real models, echo responder) as a subprocess. For each
turn-detection mode (``--modes``) it holds one session and speaks, in real time, in 20 ms
chunks on ONE long chunked upload (one POST whose body is an async generator, like
``curl -T -``), while reading ``stream_audio`` and the SSE events concurrently:

1. ``--turns`` conversational utterances of 5-8 s with several clauses (tests/corpus.py),
   cycling through ``--voices`` (the bundled Piper voice, slowed Piper, espeak-ng voices),
   some with pink noise 22 dB under the speech (the noise runs on through the silence
   that follows the turn);
2. ``--hesitations`` sentences with a 0.8 s pause mid-sentence ("I would like to book a
   table for ... four people tomorrow evening, please."): does the turn end in the pause?
3. ``--commands`` short commands (the first bench's set) in the Piper voice; every other
   reply is interrupted (the next command starts 0.6 s into it) to measure barge-in.

Between turns the client waits for the reply's ``response.done``, then ~1 s of silence.
Conversational and hesitation replies (the echo responder says the whole sentence back)
are cancelled with ``response.cancel`` once their first audio has arrived, which halves
the run time and changes none of the figures (``--full-replies`` lets them play).

Figures per turn, client side, trio clock (client and server share the same 2 cores):

- end of speech → first reply audio: the last voiced sample uploaded (clean render's
  edge) → the first non-zero sample of the reply arriving on ``stream_audio``;
- end of speech → final transcript: → ``...input_audio_transcription.completed``;
- speech onset → first partial: the first voiced sample uploaded → the first
  ``...transcription.delta`` of the turn (and from ``speech_started``);
- WER of the final transcript (corpus level: word edits / reference words; a turn split
  in two is scored on both transcripts joined);
- turns split (the server committed more than one user turn inside one utterance) and
  missed (no turn detected);
- server: end of speech → turn committed, from ``response.done``'s ``latency``
  (``turn_detected_ms``: how long the turn detector waited);
- barge-in ``speech_started`` → silence (commands): until the client's playback, started
  at the first stream byte in real time, passes the cut reply's last non-zero sample.

A mode the server refuses (422, e.g. ``semantic_vad`` on a server without it) is printed
as "not available".

    .venv/bin/python bench/latency.py                          # ~5 min: both modes
    .venv/bin/python bench/latency.py --modes server_vad:250 --turns 6 --voices piper
    .venv/bin/python bench/latency.py --llm --turns 6 --modes server_vad

``--modes`` takes ``server_vad[:silence_ms]`` and ``semantic_vad[:eagerness]``.
``--llm`` runs the ``llm`` responder against the tests' OpenAI-compatible fake server
(started in this process) with a fixed time to first token and token rate, and prints how
end of speech → first audio splits into transcript + first token + first sentence + TTS.

Speech models as services: ``--stt openai`` and/or ``--tts openai`` start the tests'
OpenAI-compatible audio service (tests/audio_service.py: the embedded Whisper tiny.en and
Piper behind ``/v1/audio/transcriptions`` and ``/v1/audio/speech``, speech streamed in
20 ms pieces in real time) in this process, and run the same turns (same sentences, same
voices) twice, each on its own ``run.py`` process: first with the local models (the
baseline), then with ``VOXWIRE_STT_BACKEND``/``VOXWIRE_TTS_BACKEND=openai`` pointed at the
service (``--stt-partials`` sets ``VOXWIRE_STT_PARTIALS``; the server's default is
``local``: partial transcripts stay on the embedded Whisper). The tables then have both
columns per mode, and three more rows:

- voxwire server CPU per talking session: the ``run.py`` process's CPU over the mode's run
  (one talking session), in % of one core;
- bench process CPU: the client plus, with remote models, the audio service's inference;
- the requests the service saw per turn (transcriptions / speech), by when they arrived.

The service shares the same 2 cores as voxwire and the client, so its inference cost
lands in this process and slows everything a little; which is why the server's own CPU
per session, not the latency, is the sizing figure: with the models elsewhere, sessions
per voxwire core ≈ 100 % / that figure (docs: bench/README.md, deploy/README.md).

    .venv/bin/python bench/latency.py --stt openai --tts openai --modes server_vad:500 \
        --turns 4 --hesitations 0 --commands 0
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import psutil
import trio
from _common import ROOT, Server

sys.path.insert(0, str(ROOT))

from tests import corpus
from tests.conftest import SessionHandle
from tests.fake_llm import FakeLlm, start_fake_llm
from tests.voice import Events, WavBody

if TYPE_CHECKING:
    from collections.abc import Iterator

RATE = 16000
SENTENCES = corpus.COMMANDS  # the short-command set (this bench's earlier sentences)
NOISE_DB = 22.0
LEAD_S = 0.5  # silence (or the turn's noise) uploaded before each utterance
GAP_S = 1.0  # silence after a reply's response.done before the next turn
REPLY_TIMEOUT_S = 15.0  # give up waiting for a turn's reply after this


@dataclass
class Turn:
    kind: str  # "conversation", "hesitation" or "command"
    utt: corpus.Utterance  # padded with LEAD_S before the speech
    barge_in: bool = False  # the next turn interrupts this one's reply
    start_at: float = math.nan  # trio time the turn's first sample (lead) was uploaded
    onset_at: float = math.nan  # ... its first voiced sample
    end_at: float = math.nan  # ... its last voiced sample
    next_at: float = math.inf  # when the next turn's upload began
    first_event: int = 0  # index into the events recorded when the turn began


class Playback:
    """Records ``stream_audio`` and finds reply audio without re-scanning the stream."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, int]] = []  # (arrival time, samples so far)
        self._times: list[float] = []
        self._parts: list[np.ndarray] = []
        self._voiced: list[tuple[int, float, np.ndarray]] = []  # (start, time, nonzero idx)
        self._voiced_starts: list[int] = []
        self.n = 0

    async def run(self, client: httpx.AsyncClient, s: SessionHandle) -> None:
        url = f"/api/sessions/{s.id}/stream_audio"
        body = WavBody()
        async with client.stream("GET", url, headers=s.auth) as response:
            async for data in response.aiter_bytes():
                samples = body.feed(data)
                if not len(samples):
                    continue
                now = trio.current_time()
                nz = np.flatnonzero(samples)
                if len(nz):
                    self._voiced.append((self.n, now, nz + self.n))
                    self._voiced_starts.append(self.n)
                self._parts.append(samples)
                self.n += len(samples)
                self.chunks.append((now, self.n))
                self._times.append(now)

    def stalls(self) -> tuple[int, float]:
        """How often, and for how long in all, the player of :meth:`played_at` waited for
        a late chunk: each wait makes it play (and go silent at a barge-in) later."""
        waits = [start - due for due, start, _, _ in self._player() if start > due]
        return len(waits), sum(waits)

    def _player(self) -> Iterator[tuple[float, float, int, int]]:
        """Per chunk: when the player is due to start it (nan for the first), when it does
        (it waits for a late chunk; it starts at the first byte), and its sample range."""
        due, prev = math.nan, 0
        for when, total in self.chunks:
            start = when if math.isnan(due) else max(due, when)
            yield due, start, prev, total
            due, prev = start + (total - prev) / RATE, total

    def received_by(self, t: float) -> int:
        """Samples that had arrived at time ``t``."""
        i = bisect.bisect_right(self._times, t)
        return self.chunks[i - 1][1] if i else 0

    def first_voiced_from(self, k: int) -> tuple[int, float] | None:
        """(index, arrival time) of the first non-zero sample at or after index ``k``."""
        i = max(0, bisect.bisect_right(self._voiced_starts, k) - 1)
        for _start, when, nz in self._voiced[i:]:
            after = nz[nz >= k]
            if len(after):
                return int(after[0]), when
        return None

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self._parts) if self._parts else np.zeros(0, np.int16)

    def played_at(self, index: int) -> float:
        """When a real-time player started at the first byte plays sample ``index``; it
        waits (stalls) when a chunk arrives late, so no sample plays before it arrived."""
        for _due, start, first, total in self._player():
            if index < total:
                return start + (index - first) / RATE
        return math.nan


# -- the conversation -------------------------------------------------------------------


def plan(args: argparse.Namespace, voices: tuple[str, ...]) -> list[Turn]:
    turns: list[Turn] = []
    texts = corpus.CONVERSATIONAL
    for i in range(args.turns):
        text = texts[(i * 7) % len(texts)]  # 7 is coprime with 40: every sentence once
        noisy = args.noise_every > 0 and (i + i // len(voices)) % args.noise_every == (
            args.noise_every - 1
        )
        u = corpus.utterance(text, voices[i % len(voices)], snr_db=NOISE_DB if noisy else None)
        turns.append(Turn("conversation", u.padded(LEAD_S, 0, seed=i)))
    for i in range(args.hesitations):
        h = corpus.hesitation(voices[(i * 3 + 1) % len(voices)], pause_s=0.8)
        turns.append(Turn("hesitation", h.padded(LEAD_S, 0)))
    for i in range(args.commands):
        u = corpus.utterance(SENTENCES[i % len(SENTENCES)], "piper")
        barge = i % 2 == 1 and i + 1 < args.commands
        turns.append(Turn("command", u.padded(LEAD_S, 0), barge_in=barge))
    return turns


def td_for(mode: str) -> dict[str, Any]:
    kind, _, arg = mode.partition(":")
    if kind == "server_vad":
        return {"type": "server_vad", "silence_duration_ms": int(arg or 500)}
    if kind == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": arg or "auto"}
    raise SystemExit(f"--modes: unknown mode {mode!r} (server_vad[:ms], semantic_vad[:eagerness])")


class NotAvailable(Exception):
    pass


COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
STARTED = "input_audio_buffer.speech_started"


@dataclass
class View:
    """What the events and the stream say about one turn: the user turns the server
    detected inside it (more than one when it split the utterance), their transcripts, and
    the reply to the last one."""

    items: list[str] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)
    completed: dict[str, tuple[float, str]] = field(default_factory=dict)
    deltas: list[float] = field(default_factory=list)
    reply_at: float | None = None  # response.created after the last transcript
    done: dict[str, Any] | None = None  # ... and its response.done
    first_audio: tuple[int, float] | None = None  # its first non-zero sample, arrival

    @property
    def pending(self) -> bool:
        return not self.items or any(i not in self.completed for i in self.items)

    @property
    def final(self) -> tuple[float, str] | None:
        return None if self.pending else self.completed[self.items[-1]]

    @property
    def transcript(self) -> str:
        return " ".join(self.completed[i][1] for i in self.items if i in self.completed)


def view(
    turn: Turn, events: Events, playback: Playback, *, start: int = 0, until: float = math.inf
) -> View:
    """``start``: index into ``events.got`` where the turn's events may begin."""
    v = View()
    got = [(t, e) for t, e in events.got[start:] if t >= turn.start_at]
    for t, e in got:
        if e["type"] == STARTED and t < until:
            v.items.append(e["item_id"])
            v.started[e["item_id"]] = t
        elif e["type"] == COMPLETED and e["item_id"] in v.started:
            v.completed[e["item_id"]] = (t, e["transcript"])
        elif e["type"] == DELTA and e["item_id"] in v.started:
            v.deltas.append(t)
    if v.final is None:
        return v
    # The reply is the first response after the last item's speech began: usually after its
    # transcript, but semantic_vad with echo may start it first (docs/architecture.md).
    began = v.started[v.items[-1]]
    for t, e in got:
        if t < began:
            continue
        if v.reply_at is None and e["type"] == "response.created":
            v.reply_at = t
        elif v.reply_at is not None and e["type"] == "response.done":
            v.done = e
            break
    if v.reply_at is not None:
        hit = playback.first_voiced_from(playback.received_by(v.reply_at))
        if hit is not None and hit[1] < until:
            v.first_audio = hit
    return v


async def converse(
    base_url: str, turns: list[Turn], mode: str, *, responder: str, full_replies: bool
) -> tuple[Events, Playback]:
    chunk = RATE * 20 // 1000
    noise_loop = corpus.noise(RATE * 10, 1.0, seed=7)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        r = await client.post(
            "/api/sessions", json={"turn_detection": td_for(mode), "responder": responder}
        )
        if r.status_code == 422:
            raise NotAvailable(r.json().get("error", {}).get("message", r.text))
        r.raise_for_status()
        body = r.json()
        s = SessionHandle(body["id"], body["token"], body["urls"], body)
        events, playback = Events(extensions=True), Playback()

        async def cancel_reply() -> None:
            await client.post(
                f"/api/sessions/{s.id}/events", headers=s.auth, json={"type": "response.cancel"}
            )

        def settled(turn: Turn, v: View) -> bool:
            """The turn's reply is over, or none is coming (no turn, an empty transcript)."""
            now = trio.current_time()
            if not v.items:
                return now > turn.end_at + 3.0  # missed: the detector never fired
            final = v.final
            if final is None:
                return False
            return v.done is not None or (not final[1].strip() and now > final[0] + 1.0)

        async def audio(nursery: trio.Nursery) -> Any:
            sent = 0
            noise_at = 0
            t0 = trio.current_time()

            async def send(samples: np.ndarray) -> Any:
                nonlocal sent
                for at in range(0, len(samples), chunk):
                    piece = samples[at : at + chunk]
                    yield piece.astype("<i2").tobytes()
                    sent += len(piece)
                    await trio.sleep_until(t0 + sent / RATE)

            def quiet(n: int, rms: float) -> np.ndarray:
                nonlocal noise_at
                if rms == 0:
                    return np.zeros(n, np.int16)
                idx = (noise_at + np.arange(n)) % len(noise_loop)
                noise_at += n
                return corpus.add(np.zeros(n, np.int16), noise_loop[idx] * rms)

            async for c in send(np.zeros(RATE, np.int16)):
                yield c
            for i, turn in enumerate(turns):
                u = turn.utt
                turn_events = len(events.got)
                turn.start_at = t0 + sent / RATE
                if i:
                    turns[i - 1].next_at = turn.start_at
                turn.onset_at = t0 + (sent + u.onset) / RATE
                turn.end_at = t0 + (sent + u.offset) / RATE
                rms = u.noise_rms
                async for c in send(u.samples):
                    yield c
                start = turn.first_event = max(0, turn_events - 1)
                deadline = turn.end_at + REPLY_TIMEOUT_S
                if turn.barge_in:
                    # quiet until this turn's reply is playing, then interrupt it 0.6 s in
                    while trio.current_time() < deadline:
                        v = view(turn, events, playback, start=start)
                        if v.first_audio is not None or settled(turn, v):
                            break
                        async for c in send(quiet(chunk, rms)):
                            yield c
                    async for c in send(quiet(30 * chunk, rms)):
                        yield c
                else:
                    cancelled = full_replies or turn.kind == "command"
                    while trio.current_time() < deadline:
                        v = view(turn, events, playback, start=start)
                        if settled(turn, v):
                            break
                        if not cancelled and v.first_audio is not None:
                            cancelled = True
                            nursery.start_soon(cancel_reply)
                        async for c in send(quiet(chunk, rms)):
                            yield c
                    async for c in send(quiet(int(GAP_S * RATE), rms)):
                        yield c
                if sys.stdout.isatty():
                    print(f"  {mode}: turn {i + 1}/{len(turns)}", end="\r", flush=True)
            async for c in send(np.zeros(RATE, np.int16)):
                yield c

        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run, client, s)
            nursery.start_soon(playback.run, client, s)
            await events.wait_for("session.created")
            r = await client.post(
                f"/api/sessions/{s.id}/upload_audio", headers=s.auth, content=audio(nursery)
            )
            r.raise_for_status()
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        await client.delete(f"/api/sessions/{s.id}", headers=s.auth)
    if sys.stdout.isatty():
        print(" " * 40, end="\r")
    return events, playback


# -- figures -----------------------------------------------------------------------------

FIGURES = (
    ("eos_first_audio", "end of speech → first reply audio"),
    ("eos_transcript", "end of speech → final transcript"),
    ("server_committed", "end of speech → turn committed (server)"),
    ("onset_partial", "speech onset → first partial"),
    ("detected_partial", "`speech_started` → first partial"),
    ("barge_onset_silence", "barge-in speech onset → client silent"),
    ("barge_silence", "barge-in `speech_started` → client silent"),
    ("transcript_to_first_token", "final transcript → first token (server)"),
    ("first_token_to_first_byte", "first token → first audio byte (server)"),
)


@dataclass
class Figures:
    values: dict[str, list[float]] = field(default_factory=dict)
    edits: int = 0
    words: int = 0
    turns: int = 0
    split: int = 0
    missed: int = 0
    cut_in_pause: int = 0  # hesitation: a reply started during the pause
    # requests the audio service saw during these turns, by route ("stt", "tts")
    requests: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, v: float) -> None:
        self.values.setdefault(key, []).append(v)


def measure(turns: list[Turn], events: Events, playback: Playback) -> dict[str, Figures]:
    out: dict[str, Figures] = {}
    nonzero = np.flatnonzero(playback.samples)
    for i, turn in enumerate(turns):
        f = out.setdefault(turn.kind, Figures())
        f.turns += 1
        v = view(turn, events, playback, start=turn.first_event, until=turn.next_at)
        if not v.items:
            f.missed += 1
            continue
        if len(v.items) > 1:
            f.split += 1
        edits, n = corpus.word_errors(turn.utt.text, v.transcript)
        f.edits += edits
        f.words += n
        final = v.final
        if final is not None:
            f.add("eos_transcript", final[0] - turn.end_at)
        if v.deltas:
            f.add("onset_partial", v.deltas[0] - turn.onset_at)
            f.add("detected_partial", v.deltas[0] - v.started[v.items[0]])
        lat = (v.done or {}).get("response", {}).get("latency") or {}
        if lat.get("turn_detected_ms") is not None:
            f.add("server_committed", lat["turn_detected_ms"] / 1000)
        if lat.get("first_token_ms") is not None and lat.get("transcript_ms") is not None:
            f.add(
                "transcript_to_first_token", (lat["first_token_ms"] - lat["transcript_ms"]) / 1000
            )
        if lat.get("first_audio_byte_ms") is not None and lat.get("first_token_ms") is not None:
            f.add(
                "first_token_to_first_byte",
                (lat["first_audio_byte_ms"] - lat["first_token_ms"]) / 1000,
            )
        if turn.kind == "hesitation" and turn.utt.pause is not None:
            # did reply audio (to the first fragment) arrive while the user paused?
            p0 = turn.start_at + turn.utt.pause[0] / RATE
            p1 = turn.start_at + turn.utt.pause[1] / RATE
            hit = playback.first_voiced_from(playback.received_by(p0))
            if hit is not None and hit[1] < p1 + 0.3:
                f.cut_in_pause += 1
        if v.first_audio is None:
            continue
        idx, arrived = v.first_audio
        f.add("eos_first_audio", arrived - turn.end_at)
        if turn.barge_in and i + 1 < len(turns):
            nxt = turns[i + 1]
            nv = view(nxt, events, playback, start=nxt.first_event, until=nxt.next_at)
            # the cut reply's last sample: the last non-zero before a 300 ms gap
            span = nonzero[nonzero >= idx]
            gaps = np.flatnonzero(np.diff(span) > 0.3 * RATE)
            last = int(span[gaps[0]]) if len(gaps) else int(span[-1])
            silent_at = playback.played_at(last)
            f.add("barge_onset_silence", silent_at - nxt.onset_at)
            if nv.items:
                f.add("barge_silence", silent_at - nv.started[nv.items[0]])
    return out


SERVICE_ROUTES = {"/v1/audio/transcriptions": "stt", "/v1/audio/speech": "tts"}


class StampedRequests(list):  # type: ignore[type-arg]
    """The audio service's request log, each entry stamped with its trio arrival time
    (the service runs in this process, on this clock)."""

    def append(self, entry: Any) -> None:
        entry["at"] = trio.current_time()
        super().append(entry)


def count_requests(
    turns: list[Turn], requests: list[dict[str, Any]], out: dict[str, Figures]
) -> None:
    """Attribute each service request to the turn it arrived in (from the turn's first
    uploaded sample to the next turn's) and add it to that turn kind's ``requests``."""
    for f in out.values():
        f.requests = {"stt": 0, "tts": 0}
    for r in requests:
        route = SERVICE_ROUTES.get(r.get("path", ""))
        at = r.get("at", math.nan)
        for turn in turns:
            if route and turn.start_at <= at < turn.next_at and turn.kind in out:
                out[turn.kind].requests[route] += 1
                break


def dump(path: Path, mode: str, turns: list[Turn], events: Events) -> None:
    """Append one JSON line: the turns and every event, times relative to the first."""
    t0 = events.got[0][0] if events.got else 0.0
    line = {
        "mode": mode,
        "turns": [
            {
                "kind": t.kind,
                "voice": t.utt.voice,
                "noise": t.utt.snr_db,
                "text": t.utt.text,
                "start": t.start_at - t0,
                "onset": t.onset_at - t0,
                "end": t.end_at - t0,
            }
            for t in turns
        ],
        "events": [{"t": round(t - t0, 3), **e} for t, e in events.got],
    }
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def cell(values: list[float] | None) -> str:
    if not values:
        return "n/a"
    ms = [1000 * v for v in values]
    return f"{pct(ms, 50):.0f} / {pct(ms, 95):.0f} ms (n={len(ms)})"


def table(
    title: str,
    kind: str,
    results: dict[str, dict[str, Figures] | str],
    cpu: dict[str, float],
    *,
    rows: tuple[str, ...],
    remote: dict[str, bool] | None = None,
    bench_cpu: dict[str, float] | None = None,
) -> None:
    """``remote`` (column → whether it ran on the audio service) and ``bench_cpu``: the
    side-by-side run of ``--stt``/``--tts openai``; without them the table is as it was."""
    modes = list(results)
    print(f"\n== {title}")
    print("| figure (p50 / p95) | " + " | ".join(f"`{m}`" for m in modes) + " |")
    print("|---|" + "---|" * len(modes))

    def line(name: str, fn: Any) -> None:
        cells = []
        for m in modes:
            r = results[m]
            if isinstance(r, str):
                cells.append("not available")
            elif kind not in r:
                cells.append("n/a")
            else:
                cells.append(fn(r[kind]))
        print(f"| {name} | " + " | ".join(cells) + " |")

    labels = dict(FIGURES)
    for key in rows:
        line(labels[key], lambda f, key=key: cell(f.values.get(key)))
    line("transcript WER (corpus)", lambda f: f"{f.edits / max(1, f.words):.1%} of {f.words} words")
    line("turns split / missed", lambda f: f"{f.split} / {f.missed} of {f.turns}")
    if kind == "hesitation":
        line("reply audio during the pause", lambda f: f"{f.cut_in_pause} of {f.turns}")
    if remote is not None:

        def per_turn(m: str, f: Figures) -> str:
            if not remote.get(m):
                return "— (local models)"
            n = max(1, f.turns)
            return f"{f.requests.get('stt', 0) / n:.1f} / {f.requests.get('tts', 0) / n:.1f}"

        cells = []
        for m in modes:
            r = results[m]
            if isinstance(r, str):
                cells.append("not available")
            elif kind not in r:
                cells.append("n/a")
            else:
                cells.append(per_turn(m, r[kind]))
        print("| service requests per turn: transcriptions / speech | " + " | ".join(cells) + " |")
    cells = [
        "not available" if isinstance(results[m], str) else f"{cpu.get(m, math.nan):.0%}"
        for m in modes
    ]
    if remote is None:
        print("| server CPU over the session (of one core) | " + " | ".join(cells) + " |")
        return
    print(
        "| **voxwire server CPU per talking session** (of one core) | " + " | ".join(cells) + " |"
    )
    cells = [
        "not available"
        if isinstance(results[m], str)
        else f"{(bench_cpu or {}).get(m, math.nan):.0%}"
        for m in modes
    ]
    label = "bench process CPU (client + audio service when remote)"
    print(f"| {label} | " + " | ".join(cells) + " |")


LOCAL_ENV = {"VOXWIRE_STT_BACKEND": "local", "VOXWIRE_TTS_BACKEND": "local"}


def remote_env(args: argparse.Namespace, url: str) -> dict[str, str]:
    """The second server's environment: the chosen models on the service at ``url``."""
    env = dict(LOCAL_ENV)
    if args.stt == "openai":
        env |= {"VOXWIRE_STT_BACKEND": "openai", "VOXWIRE_STT_BASE_URL": url}
        if args.stt_partials:
            env["VOXWIRE_STT_PARTIALS"] = args.stt_partials
    if args.tts == "openai":
        env |= {"VOXWIRE_TTS_BACKEND": "openai", "VOXWIRE_TTS_BASE_URL": url}
    return env


def remote_label(args: argparse.Namespace) -> str:
    parts = [name for name in ("stt", "tts") if getattr(args, name) == "openai"]
    return "+".join(parts) + " remote"


def describe(env: dict[str, str]) -> str:
    return ", ".join(f"{k.removeprefix('VOXWIRE_')}={v}" for k, v in env.items())


async def start_service(nursery: trio.Nursery) -> Any:
    """tests/audio_service.py in this process (imported here: it loads quart and the
    models), its request log stamped with arrival times."""
    from tests.audio_service import AudioService, load_audio_models, start_audio_service

    t0 = trio.current_time()
    models = await trio.to_thread.run_sync(load_audio_models)
    service = AudioService(requests=StampedRequests())
    await start_audio_service(nursery, service, models=models)
    print(
        f"audio service (tests/audio_service.py, Whisper tiny.en + Piper, in the bench "
        f"process) on {service.url}, loaded in {trio.current_time() - t0:.1f} s"
    )
    return service


LLM_REPLY = (
    "Sure, I can help with that. Here is a little more detail about your request, which "
    "takes the model a while to finish generating."
)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="conversational turns per mode")
    parser.add_argument("--hesitations", type=int, default=2, help="hesitation turns per mode")
    parser.add_argument("--commands", type=int, default=6, help="short-command turns per mode")
    parser.add_argument("--voices", default="", help="comma-separated; default all available")
    parser.add_argument("--modes", default="server_vad:500,semantic_vad:auto")
    parser.add_argument("--noise-every", type=int, default=3, help="1 turn in N gets noise")
    parser.add_argument("--full-replies", action="store_true", help="do not cancel replies")
    parser.add_argument("--dump", type=Path, help="write each mode's turns and events here")
    parser.add_argument("--llm", action="store_true", help="llm responder, fake server")
    parser.add_argument("--ttft-ms", type=int, default=300, help="fake LLM first token")
    parser.add_argument("--token-ms", type=int, default=50, help="fake LLM per token")
    parser.add_argument(
        "--stt",
        choices=["local", "openai"],
        default="local",
        help="openai: also run the turns with STT on the tests' audio service",
    )
    parser.add_argument(
        "--tts",
        choices=["local", "openai"],
        default="local",
        help="openai: also run the turns with TTS on the tests' audio service",
    )
    parser.add_argument(
        "--stt-partials",
        choices=["local", "remote", "off"],
        help="VOXWIRE_STT_PARTIALS of the remote run (with --stt openai; default: the server's)",
    )
    args = parser.parse_args()
    if args.stt_partials and args.stt != "openai":
        parser.error("--stt-partials needs --stt openai")
    async with trio.open_nursery() as nursery:
        await run(args, nursery)
        nursery.cancel_scope.cancel()


async def run(args: argparse.Namespace, nursery: trio.Nursery) -> None:
    voices = tuple(args.voices.split(",")) if args.voices else corpus.available_voices()
    for v in voices:
        corpus.voice(v)  # fail early on a typo
    if not corpus.espeak_available():
        print("espeak-ng not installed: Piper voices only")
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        td_for(m)
    log_path = Path(tempfile.mkdtemp(prefix="voxwire-latency-")) / "server.log"
    responder = "echo"
    if args.llm:
        fake = await start_fake_llm(
            nursery,
            FakeLlm(
                reply=LLM_REPLY,
                first_token_delay_s=args.ttft_ms / 1000,
                token_delay_s=args.token_ms / 1000,
            ),
        )
        os.environ["OPENAI_BASE_URL"] = fake.url
        responder = "llm"
        words = LLM_REPLY.split()
        first = next(i for i, w in enumerate(words) if w.endswith("."))
        print(
            f"fake LLM: first token after {args.ttft_ms} ms, then {args.token_ms} ms per token; "
            f"first sentence complete after {args.ttft_ms + first * args.token_ms} ms, "
            f"whole answer after {args.ttft_ms + (len(words) - 1) * args.token_ms} ms"
        )
    turns0 = plan(args, voices)  # renders (or loads) the audio before the server starts
    speech = [t.utt.speech_s for t in turns0 if t.kind == "conversation"]
    service = None
    # (column suffix, extra server env): one run.py process each, one after the other
    setups: list[tuple[str, dict[str, str]]] = [("", {})]
    if args.stt == "openai" or args.tts == "openai":
        service = await start_service(nursery)
        setups = [("local", LOCAL_ENV), (remote_label(args), remote_env(args, service.url))]
    results: dict[str, dict[str, Figures] | str] = {}
    cpu: dict[str, float] = {}
    bench_cpu: dict[str, float] = {}
    remote: dict[str, bool] = {}
    me = psutil.Process()
    for n, (suffix, env) in enumerate(setups):
        log = log_path if not n else log_path.with_name(f"server-{n}.log")
        server = Server(log, ready_path="/readyz", env=env)
        await server.start()
        what = f" ({suffix}: {describe(env)})" if suffix else ""
        print(f"voxwire latency bench{what}: server on {server.base_url}, log {log}")
        if speech and not n:
            print(
                f"conversational turns: {len(speech)}, speech {np.mean(speech):.1f} s mean "
                f"({min(speech):.1f}-{max(speech):.1f} s), voices {', '.join(voices)}, "
                f"1 in {args.noise_every} with pink noise at {NOISE_DB:g} dB SNR"
            )
        try:
            for mode in modes:
                column = f"{mode} {suffix}" if suffix else mode
                remote[column] = bool(n)
                turns = plan(args, voices)
                cpu0, t0 = server.cpu_s(), trio.current_time()
                mine0 = sum(me.cpu_times()[:2])
                try:
                    events, playback = await converse(
                        server.base_url,
                        turns,
                        mode,
                        responder=responder,
                        full_replies=args.full_replies,
                    )
                except NotAvailable as exc:
                    print(f"{column}: not available ({exc})")
                    results[column] = "not available"
                    continue
                wall = trio.current_time() - t0
                cpu[column] = (server.cpu_s() - cpu0) / wall
                bench_cpu[column] = (sum(me.cpu_times()[:2]) - mine0) / wall
                figures = measure(turns, events, playback)
                if service is not None:
                    count_requests(turns, service.requests, figures)
                results[column] = figures
                if args.dump:
                    dump(args.dump, column, turns, events)
                stalls, stalled = playback.stalls()
                print(
                    f"{column}: done in {wall:.0f} s; the stream's real-time player stalled "
                    f"{stalls} times, {1000 * stalled:.0f} ms in all"
                )
        finally:
            server.stop()
    compare: dict[str, Any] = {}
    if service is not None:
        # each mode's columns side by side: local, then remote
        order = [c for m in modes for c in results if c.split(" ", 1)[0] == m]
        results = {c: results[c] for c in dict.fromkeys(order)}
        compare = {"remote": remote, "bench_cpu": bench_cpu}
    extra = ("transcript_to_first_token", "first_token_to_first_byte") if args.llm else ()
    base = ("eos_first_audio", "eos_transcript", "server_committed")
    partial = ("onset_partial", "detected_partial")
    if args.turns:
        table(
            f"conversational speech: {args.turns} turns of 5-8 s per mode",
            "conversation",
            results,
            cpu,
            rows=(*base, *partial, *extra),
            **compare,
        )
    if args.hesitations:
        table(
            f"mid-sentence hesitation (0.8 s pause): {args.hesitations} turns per mode",
            "hesitation",
            results,
            cpu,
            rows=(*base, *extra),
            **compare,
        )
    if args.commands:
        table(
            f"short commands (Piper): {args.commands} turns per mode, every other one barged in",
            "command",
            results,
            cpu,
            rows=(*base, *partial, "barge_onset_silence", "barge_silence", *extra),
            **compare,
        )


if __name__ == "__main__":
    trio.run(main)
