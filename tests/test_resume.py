"""The Python client's automatic reconnect, against faults on the wire.

Real models, Piper speech, the echo responder. (a) drives conversations through
``tests.relay`` (seeded random cuts of uploads, the audio stream and the event stream, plus
one cut of everything at once); (b) restarts a real nginx (deploy/nginx.conf) in the middle
of a conversation. Either way the application sees one event stream and one audio stream:
every uploaded byte reaches the session exactly once, every event once and in order, and
the reply audio without a repeated or missing span.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import trio
from voxwire_client import Event, ReconnectPolicy, VoxwireClient

from deploy.cluster import proxy_command
from tests import tools
from tests.relay import NO_FAULT, Fault, Relay
from tests.speech import synthesize
from tests.test_proxies import start_cluster
from tests.voice import wer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from app import Session as ServerSession
    from tests.conftest import StartServer

TURNS = (
    "Please turn on the kitchen lights.",
    "What is the weather like in Paris tomorrow?",
)
RATE = 16000


@dataclass
class Record:
    """What the application saw: events, notices, and the reply audio on its timeline."""

    events: list[Event] = field(default_factory=list)
    notices: list[Event] = field(default_factory=list)
    audio: list[tuple[int | None, bytes]] = field(default_factory=list)
    done: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    def notice(self, event: Event) -> None:
        self.notices.append(event)

    def reconnects(self, stream: str) -> int:
        return sum(
            1 for n in self.notices if n.type == "client.reconnected" and n["stream"] == stream
        )


def spy_uploads(session: ServerSession) -> list[bytes]:
    """The PCM the server session took into its pipeline, in order."""
    got: list[bytes] = []
    original = session._send_audio

    async def send_audio(samples: np.ndarray, rate: int) -> None:
        await original(samples, rate)
        got.append(samples.astype("<i2").tobytes())

    session._send_audio = send_audio  # type: ignore[method-assign]
    return got


async def converse(
    url: str,
    *,
    seed: int,
    server_session: Callable[[str], ServerSession],
    during_turn: Callable[[int], Awaitable[None]],
) -> tuple[Record, bytes, list[bytes], dict[str, Any]]:
    """Speak TURNS in real time; ``during_turn(i)`` runs beside turn ``i``'s upload."""
    record = Record()
    speeches = [synthesize((text,), gap_s=0.0, lead_s=0.5).samples for text in TURNS]
    uploaded = bytearray()
    policy = ReconnectPolicy(max_attempts=10, base_delay_s=0.05, max_delay_s=1.0)
    async with (
        VoxwireClient(
            url, reconnect=policy, on_notice=record.notice, rng=random.Random(seed)
        ) as client,
        client.session(responder="echo") as s,
    ):
        received = spy_uploads(server_session(s.id))
        async with s.events() as events, s.audio() as audio, trio.open_nursery() as nursery:

            async def follow() -> None:
                async for event in events:
                    record.events.append(event)
                    if event.type == "response.done":
                        record.done += 1
                    record.changed.set()
                    record.changed = trio.Event()

            async def listen() -> None:
                async for chunk in audio:
                    record.audio.append((audio.last_position, chunk))

            nursery.start_soon(follow)
            nursery.start_soon(listen)
            for i, speech in enumerate(speeches):
                pcm = speech.astype("<i2").tobytes() + bytes(2 * RATE * 3 // 2)
                async with trio.open_nursery() as turn:
                    turn.start_soon(during_turn, i)
                    await s.stream_pcm(pcm)
                uploaded += pcm
                with trio.fail_after(40):
                    while record.done <= i:
                        await record.changed.wait()
            await trio.sleep(0.5)  # the last frames reach us
            nursery.cancel_scope.cancel()
        stats = server_session(s.id).describe()["stats"]
        assert s.unacked_bytes == 0
        assert s.next_sequence == stats["next_sequence"]
        assert audio.gaps == [], audio.gaps
    return record, bytes(uploaded), received, stats


def check_conversation(record: Record, uploaded: bytes, received: list[bytes]) -> None:
    # Every uploaded byte reached the pipeline exactly once, in order.
    assert b"".join(received) == uploaded

    # One event stream: server ids consecutive from 1, nothing repeated or missing.
    ids = [e.id for e in record.events if e.id is not None]
    assert ids == list(range(1, len(ids) + 1)), ids
    assert not [e for e in record.events if e.type == "error"], record.events
    # The notices were delivered both ways: the callback and the iterator.
    inline = [e for e in record.events if e.type.startswith("client.")]
    assert len(inline) == len(record.notices)

    finals = [
        e["transcript"]
        for e in record.events
        if e.type == "conversation.item.input_audio_transcription.completed"
    ]
    assert len(finals) == len(TURNS), finals
    for text, final in zip(TURNS, finals, strict=True):
        assert wer(text, final) <= 0.2, (text, final)
    done = [e for e in record.events if e.type == "response.done"]
    assert [d["response"]["status"] for d in done] == ["completed"] * len(TURNS)

    # One audio stream: timeline pieces follow each other exactly (no repeat, no hole).
    on_timeline = [(pos, chunk) for pos, chunk in record.audio if pos is not None]
    for (pos, chunk), (nxt, _) in itertools.pairwise(on_timeline):
        assert nxt == pos + len(chunk) // 2, (pos, len(chunk), nxt)
    stream = np.frombuffer(b"".join(c for _, c in on_timeline), "<i2")
    # The replies' audio (exact zeros are padding): as much as the server says it played.
    voiced_ms = np.count_nonzero(stream) / (RATE / 1000)
    played_ms = sum(d["response"]["audio_ms"] for d in done)
    assert abs(voiced_ms - played_ms) <= 150 * len(TURNS), (voiced_ms, played_ms)


def kind_of(head: bytes) -> str:
    line = head.split(b"\r\n", 1)[0]
    if b"/stream_audio" in line:
        return "audio"
    if line.startswith(b"GET") and b"/events" in line:
        return "events"
    return "post"  # uploads, and the creation's connection the uploads may reuse


def random_faults(budget: dict[str, int]) -> Callable[[int, bytes, random.Random], Fault]:
    """Cut the first connections of each kind at a random offset while ``budget`` lasts.

    The kind is the connection's first request; the cut waits for a request of that kind
    (httpx's pool may hand a kept-alive connection to another request later).
    """

    def plan(number: int, head: bytes, rng: random.Random) -> Fault:
        kind = kind_of(head)
        if budget.get(kind, 0) <= 0:
            return NO_FAULT
        budget[kind] -= 1
        if kind == "audio":  # 32 KB/s: cut within the first ~4 s, maybe after a stall
            stall = rng.randint(1000, 30000) if rng.random() < 0.5 else None
            return Fault(
                cut_down_at=rng.randint(2000, 130000),
                stall_down_at=stall,
                stall_s=rng.uniform(0.1, 0.8),
                only=b"/stream_audio",
            )
        if kind == "events":  # mid-event: session.created alone is ~1 KB
            return Fault(cut_down_at=rng.randint(300, 6000), only=b"/events")
        if rng.random() < 0.5:  # mid-upload body (3.2 KB each), or mid-answer (a 204)
            return Fault(cut_up_at=rng.randint(2000, 60000), only=b"/upload_audio")
        return Fault(cut_down_at=rng.randint(1500, 6000), only=b"/upload_audio")

    return plan


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_conversation_survives_random_cuts(
    seed: int, start_server: StartServer, nursery: trio.Nursery
) -> None:
    server = await start_server()
    budget = {"audio": 2, "events": 2, "post": 3}
    relay = Relay(int(server.url.rsplit(":", 1)[1]), seed=seed, plan=random_faults(budget))
    await nursery.start(relay.run)
    rng = random.Random(seed)
    registry = server.registry

    def server_session(sid: str) -> ServerSession:
        return next(x for x in registry.sessions() if x.id == sid)

    async def during_turn(i: int) -> None:
        if i == 1:  # and once everything at once, somewhere in the second turn
            await trio.sleep(rng.uniform(0.5, 3.0))
            relay.cut_all()

    with trio.fail_after(120):
        record, uploaded, received, _ = await converse(
            relay.url, seed=seed, server_session=server_session, during_turn=during_turn
        )
    check_conversation(record, uploaded, received)
    assert len(relay.cuts()) >= 3, relay.cuts()
    for stream in ("events", "audio", "upload"):
        assert record.reconnects(stream) >= 1, (stream, record.notices)


@tools.needs("nginx", what="the nginx restart test")
async def test_a_conversation_survives_nginx_restarts(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    cluster = await start_cluster(nursery, "nginx", tmp_path)
    listen = int(cluster.url.rsplit(":", 1)[1])
    ports = [int(r.url.rsplit(":", 1)[1]) for r in cluster.instances]
    workdir = tmp_path / "nginx"
    rng = random.Random(7)
    restarts: list[int] = []

    def server_session(sid: str) -> ServerSession:
        (owner,) = cluster.owners(sid)
        held = cluster.held(owner, sid)
        assert held is not None
        return held

    async def restart_nginx() -> None:
        pid = int((workdir / "logs" / "nginx.pid").read_text())
        os.kill(pid, signal.SIGTERM)  # fast shutdown: open connections are dropped
        with trio.fail_after(10):
            while (workdir / "logs" / "nginx.pid").exists():  # noqa: ASYNC110 - a file
                await trio.sleep(0.05)
        cmd = proxy_command("nginx", listen, ports, workdir)
        nursery.start_soon(partial(trio.run_process, cmd, check=False, stdout=subprocess.DEVNULL))
        restarts.append(pid)

    async def during_turn(i: int) -> None:
        await trio.sleep(rng.uniform(0.5, 2.5))
        await restart_nginx()

    with trio.fail_after(120):
        record, uploaded, received, stats = await converse(
            cluster.url, seed=7, server_session=server_session, during_turn=during_turn
        )
    assert len(restarts) == len(TURNS)
    check_conversation(record, uploaded, received)
    assert stats["bytes_in"] == len(uploaded)
    for stream in ("events", "audio"):
        assert record.reconnects(stream) >= len(TURNS), (stream, record.notices)
