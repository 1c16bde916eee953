"""A hypothesis state machine over the session lifecycle, against a real server.

Rules: create, upload (unsequenced, and sequenced as next / retry / gap, any size, odd
included), open / read / close ``stream_audio``, a second reader taking over,
``stop_stream``, reading ``events`` with and without ``Last-Event-ID`` (reconnect), delete,
idle expiry, and requests for unknown, deleted, expired or wrongly authorised ids.

The model holds, per session: the bytes accepted (so ``bytes_in``, whole samples only, an
odd byte carried to the next request), the next ``X-Sequence``, the last event id read and
whether a stream is open. Invariants after every step: the registry (``GET /api/sessions``)
holds exactly the model's sessions; each session's ``bytes_in``, ``next_sequence`` and
``streaming`` match; every dead or unknown id gets the one identical 404 body; a reader
resuming with ``Last-Event-ID`` gets consecutive ids with no gap; after the run every task
the run started has ended and the registry is empty with no request open.

The server runs in its own ``trio.run`` on a thread (see tests/test_fuzz.py for why) with a
30 s idle TTL (reaped every 0.1 s) and the ``loopback`` responder (no models). Sessions
expire only in the ``expire`` rule, which ages them on the server (their last request
"ended a TTL ago") and lets the real reaper remove them; any other disappearance is a bug.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from app._config import SUPPORTED_RATES
from tests.conftest import count_tasks
from tests.test_fuzz import NO_MODELS, ThreadedServer, wait_models_unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator

# Long enough that a stalled machine never reaps a session by accident (that made the
# machine's model depend on timing, which hypothesis rightly calls flaky): the expire rule
# ages sessions on the server instead, and the real reaper then removes them.
TTL_S = 30.0
REAP_S = 0.1
MAX_SESSIONS = 5
TIMEOUT = httpx.Timeout(5.0)  # a hang fails the step instead of stalling the run


@dataclass
class Srv:
    server: ThreadedServer
    baseline_tasks: int


def _settle_tasks(server: ThreadedServer, at_most: int | None, timeout_s: float = 5.0) -> int:
    """Poll the server's task count until it is stable (and ``<= at_most`` if given)."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while True:
        now = server.call(count_tasks)
        if now == last and (at_most is None or now <= at_most):
            return int(now)
        if time.monotonic() > deadline:
            return int(now)
        last = now
        time.sleep(0.1)


@pytest.fixture(scope="module")
def srv() -> Iterator[Srv]:
    with ThreadedServer(**NO_MODELS, session_idle_ttl_s=TTL_S, reap_interval_s=REAP_S) as server:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            wait_models_unavailable(client)
        yield Srv(server, _settle_tasks(server, None))


@dataclass(eq=False)  # identity: `m in spare` means this very session
class Model:
    id: str
    token: str
    rate: int
    sent: int = 0  # bytes taken into the session (the decoder sees them as one stream)
    next_seq: int = 0
    last_event_id: int | None = None
    stream: httpx.Response | None = None
    chunks: Iterator[bytes] | None = None
    touched: float = field(default_factory=time.monotonic)  # when the last request ended

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def url(self) -> str:
        return f"/api/sessions/{self.id}"

    @property
    def bytes_in(self) -> int:
        return self.sent - self.sent % 2


def _pcm(n: int, salt: int) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


