"""Two voxwire instances behind a real nginx and a real HAProxy, with deploy/'s configs.

The proxies run the committed configs with only their ports rewritten
(``deploy.cluster.proxy_command``). ``.ci/run`` installs both with apt.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import trio

from app import ServerConfig, create_app, serve
from deploy.cluster import SESSION_ID_HEADER, proxy_command, wait_healthy
from tests import tools
from tests.conftest import Running, free_port
from tests.speech import synthesize
from tests.voice import realtime_chunks, wer

if TYPE_CHECKING:
    from pathlib import Path

    from app import Session

PROXIES = [
    pytest.param(name, marks=tools.needs(name, what=f"the {name} proxy tests"))
    for name in ("nginx", "haproxy")
]


@dataclass
class Cluster:
    url: str
    instances: list[Running]
    stops: list[trio.CancelScope]

    def owners(self, session_id: str) -> list[int]:
        """Which instances hold ``session_id``."""
        return [i for i, r in enumerate(self.instances) if self.held(i, session_id)]

    def held(self, instance: int, session_id: str) -> Session | None:
        reg = self.instances[instance].registry
        return next((s for s in reg.sessions() if s.id == session_id), None)


async def _instance(
    app: object, config: ServerConfig, scope: trio.CancelScope, task_status: trio.TaskStatus
) -> None:
    with scope:
        await serve(app, config, shutdown_trigger=None, task_status=task_status)  # type: ignore[arg-type]


async def start_cluster(nursery: trio.Nursery, proxy: str, workdir: Path) -> Cluster:
    instances, stops = [], []
    for _ in range(2):
        config = ServerConfig(host="127.0.0.1", port=0, session_id_header=SESSION_ID_HEADER)
        app = create_app(config)
        scope = trio.CancelScope()
        binds = await nursery.start(_instance, app, config, scope)
        instances.append(Running(binds[0], app, config))
        stops.append(scope)
    ports = [int(r.url.rsplit(":", 1)[1]) for r in instances]
    listen = free_port()
    cmd = proxy_command(proxy, listen, ports, workdir / proxy)
    nursery.start_soon(partial(trio.run_process, cmd, check=False, stdout=subprocess.DEVNULL))
    url = f"http://127.0.0.1:{listen}"
    with trio.fail_after(10):
        await wait_healthy(url + "/healthz")
    return Cluster(url, instances, stops)


@pytest.mark.parametrize("proxy", PROXIES)
async def test_audio_and_events_stream_through_the_proxy(
    proxy: str, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A live `curl -T -` upload is consumed while it runs (events arrive before it ends),
    the stream's first bytes arrive at once, and the echo comes back, all through the proxy."""
    cluster = await start_cluster(nursery, proxy, tmp_path)
    text = "Could you book a table for two at seven tonight?"
    speech = synthesize((text,), lead_s=0.5)
    async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as client:
        r = await client.post("/api/sessions", json={"responder": "echo"})
        assert r.status_code == 201, r.text
        s = r.json()
        assert cluster.owners(s["id"]) in ([0], [1])
        auth = {"Authorization": f"Bearer {s['token']}"}
        events: list[tuple[float, dict[str, object]]] = []
        replied = trio.Event()
        first_byte_s: list[float] = []
        voiced = [0]

        async def read_events(task_status: trio.TaskStatus[None]) -> None:
            async with client.stream("GET", s["urls"]["events"], headers=auth) as ev:
                task_status.started()
                async for line in ev.aiter_lines():
                    if line.startswith("data: "):
                        e = json.loads(line[6:])
                        events.append((trio.current_time(), e))
                        if e["type"] == "response.done":
                            replied.set()

        async def read_stream(task_status: trio.TaskStatus[None]) -> None:
            t0 = trio.current_time()
            async with client.stream("GET", s["urls"]["stream_audio"], headers=auth) as st:
                assert st.status_code == 200
                assert "content-length" not in st.headers
                head = b""
                async for chunk in st.aiter_raw():
                    if not first_byte_s:
                        first_byte_s.append(trio.current_time() - t0)
                        task_status.started()
                    if len(head) < 44:
                        head += chunk
                        chunk = head[44:] if len(head) >= 44 else b""
                    pcm = np.frombuffer(chunk[: len(chunk) // 2 * 2], "<i2")
                    voiced[0] += int(np.count_nonzero(np.abs(pcm) > 300))

        async with trio.open_nursery() as inner:
            await inner.start(read_events)
            await inner.start(read_stream)
            up = await trio.lowlevel.open_process(
                [
                    "curl", "-sS", "-T", "-", "-w", "%{http_code}", "-o", "/dev/null",
                    "-H", f"Authorization: Bearer {s['token']}",
                    cluster.url + s["urls"]["upload_audio"],
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )  # fmt: skip
            try:
                assert up.stdin is not None
                assert up.stdout is not None
                async for chunk in realtime_chunks(speech.samples, then_silence_s=2.5):
                    await up.stdin.send_all(chunk)
                upload_ended = trio.current_time()
                await up.stdin.aclose()
                assert await up.stdout.receive_some() == b"204"
            finally:
                with trio.CancelScope(shield=True):
                    await up.wait()
            with trio.fail_after(15):
                await replied.wait()
            await trio.sleep(2.5)  # the echo plays out in real time
            inner.cancel_scope.cancel()

    # Nothing buffered the upload: the turn was heard, transcribed and answered while
    # curl was still sending (its trailing silence), not after the body ended.
    when = {e["type"]: t for t, e in reversed(events)}
    assert when["input_audio_buffer.speech_started"] < upload_ended
    assert when["conversation.item.input_audio_transcription.completed"] < upload_ended
    final = next(
        e["transcript"]
        for _, e in events
        if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert wer(text, final) <= 0.2, final
    # Nothing buffered the stream: the header and lead came at once, the echo followed.
    assert first_byte_s[0] < 1.0, first_byte_s
    assert voiced[0] > 16000 * 0.8


@pytest.mark.parametrize("proxy", PROXIES)
async def test_sessions_stay_on_their_instance_and_a_lost_one_is_404(
    proxy: str, nursery: trio.Nursery, tmp_path: Path
) -> None:
    cluster = await start_cluster(nursery, proxy, tmp_path)
    async with httpx.AsyncClient(base_url=cluster.url, timeout=10) as client:
        sessions = []
        for _ in range(16):
            r = await client.post("/api/sessions", json={"responder": "loopback"})
            assert r.status_code == 201, r.text
            sessions.append(r.json())
        placed = [cluster.owners(s["id"]) for s in sessions]
        assert all(len(p) == 1 for p in placed), placed
        # Creations spread over both instances (all 16 on one: p = 2^-15).
        assert {p[0] for p in placed} == {0, 1}
        # Every kind of request of a session reaches its instance (another would 404).
        for s in sessions:
            auth = {"Authorization": f"Bearer {s['token']}"}
            got = await client.get(s["urls"]["session"], headers=auth)
            assert got.status_code == 200
            up = await client.post(
                s["urls"]["upload_audio"],
                headers=auth | {"X-Sequence": "0"},
                content=bytes(3200),
            )
            assert up.status_code == 204
            ev = await client.post(
                s["urls"]["events"], headers=auth, json={"type": "input_audio_buffer.clear"}
            )
            assert ev.status_code == 200
            async with client.stream("GET", s["urls"]["stream_audio"], headers=auth) as st:
                assert st.status_code == 200
                assert len(await st.aiter_raw().__anext__()) >= 44
            stopped = await client.post(s["urls"]["stop_stream"], headers=auth)
            assert stopped.status_code == 200
        # A browser's EventSource passes the token in the query: the proxy must not log it.
        s = sessions[0]
        url = f"{s['urls']['events']}?token={s['token']}"
        async with client.stream("GET", url) as ev:
            assert ev.status_code == 200
        for s, p in zip(sessions, placed, strict=True):
            held = cluster.held(p[0], s["id"])
            assert held is not None
            assert held.describe()["stats"]["bytes_in"] == 3200

        if proxy == "nginx":
            log = (tmp_path / "nginx" / "logs" / "access.log").read_text()
            assert f"{s['urls']['events']}" in log
            assert all(x["token"] not in log for x in sessions)

        # Instance 0 goes away: its sessions answer 404 (the client re-creates), the
        # others carry on, and new sessions land on the survivor.
        cluster.stops[0].cancel()
        await trio.sleep(0.2)
        for s, p in zip(sessions, placed, strict=True):
            auth = {"Authorization": f"Bearer {s['token']}"}
            got = await client.get(s["urls"]["session"], headers=auth)
            if p[0] == 0:
                assert got.status_code == 404, got.text
                assert got.json()["error"]["code"] == "session_not_found"
            else:
                assert got.status_code == 200
        for _ in range(4):
            r = await client.post("/api/sessions", json={"responder": "loopback"})
            assert r.status_code == 201, r.text
            assert cluster.owners(r.json()["id"]) == [1]
