"""The Python client's reconnect at its edges, through ``tests.relay``; no models.

The loopback responder plays the uploaded audio back on ``stream_audio``, so these run on
the transport alone: a resume the server can no longer serve (a gap), a session deleted
while the client was disconnected (404 ends it), uploads nobody acknowledges (the window
fills), and the sync client across a cut.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import trio
from voxwire_client import Client, Event, ReconnectPolicy, VoxwireClient, VoxwireError

from tests.conftest import tone
from tests.relay import NO_FAULT, Fault, Relay

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Running, StartServer

NO_MODELS: dict[str, Any] = {
    "vad_model": "/nonexistent/resume-edges-vad.onnx",
    "default_responder": "loopback",
    "model_load_wait_s": 0.0,
}
RATE = 16000
FAST = ReconnectPolicy(max_attempts=20, base_delay_s=0.05, max_delay_s=0.2)


class Switch:
    """A relay plan: while ``blocked``, matching requests die at their first byte back.

    The fault of a connection is fixed when it opens, and httpx reuses kept-alive
    connections: :meth:`block` cuts every connection open, :meth:`unblock` every one
    opened while blocked, so none carries the wrong fault.
    """

    def __init__(self, relay: Relay | None = None, match: bytes | None = None) -> None:
        self.relay = relay
        self.match = match
        self.blocked = False
        self._since = 0

    def __call__(self, number: int, head: bytes, rng: random.Random) -> Fault:
        return Fault(cut_down_at=0, only=self.match) if self.blocked else NO_FAULT

    def block(self) -> None:
        assert self.relay is not None
        self.blocked = True
        self._since = len(self.relay.connections)
        self.relay.cut_all()

    def unblock(self) -> None:
        assert self.relay is not None
        self.blocked = False
        for conn in self.relay.connections[self._since :]:
            if conn.cut is None:
                conn.cut = "unblock"
                conn.scope.cancel()


async def start_relay(
    server: Running, nursery: trio.Nursery, plan: Callable[[int, bytes, random.Random], Fault]
) -> Relay:
    relay = Relay(int(server.url.rsplit(":", 1)[1]), plan=plan)
    await nursery.start(relay.run)
    return relay


def timeline_jumps(pieces: list[tuple[int | None, bytes]]) -> list[tuple[int, int]]:
    """Where consecutive timeline pieces do not follow each other: ``(expected, got)``."""
    on_timeline = [(pos, chunk) for pos, chunk in pieces if pos is not None]
    return [
        (pos + len(chunk) // 2, nxt)
        for (pos, chunk), (nxt, _) in itertools.pairwise(on_timeline)
        if nxt != pos + len(chunk) // 2
    ]


# -- async: a resume the server cannot serve ---------------------------------------------


async def test_a_resume_too_late_for_the_buffer_is_reported_as_a_gap(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    server = await start_server(stream_resume_ms=100, **NO_MODELS)
    switch = Switch(match=b"/stream_audio")
    relay = switch.relay = await start_relay(server, nursery, switch)
    notices: list[Event] = []
    pieces: list[tuple[int | None, bytes]] = []
    down_s = 0.8
    pcm = tone(4.0).astype("<i2").tobytes()
    async with (
        VoxwireClient(
            relay.url, reconnect=FAST, on_notice=notices.append, rng=random.Random(3)
        ) as client,
        client.session(responder="loopback") as s,
        s.audio() as audio,
        trio.open_nursery() as inner,
    ):

        async def listen() -> None:
            async for chunk in audio:
                pieces.append((audio.last_position, chunk))

        async def cut() -> None:
            await trio.sleep(1.2)
            switch.block()  # reconnects fail until the 100 ms buffer is long gone
            await trio.sleep(down_s)
            switch.unblock()

        inner.start_soon(listen)
        inner.start_soon(cut)
        with trio.fail_after(15):
            await s.stream_pcm(pcm)
            await trio.sleep(0.5)  # the loopback's last frames reach us
        inner.cancel_scope.cancel()

    rate = audio.sample_rate
    assert len(audio.gaps) == 1, (audio.gaps, notices)
    ((from_ms, to_ms),) = audio.gaps
    # Well beyond the 100 ms the server keeps, at most as long as the stream was unreachable
    # (plus the reconnect delays). The timeline stands still while the server has neither
    # a reader nor audio to play, and the cut uploads were resent, so it may be shorter.
    assert 300 <= to_ms - from_ms <= down_s * 1000 + 1000, (from_ms, to_ms)
    (gap,) = [n for n in notices if n.type == "client.audio_gap"]
    assert (gap["from_ms"], gap["to_ms"], gap["missing_ms"]) == (from_ms, to_ms, to_ms - from_ms)
    audio_reconnects = [
        n for n in notices if n.type == "client.reconnected" and n["stream"] == "audio"
    ]
    assert [n["resumed"] for n in audio_reconnects] == [False], notices
    assert audio_reconnects[0]["from_ms"] == from_ms

    # One jump on the timeline, exactly the gap; everything else follows on.
    ((expected, got),) = timeline_jumps(pieces)
    assert (expected * 1000 // rate, got * 1000 // rate) == (from_ms, to_ms)
    # It kept streaming: the tone came back after the gap.
    after = b"".join(c for pos, c in pieces if pos is not None and pos >= got)
    voiced_s = np.count_nonzero(np.frombuffer(after, "<i2")) / rate
    assert voiced_s >= 1.0, voiced_s


# -- async: the session is gone while disconnected ---------------------------------------


async def test_a_session_deleted_while_disconnected_ends_with_404_at_once(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    server = await start_server(**NO_MODELS)
    switch = Switch()  # every request
    relay = switch.relay = await start_relay(server, nursery, switch)
    results: dict[str, tuple[VoxwireError, float]] = {}
    async with VoxwireClient(relay.url, reconnect=FAST, rng=random.Random(5)) as client:
        s = await client.create_session(responder="loopback")
        auth = {"Authorization": f"Bearer {s.token}"}
        with trio.fail_after(10):
            async with s.events() as events, s.audio() as audio, trio.open_nursery() as inner:

                async def drain(name: str, stream: Any) -> None:
                    with pytest.raises(VoxwireError) as info:
                        async for _ in stream:
                            pass
                    results[name] = (info.value, trio.current_time())

                inner.start_soon(drain, "events", events)
                inner.start_soon(drain, "audio", audio)
                await trio.sleep(0.3)
                switch.block()
                async with httpx.AsyncClient(timeout=5) as direct:
                    r = await direct.delete(f"{server.url}/api/sessions/{s.id}", headers=auth)
                assert r.status_code == 204
                opened = len(relay.connections)
                t0 = trio.current_time()
                switch.unblock()
        with pytest.raises(VoxwireError) as upload:
            await s.upload(bytes(3200))

    for name in ("events", "audio"):
        error, at = results[name]
        assert (error.status, error.code) == (404, "session_not_found"), name
        assert at - t0 <= FAST.max_delay_s + 1.0, (name, at - t0)
    assert (upload.value.status, upload.value.code) == (404, "session_not_found")
    assert s.unacked_bytes == 0  # a refused piece is not kept for resending
    # No retry loop: after the session was gone, each stream asked once (and the upload).
    # Every request counts: httpx may send one on a connection kept alive from another.
    later = [line for c in relay.connections[opened:] for line in c.requests]
    assert sum(b"/stream_audio" in line for line in later) == 1, later
    assert sum(line.startswith(b"GET") and b"/events" in line for line in later) == 1, later
    assert s.notifier.counts.get("client.reconnected", 0) == 0


# -- async: uploads nobody acknowledges ----------------------------------------------------


async def test_uploads_without_acks_stop_at_the_unacked_window(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    server = await start_server(**NO_MODELS)
    stalled = False

    def plan(number: int, head: bytes, rng: random.Random) -> Fault:
        # The server gets the uploads; its answers (the acks) are held back for a minute.
        return Fault(stall_down_at=0, stall_s=60.0) if stalled else NO_FAULT

    relay = await start_relay(server, nursery, plan)
    policy = ReconnectPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.2, max_unacked_s=0.5)
    window_bytes = int(0.5 * RATE) * 2
    async with VoxwireClient(relay.url, reconnect=policy) as client:
        s = await client.create_session(responder="loopback")
        stalled = True
        relay.cut_all()  # no kept-alive connection from before
        t0 = trio.current_time()
        with trio.fail_after(5), pytest.raises(VoxwireError) as info:
            await s.stream_pcm(tone(3.0))  # real time: the source does not wait for acks
        elapsed = trio.current_time() - t0
        async with httpx.AsyncClient(timeout=5) as direct:
            auth = {"Authorization": f"Bearer {s.token}"}
            r = await direct.get(f"{server.url}/api/sessions/{s.id}", headers=auth)
            stats = r.json()["stats"]

    assert (info.value.status, info.value.code) == (0, "upload_backlog_full")
    # As soon as the window was full (0.5 s of audio), not after any timeout.
    assert 0.4 <= elapsed < 1.5, elapsed
    # Exactly the window was taken (five 100 ms pieces), nothing beyond it.
    assert s.unacked_bytes == window_bytes
    assert s.next_sequence == window_bytes // 3200
    # The first piece did reach the server; its answer did not reach us.
    assert 1 <= stats["next_sequence"] <= s.next_sequence


# -- the sync client across a cut ----------------------------------------------------------


def sync_talk(url: str, relay: Relay, cut_after_s: float) -> dict[str, Any]:
    """In a thread: loopback audio up and down, events followed, while the relay cuts."""
    notices: list[Event] = []
    out: dict[str, Any] = {"notices": notices}
    pieces: list[tuple[int | None, bytes]] = []
    events: list[Event] = []
    with (
        Client(url, reconnect=FAST, on_notice=notices.append, rng=random.Random(9)) as client,
        client.session(responder="loopback") as s,
        s.audio() as audio,
        s.events() as event_stream,
    ):

        def listen() -> None:
            for chunk in audio:  # until stop_stream
                pieces.append((audio.last_position, chunk))

        def follow() -> None:
            for event in event_stream:
                events.append(event)
                if event.type == "conversation.item.added":
                    return

        readers = [threading.Thread(target=listen), threading.Thread(target=follow)]
        for t in readers:
            t.start()
        pcm = tone(3.0).astype("<i2").tobytes()
        t0 = time.monotonic()
        sent = 0
        for i in range(0, len(pcm), 3200):
            s.upload(pcm[i : i + 3200])
            sent += 1
            if sent == int(cut_after_s * 10):
                out["cut"] = trio.from_thread.run_sync(relay.cut_all)
            if sent == int(cut_after_s * 10) + 3:
                # An event for the resumed event stream (client events are not retried:
                # not on a kept-alive connection that was just cut).
                s.add_text("after the cut")
            time.sleep(max(0.0, t0 + sent / 10 - time.monotonic()))
        time.sleep(0.5)  # the loopback's last frames reach us
        readers[1].join(10)
        s.stop_stream()
        readers[0].join(10)
        assert not any(t.is_alive() for t in readers)
        out["gaps"] = list(audio.gaps)
        out["rate"] = audio.sample_rate
        out["stats"] = s.describe()["stats"]
        out["next_sequence"] = s.next_sequence
    out["pieces"] = pieces
    out["events"] = events
    return out


async def test_the_sync_client_resumes_events_and_audio_across_a_cut(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    server = await start_server(**NO_MODELS)
    relay = await start_relay(server, nursery, lambda n, head, rng: NO_FAULT)
    with trio.fail_after(30):
        out = await trio.to_thread.run_sync(sync_talk, relay.url, relay, 1.0)

    assert out["cut"] >= 2  # at least the audio and the event stream
    events: list[Event] = out["events"]
    ids = [e.id for e in events if e.id is not None]
    assert ids == list(range(1, len(ids) + 1)), ids  # contiguous, no duplicates
    assert any(e.type == "conversation.item.added" for e in events), events
    streams = {n["stream"] for n in out["notices"] if n.type == "client.reconnected"}
    assert {"events", "audio"} <= streams, out["notices"]
    # The audio timeline is contiguous across the cut: resumed, no gap, no repeat.
    assert out["gaps"] == []
    assert timeline_jumps(out["pieces"]) == []
    voiced = b"".join(c for pos, c in out["pieces"] if pos is not None)
    voiced_s = np.count_nonzero(np.frombuffer(voiced, "<i2")) / out["rate"]
    assert voiced_s >= 2.5, voiced_s
    assert out["stats"]["bytes_in"] == 3 * RATE * 2
    assert out["next_sequence"] == out["stats"]["next_sequence"] == 30