class Lifecycle(RuleBasedStateMachine):
    srv: Srv  # set by the test before the run

    def __init__(self) -> None:
        super().__init__()
        self.client = httpx.Client(base_url=self.srv.server.url, timeout=TIMEOUT)
        self.live: dict[str, Model] = {}
        self.dead: list[Model] = []  # deleted or expired: always the one 404
        self.expired_once = False
        self.not_found = b""

    # -- helpers -------------------------------------------------------------------

    def pick(self, index: int) -> Model:
        ids = list(self.live)  # creation order: ids are random, replays must pick alike
        return self.live[ids[index % len(ids)]]

    def touch(self, m: Model) -> None:
        m.touched = time.monotonic()

    def keepalive(self, spare: tuple[Model, ...] = ()) -> None:
        """Touch sessions idle for a third of the TTL (rules that wait call this)."""
        for m in list(self.live.values()):
            if m not in spare and time.monotonic() - m.touched > TTL_S / 3:
                r = self.client.get(m.url, headers=m.auth)
                assert r.status_code == 200, (m.id, r.text)
                self.touch(m)

    def assert_not_found(self, r: httpx.Response, what: str) -> None:
        assert r.status_code == 404, (what, r.status_code, r.text)
        assert r.content == self.not_found, (what, r.content)

    def drain_ended(self, m: Model, why: str) -> None:
        """The open stream must end cleanly (final chunk) and soon."""
        assert m.stream is not None
        assert m.chunks is not None
        deadline = time.monotonic() + 3
        for _ in m.chunks:  # raises on a connection cut without the final chunk
            assert time.monotonic() < deadline, f"stream still running after {why}"
            self.keepalive()
        m.stream.close()
        m.stream = m.chunks = None

    def close_stream_client_side(self, m: Model) -> None:
        assert m.stream is not None
        m.stream.close()
        m.stream = m.chunks = None
        # a vanished reader is noticed and detached within a second (docs/api.md)
        deadline = time.monotonic() + 2
        while True:
            r = self.client.get(m.url, headers=m.auth)
            assert r.status_code == 200, r.text
            self.touch(m)
            if not r.json()["stats"]["streaming"]:
                return
            assert time.monotonic() < deadline, "stream reader not detached after close"
            self.keepalive()
            time.sleep(0.02)

    def forget(self, m: Model) -> None:
        del self.live[m.id]
        self.dead.append(m)

    # -- rules ---------------------------------------------------------------------

    @initialize()
    def reference_404(self) -> None:
        r = self.client.get("/api/sessions/sess_nonexistent0000000000000")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "session_not_found"
        self.not_found = r.content

    @initialize(rate=st.sampled_from(SUPPORTED_RATES), listen=st.booleans())
    def first_session(self, rate: int, listen: bool) -> None:
        self.create(rate)
        if listen:  # half the runs start with a stream open, as a real client does
            self.open_stream(0)

    @precondition(lambda self: len(self.live) < MAX_SESSIONS)
    @rule(rate=st.sampled_from(SUPPORTED_RATES))
    def create(self, rate: int) -> None:
        r = self.client.post(
            "/api/sessions", json={"responder": "loopback", "input_sample_rate": rate}
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["idle_ttl_s"] == TTL_S
        assert body["id"] not in self.live
        self.live[body["id"]] = Model(body["id"], body["token"], rate)

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 99), size=st.integers(0, 4001))
    def upload(self, pick: int, size: int) -> None:
        m = self.pick(pick)
        carry = m.sent % 2
        r = self.client.post(f"{m.url}/upload_audio", content=_pcm(size, m.sent), headers=m.auth)
        self.touch(m)
        assert r.status_code == 204, r.text
        # Whole samples only: an odd byte waits for the next request. (Today the count is
        # (carry + size) // 2 * 2, the carried byte included; only +-1 is asserted here.)
        assert abs(int(r.headers["X-Accepted-Bytes"]) - size) <= 1, (carry, size, r.headers)
        assert "X-Acked-Sequence" not in r.headers
        m.sent += size

    @precondition(lambda self: self.live)
    @rule(
        pick=st.integers(0, 99),
        size=st.integers(0, 3001),
        kind=st.sampled_from(["next", "next", "retry", "gap"]),
        offset=st.integers(0, 3),
    )
    def upload_sequenced(self, pick: int, size: int, kind: str, offset: int) -> None:
        m = self.pick(pick)
        if kind == "retry" and m.next_seq == 0:
            kind = "next"
        seq = {
            "next": m.next_seq,
            "retry": max(0, m.next_seq - 1 - offset),
            "gap": m.next_seq + 1 + offset,
        }[kind]
        r = self.client.post(
            f"{m.url}/upload_audio",
            content=_pcm(size, m.sent),
            headers=m.auth | {"X-Sequence": str(seq)},
        )
        self.touch(m)
        if kind == "gap":
            assert r.status_code == 409, r.text
            error = r.json()["error"]
            assert error["code"] == "sequence_gap"
            assert f"expected X-Sequence {m.next_seq}," in error["message"]
            return
        assert r.status_code == 204, r.text
        if kind == "retry":
            assert r.headers["X-Accepted-Bytes"] == "0"
            assert r.headers["X-Acked-Sequence"] == str(m.next_seq - 1)
            return
        assert r.headers["X-Accepted-Bytes"] == str(size)
        assert r.headers["X-Acked-Sequence"] == str(m.next_seq)
        m.sent += size
        m.next_seq += 1

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 99))
    def open_stream(self, pick: int) -> None:
        m = self.pick(pick)
        previous = (m.stream, m.chunks)
        request = self.client.build_request("GET", f"{m.url}/stream_audio", headers=m.auth)
        stream = self.client.send(request, stream=True)
        self.touch(m)
        assert stream.status_code == 200, stream.read()
        assert stream.headers["content-type"] == "audio/wav"
        assert "content-length" not in stream.headers
        chunks = stream.iter_raw()
        head = b""
        while len(head) < 44 + 1024:  # the header and the lead of silence come at once
            head += next(chunks)
        assert head[:4] == b"RIFF"
        assert head[8:16] == b"WAVEfmt "
        if previous[0] is not None:
            # takeover: the first reader's response ends cleanly
            m.stream, m.chunks = previous
            self.drain_ended(m, "a second reader took over")
        m.stream, m.chunks = stream, chunks

    @precondition(lambda self: any(m.stream for m in self.live.values()))
    @rule(pick=st.integers(0, 99), reads=st.integers(1, 3))
    def read_stream(self, pick: int, reads: int) -> None:
        streaming = [i for i, m in self.live.items() if m.stream]
        m = self.live[streaming[pick % len(streaming)]]
        assert m.chunks is not None
        for _ in range(reads):
            assert next(m.chunks)  # a frame (or several) of PCM every 20 ms

    @precondition(lambda self: any(m.stream for m in self.live.values()))
    @rule(pick=st.integers(0, 99))
    def close_stream(self, pick: int) -> None:
        streaming = [i for i, m in self.live.items() if m.stream]
        self.close_stream_client_side(self.live[streaming[pick % len(streaming)]])

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 99))
    def stop_stream(self, pick: int) -> None:
        m = self.pick(pick)
        r = self.client.post(f"{m.url}/stop_stream", headers=m.auth)
        self.touch(m)
        assert r.status_code == 200, r.text
        assert r.json() == {"stopped": m.stream is not None}
        if m.stream is not None:
            self.drain_ended(m, "stop_stream")

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 99), resume=st.booleans(), in_query=st.booleans())
    def read_events(self, pick: int, resume: bool, in_query: bool) -> None:
        """Read up to a marker event; resuming must continue exactly after the last id."""
        m = self.pick(pick)
        marker = f"marker-{time.monotonic_ns()}"
        r = self.client.patch(m.url, json={"instructions": marker}, headers=m.auth)
        assert r.status_code == 200, r.text
        headers, params = dict(m.auth), {}
        resumed = resume and m.last_event_id is not None
        if resumed:
            if in_query:
                params["last_event_id"] = str(m.last_event_id)
            else:
                headers["Last-Event-ID"] = str(m.last_event_id)
        ids: list[int] = []
        with self.client.stream("GET", f"{m.url}/events", headers=headers, params=params) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(lines) == "retry: 1000"
            event_id: int | None = None
            for line in lines:
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    payload = json.loads(line[6:])
                    assert event_id is not None, payload  # every event carries an id here
                    assert payload["event_id"] == f"event_{event_id}"
                    ids.append(event_id)
                    event_id = None
                    if (
                        payload["type"] == "session.updated"
                        and payload["session"]["config"]["instructions"] == marker
                    ):
                        break
        self.touch(m)
        first = m.last_event_id + 1 if resumed and m.last_event_id is not None else 1
        assert ids == list(range(first, first + len(ids))), (first, ids)
        assert ids
        if m.last_event_id is not None:
            assert ids[-1] > m.last_event_id
        m.last_event_id = ids[-1]

    @precondition(lambda self: self.live)
    @rule(pick=st.integers(0, 99))
    def delete(self, pick: int) -> None:
        m = self.pick(pick)
        r = self.client.delete(m.url, headers=m.auth)
        assert r.status_code == 204, r.text
        if m.stream is not None:
            self.drain_ended(m, "DELETE")  # open streams end cleanly
        self.forget(m)
        self.assert_not_found(self.client.get(m.url, headers=m.auth), "just deleted")
        self.assert_not_found(self.client.delete(m.url, headers=m.auth), "deleted twice")

    @precondition(lambda self: self.live and not self.expired_once)
    @rule(keep=st.lists(st.booleans(), min_size=MAX_SESSIONS, max_size=MAX_SESSIONS))
    def expire(self, keep: list[bool]) -> None:
        """Let some sessions idle past the TTL while the rest stay busy."""
        self.expired_once = True
        ids = list(self.live)  # creation order: ids are random, replays must pick alike
        kept = [self.live[i] for i, k in zip(ids, keep, strict=False) if k]
        idle = [self.live[i] for i, k in zip(ids, keep, strict=False) if not k]
        for m in idle:
            if m.stream is not None:
                self.close_stream_client_side(m)
        streaming = [m for m in kept if m.stream is not None]
        # Time passes for the idle ones and the streaming ones: as if their last request
        # ended a TTL ago. An open stream must still keep its session alive.
        aged = {m.id for m in (*idle, *streaming)}

        def age() -> None:
            now = trio.current_time()
            for session in self.srv.server.registry.sessions():
                if session.id in aged:
                    session.last_activity = now - TTL_S - 1

        self.srv.server.call(age)
        deadline = time.monotonic() + 3
        while True:
            listed = {s["id"] for s in self.client.get("/api/sessions").json()["data"]}
            if not listed & {m.id for m in idle}:
                break
            assert time.monotonic() < deadline, "idle sessions were not reaped"
            time.sleep(0.05)
        for m in idle:
            self.forget(m)
        for m in kept:
            r = self.client.get(m.url, headers=m.auth)
            assert r.status_code == 200, (r.text, "a busy session was reaped")
            self.touch(m)
            if m.stream is not None:
                assert m.chunks is not None
                assert next(m.chunks)  # the stream kept running through it

    @rule(
        which=st.sampled_from(["unknown", "dead", "wrong_token", "no_token", "query_token"]),
        pick=st.integers(0, 99),
        endpoint=st.sampled_from(
            [
                ("GET", ""),
                ("PATCH", ""),
                ("DELETE", ""),
                ("POST", "/upload_audio"),
                ("GET", "/stream_audio"),
                ("POST", "/stop_stream"),
                ("GET", "/events"),
                ("POST", "/events"),
            ]
        ),
    )
    def not_found_is_identical(self, which: str, pick: int, endpoint: tuple[str, str]) -> None:
        method, suffix = endpoint
        params: dict[str, str] = {}
        if which == "unknown" or (which == "dead" and not self.dead):
            sid, headers = f"sess_unknown{pick:020d}", {"Authorization": "Bearer nope"}
        elif which == "dead":
            m = self.dead[pick % len(self.dead)]
            sid, headers = m.id, m.auth
        elif not self.live:
            return
        else:
            m = self.pick(pick)
            sid = m.id
            headers = {
                "wrong_token": {"Authorization": "Bearer " + m.token[::-1]},
                "no_token": {},
                "query_token": {},
            }[which]
            if which == "query_token":
                if suffix in ("/events", "/stream_audio") and method == "GET":
                    params["token"] = m.token + "x"  # honoured there, but wrong
                else:
                    params["token"] = m.token  # right, but not honoured here
        content = None
        if method in ("PATCH", "POST"):
            content = b'{"type": "input_audio_buffer.clear"}' if "events" in suffix else b"{}"
            if suffix == "/upload_audio":
                content = bytes(640)
        r = self.client.request(
            method, f"/api/sessions/{sid}{suffix}", headers=headers, params=params, content=content
        )
        self.assert_not_found(r, f"{which} {method} {suffix}")

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def registry_matches_model(self) -> None:
        listed = {s["id"]: s for s in self.client.get("/api/sessions").json()["data"]}
        assert set(listed) == set(self.live), (set(listed), set(self.live))
        assert self.srv.server.session_ids() == set(self.live)
        for m in self.live.values():
            assert listed[m.id]["bytes_in"] == m.bytes_in

    @invariant()
    def sessions_match_model(self) -> None:
        for m in list(self.live.values()):
            r = self.client.get(m.url, headers=m.auth)
            assert r.status_code == 200, (m.id, "vanished while in use", r.text)
            self.touch(m)
            body = r.json()
            assert body["state"] == "active"
            assert body["config"]["input_sample_rate"] == m.rate
            stats = body["stats"]
            assert stats["bytes_in"] == m.bytes_in, (stats, m.sent)
            assert stats["next_sequence"] == m.next_seq
            assert stats["streaming"] == (m.stream is not None)

    @invariant()
    def dead_ids_stay_dead(self) -> None:
        for m in self.dead[-3:]:
            self.assert_not_found(self.client.get(m.url, headers=m.auth), "dead id")

    def teardown(self) -> None:
        try:
            for m in list(self.live.values()):
                if m.stream is not None:
                    m.stream.close()
                    m.stream = m.chunks = None
                self.client.delete(m.url, headers=m.auth)
        finally:
            self.client.close()
        server = self.srv.server
        deadline = time.monotonic() + 5
        while server.session_ids() or server.open_requests():
            assert time.monotonic() < deadline, "sessions or requests left after teardown"
            time.sleep(0.05)


def test_session_lifecycle_state_machine(srv: Srv) -> None:
    Lifecycle.srv = srv
    run_state_machine_as_test(
        Lifecycle,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # Every task the run started (sessions, requests, connections) has ended.
    tasks = _settle_tasks(srv.server, srv.baseline_tasks)
    assert tasks <= srv.baseline_tasks, (tasks, srv.baseline_tasks)
