"""Several sessions talking at once through the one inference scheduler (real models, HTTP)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import trio

from tests import corpus
from tests.conftest import create_session
from tests.voice import Events, Stream, realtime_chunks, upload, wer

if TYPE_CHECKING:
    import httpx

SENTENCES = (
    ("Could you check whether the train to Boston leaves on time tomorrow morning?", "piper"),
    ("I would like to book a table for four people at seven tonight.", "espeak-us"),
    ("Remind me to call my sister when I get home from work.", "espeak-gb"),
)


def samples_of(text: str, metric: str, **labels: str) -> float:
    """The value of one Prometheus sample in ``text``, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"{metric}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


async def test_three_sessions_at_once_each_get_their_own_turn_and_reply(
    client: httpx.AsyncClient,
) -> None:
    done: dict[int, tuple[Events, Stream]] = {}

    async def converse(i: int, text: str, voice: str) -> None:
        if voice not in corpus.available_voices():  # (no espeak-ng here: Piper, slower)
            voice = "piper-slow"
        u = corpus.utterance(text, voice).padded(0.4, 0.0)
        s = await create_session(client)
        events, stream = Events(), Stream()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run, client, s)
            nursery.start_soon(stream.run, client, s)
            await events.wait_for("session.created")
            chunks = realtime_chunks(u.samples, chunk_ms=20, then_silence_s=4.0 + u.speech_s)
            nursery.start_soon(upload, client, s, chunks)
            await events.wait_for("response.done", within=60)
            nursery.cancel_scope.cancel()
        done[i] = events, stream

    async with trio.open_nursery() as nursery:
        for i, (text, voice) in enumerate(SENTENCES):
            nursery.start_soon(converse, i, text, voice)

    for i, (text, _voice) in enumerate(SENTENCES):
        events, stream = done[i]
        finals = events.of("conversation.item.input_audio_transcription.completed")
        assert len(finals) == 1, finals  # no session got another's words, none lost its own
        assert wer(text, finals[0]["transcript"]) <= 0.25, (text, finals)
        (reply,) = events.of("response.done")
        assert reply["response"]["status"] == "completed"
        assert wer(text, reply["response"]["output"][0]["content"][0]["transcript"]) <= 0.25
        assert stream.first_audio.is_set()

    # every kind of job went through the scheduler and was timed in its queue
    metrics = (await client.get("/metrics")).text
    for priority in ("first", "reply", "partial"):
        count = samples_of(metrics, "voxwire_scheduler_wait_seconds_count", priority=priority)
        assert count > 0, priority
    for priority in ("turn", "first", "reply", "partial"):  # nothing left queued
        assert samples_of(metrics, "voxwire_scheduler_queue_depth", priority=priority) == 0

    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert float(ready.headers["X-Voxwire-Load"]) >= 0.0
