"""Turn latency benchmark: a spoken conversation through one real voxwire process.

Not a test. Starts ``run.py`` (real models, echo responder) as a subprocess, then for each
``--silence-ms`` value holds one session and speaks ``--turns`` sentences made with the
bundled Piper voice, uploaded in real time in 100 ms chunks like a microphone. Every
other reply is interrupted (the next sentence starts 0.6 s into it) to measure barge-in.

Figures (client-side, trio clock, one process on the same 2 cores as the server):

- end of speech → first reply audio byte: when the last voiced sample was uploaded to when
  the first non-zero sample of the reply arrived on ``stream_audio``;
- end of speech → final transcript: to the ``...transcription.completed`` event;
- speech start → first partial: from the first voiced sample uploaded (and from the
  ``speech_started`` event) to the first ``...transcription.delta``;
- barge-in → silence: from the ``speech_started`` event of the interruption to the moment
  the client's playback (started at the first stream byte, real time) passes the last
  non-zero sample of the cut reply; it includes the stream's lead.

    .venv/bin/python bench/latency.py                         # 20 turns at 500 and 250 ms
    .venv/bin/python bench/latency.py --turns 6 --silence-ms 500
    .venv/bin/python bench/latency.py --llm --turns 10 --silence-ms 500

``--llm`` runs the ``llm`` responder against the tests' OpenAI-compatible fake server
(started in this process) with a fixed time to first token and token rate, and prints how
end of speech → first audio byte splits into transcript + first token + first sentence +
TTS, against the time the whole answer takes to generate.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import trio
from _common import ROOT, Server

sys.path.insert(0, str(ROOT))

from tests.conftest import SessionHandle
from tests.fake_llm import FakeLlm, start_fake_llm
from tests.speech import synthesize
from tests.voice import Events, Stream, voiced_bounds, wer

RATE = 16000
CHUNK = RATE // 10  # 100 ms uploads
SENTENCES = (
    "Please turn on the kitchen lights.",
    "What is the weather like tomorrow?",
    "Set a timer for ten minutes.",
    "Play some quiet music in the living room.",
    "How far is it to the train station?",
    "Remind me to call my sister tonight.",
    "Close the blinds in the bedroom.",
    "What time does the bakery open?",
    "Add milk and eggs to the shopping list.",
    "Turn the heating down a little.",
)


@dataclass
class Turn:
    text: str
    onset_at: float = math.nan  # trio time the first voiced sample was uploaded
    end_at: float = math.nan  # ... and the last
    barge_in: bool = False  # the next turn interrupts this one's reply


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    ms = [1000 * v for v in values]
    return f"{pct(ms, 50):.0f} / {pct(ms, 95):.0f} ms (n={len(ms)})"


LLM_REPLY = (
    "Sure, I can help with that. Here is a little more detail about your request, which "
    "takes the model a while to finish generating."
)


async def converse(
    base_url: str, turns: list[Turn], silence_ms: int, responder: str = "echo"
) -> dict[str, list[float]]:
    speech = {t.text: synthesize((t.text,), gap_s=0.0, lead_s=0.0).samples for t in turns}
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        r = await client.post(
            "/api/sessions",
            json={"turn_detection": {"silence_duration_ms": silence_ms}, "responder": responder},
        )
        r.raise_for_status()
        body = r.json()
        s = SessionHandle(body["id"], body["token"], body["urls"], body)
        events, stream = Events(), Stream()
        stream.threshold = 0

        async def audio() -> object:
            sent = 0
            t0 = trio.current_time()

            async def send(samples: np.ndarray) -> object:
                nonlocal sent
                for at in range(0, len(samples), CHUNK):
                    piece = samples[at : at + CHUNK]
                    yield piece.astype("<i2").tobytes()
                    sent += len(piece)
                    await trio.sleep_until(t0 + sent / RATE)

            async for c in send(np.zeros(RATE // 2, np.int16)):
                yield c
            for i, turn in enumerate(turns):
                samples = speech[turn.text]
                on, off = voiced_bounds(samples)
                turn.onset_at = t0 + (sent + on) / RATE
                turn.end_at = t0 + (sent + off) / RATE
                async for c in send(samples):
                    yield c
                replies = len(events.of("response.created"))
                if turn.barge_in:
                    # keep quiet until this turn's reply is playing, then interrupt it
                    while len(events.of("response.created")) <= replies or not _playing(stream):
                        async for c in send(np.zeros(CHUNK, np.int16)):
                            yield c
                    async for c in send(np.zeros(6 * CHUNK, np.int16)):
                        yield c
                else:
                    n_done = len(events.of("response.done"))
                    while len(events.of("response.done")) <= n_done:
                        async for c in send(np.zeros(CHUNK, np.int16)):
                            yield c
                    async for c in send(np.zeros(5 * CHUNK, np.int16)):
                        yield c
                print(f"  turn {i + 1}/{len(turns)}", end="\r", flush=True)
            async for c in send(np.zeros(RATE, np.int16)):
                yield c

        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run, client, s)
            nursery.start_soon(stream.run, client, s)
            await events.wait_for("session.created")
            r = await client.post(
                f"/api/sessions/{s.id}/upload_audio", headers=s.auth, content=audio()
            )
            r.raise_for_status()
            await events.wait_for(
                "response.done", lambda e: len(events.of("response.done")) >= len(turns)
            )
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    return measure(turns, events, stream)


def _playing(stream: Stream) -> bool:
    tail = stream.samples[-RATE // 10 :]
    return bool(len(tail) and np.any(tail))


def measure(turns: list[Turn], events: Events, stream: Stream) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        "eos_first_byte": [],
        "eos_transcript": [],
        "onset_partial": [],
        "detected_partial": [],
        "barge_silence": [],
        "wer": [],
        "transcript_to_first_token": [],
        "first_token_to_first_byte": [],
    }
    samples = stream.samples
    t_start = stream.chunks[0][0]
    started = events.of("input_audio_buffer.speech_started")
    completed = events.of("conversation.item.input_audio_transcription.completed")
    deltas = events.of("conversation.item.input_audio_transcription.delta")
    if len(started) != len(turns) or len(completed) != len(turns):
        print(f"  warning: {len(turns)} turns spoken, {len(started)} detected")
    nonzero = np.flatnonzero(samples)
    for done in events.of("response.done"):
        lat = done["response"]["latency"]
        if lat["first_token_ms"] is not None and lat["first_audio_byte_ms"] is not None:
            out["transcript_to_first_token"].append(
                (lat["first_token_ms"] - lat["transcript_ms"]) / 1000
            )
            out["first_token_to_first_byte"].append(
                (lat["first_audio_byte_ms"] - lat["first_token_ms"]) / 1000
            )
    for i, turn in enumerate(turns):
        if i >= len(started) or i >= len(completed):
            break
        item = started[i]["item_id"]
        out["wer"].append(wer(turn.text, completed[i]["transcript"]))
        out["eos_transcript"].append(events.time_of(completed[i]) - turn.end_at)
        first_delta = next((d for d in deltas if d["item_id"] == item), None)
        if first_delta is not None:
            t = events.time_of(first_delta)
            out["onset_partial"].append(t - turn.onset_at)
            out["detected_partial"].append(t - events.time_of(started[i]))
        # the first reply sample after the end of speech, and when it arrived
        k = stream.received_by(turn.end_at)
        after = nonzero[nonzero >= k]
        if len(after):
            idx = int(after[0])
            arrived = next(t for t, total in stream.chunks if total > idx)
            out["eos_first_byte"].append(arrived - turn.end_at)
            if turn.barge_in and i + 1 < len(started):
                # the cut reply's last sample: the last non-zero before a 300 ms gap
                span = nonzero[nonzero >= idx]
                gaps = np.flatnonzero(np.diff(span) > 0.3 * RATE)
                last = int(span[gaps[0]]) if len(gaps) else int(span[-1])
                silent_at = t_start + last / RATE
                out["barge_silence"].append(silent_at - events.time_of(started[i + 1]))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--silence-ms", default="500,250")
    parser.add_argument("--llm", action="store_true", help="llm responder, fake server")
    parser.add_argument("--ttft-ms", type=int, default=300, help="fake LLM first token")
    parser.add_argument("--token-ms", type=int, default=50, help="fake LLM per token")
    args = parser.parse_args()
    async with trio.open_nursery() as nursery:
        await run(args, nursery)
        nursery.cancel_scope.cancel()


async def run(args: argparse.Namespace, nursery: trio.Nursery) -> None:
    levels = [int(x) for x in args.silence_ms.split(",")]
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
    server = Server(log_path, ready_path="/readyz")
    await server.start()
    print(f"voxwire latency bench: server on {server.base_url}, log {log_path}")
    try:
        for silence_ms in levels:
            turns = [
                Turn(SENTENCES[i % len(SENTENCES)], barge_in=(i % 2 == 1 and i + 1 < args.turns))
                for i in range(args.turns)
            ]
            cpu0 = server.cpu_s()
            t0 = trio.current_time()
            figures = await converse(server.base_url, turns, silence_ms, responder)
            cpu = (server.cpu_s() - cpu0) / (trio.current_time() - t0)
            print(
                f"\n== silence_duration_ms {silence_ms}, {args.turns} turns, server CPU {cpu:.0%}"
            )
            print(f"end of speech -> first reply audio byte : {fmt(figures['eos_first_byte'])}")
            print(f"end of speech -> final transcript       : {fmt(figures['eos_transcript'])}")
            print(f"speech onset -> first partial           : {fmt(figures['onset_partial'])}")
            print(f"speech_started -> first partial         : {fmt(figures['detected_partial'])}")
            print(f"barge-in speech_started -> silence      : {fmt(figures['barge_silence'])}")
            if args.llm:
                print(
                    f"final transcript -> first token (server)  : "
                    f"{fmt(figures['transcript_to_first_token'])}"
                )
                print(
                    f"first token -> first audio byte (server)  : "
                    f"{fmt(figures['first_token_to_first_byte'])}"
                )
            w = figures["wer"]
            print(f"transcript WER mean {np.mean(w):.1%}, max {max(w):.1%}" if w else "no WER")
            goal = silence_ms / 1000
            eos = figures["eos_first_byte"]
            if eos:
                print(
                    f"vs goal: p50 {pct(eos, 50) - goal:+.3f} s over the silence window "
                    f"(goal +0.150), p95 {pct(eos, 95) - goal:+.3f} s (goal +0.300)"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    trio.run(main)
