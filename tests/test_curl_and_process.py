"""Real curl against the real server, and run.py as a process (flags, SIGTERM drain)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import soundfile as sf
import trio

from deploy.cluster import wait_healthy
from tests import tools
from tests.conftest import create_session, free_port, never_reading_stream, tone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
pytestmark = tools.needs("curl", what="the curl and process tests")


async def test_curl_T_upload_and_curl_N_stream(client: httpx.AsyncClient, tmp_path: Path) -> None:
    s = await create_session(client, responder="loopback")
    base = str(client.base_url).rstrip("/")
    signal_ = tone(1.0)
    saved = tmp_path / "reply.wav"
    async with trio.open_nursery() as nursery:
        # curl -N saves the stream for 2.5 s (exit 28 = its --max-time, as intended)
        stream = await nursery.start(
            partial(
                trio.run_process,
                [
                    "curl",
                    "-sN",
                    "--max-time",
                    "2.5",
                    "-o",
                    str(saved),
                    "-H",
                    f"Authorization: Bearer {s.token}",
                    base + s.urls["stream_audio"],
                ],
                check=False,
            )
        )
        await trio.sleep(0.3)
        # `curl -T -` streams stdin as a chunked PUT with Expect: 100-continue
        up = await trio.run_process(
            [
                "curl",
                "-sS",
                "-T",
                "-",
                "-w",
                "%{http_code}",
                "-o",
                "/dev/null",
                "-H",
                f"Authorization: Bearer {s.token}",
                base + s.urls["upload_audio"],
            ],
            stdin=signal_.astype("<i2").tobytes(),
            capture_stdout=True,
        )
        assert up.stdout == b"204"
        await stream.wait()
    info = (await client.get(s.urls["session"], headers=s.auth)).json()
    assert info["stats"]["bytes_in"] == 32000
    audio, rate = sf.read(io.BytesIO(saved.read_bytes()), dtype="int16")
    assert rate == 16000
    heard = audio[audio != 0]
    n = 31 * 512  # whole 32 ms frames of the 1 s upload
    assert np.array_equal(heard[:n], signal_[:n])


async def test_curl_wrong_type_gets_415_json(client: httpx.AsyncClient) -> None:
    s = await create_session(client)
    base = str(client.base_url).rstrip("/")
    out = await trio.run_process(
        [
            "curl",
            "-sS",
            "-T",
            "-",
            "-H",
            "Content-Type: audio/mpeg",
            "-H",
            f"Authorization: Bearer {s.token}",
            base + s.urls["upload_audio"],
            "-w",
            "\n%{http_code}",
        ],
        stdin=b"\xff\xfb" * 1000,
        capture_stdout=True,
    )
    body, status = out.stdout.rsplit(b"\n", 1)
    assert status == b"415"
    assert b'"unsupported_media_type"' in body


@asynccontextmanager
async def run_py(ready_path: str, **env: str) -> AsyncIterator[tuple[trio.Process, str]]:
    """``run.py`` as a subprocess with ``VOXWIRE_*`` settings, once ``ready_path`` answers
    200; killed on the way out if it is still running."""
    port = free_port()
    environ = os.environ | {"VOXWIRE_PORT": str(port)} | env
    cmd = [sys.executable, "run.py", "--host", "127.0.0.1"]
    proc = await trio.lowlevel.open_process(cmd, cwd=ROOT, env=environ, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        with trio.fail_after(20):
            await wait_healthy(url + ready_path)
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_run_py_help_documents_flags() -> None:
    out = subprocess.run(
        [sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--host", "--port", "--log-level", "VOXWIRE_HOST", "VOXWIRE_PORT"):
        assert flag in out


async def test_sigterm_drains_streams_and_exits() -> None:
    """SIGTERM: open streams end with their final chunk; for the notice period the port
    stays open and creation, /readyz and new streams answer 503; then the process exits
    within notice + graceful deadline."""
    notice_s, graceful_s = 1.5, 3.0
    async with (
        run_py(
            "/readyz",
            VOXWIRE_GRACEFUL_TIMEOUT_S=str(graceful_s),
            VOXWIRE_SHUTDOWN_NOTICE_S=str(notice_s),
        ) as (proc, url),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        s = await create_session(client, responder="loopback")
        with trio.fail_after(10):
            async with (
                client.stream("GET", s.urls["stream_audio"], headers=s.auth) as r,
                client.stream("GET", s.urls["events"], headers=s.auth) as ev,
            ):
                it = r.aiter_raw()
                await it.__anext__()
                events_it = ev.aiter_raw()
                await events_it.__anext__()
                proc.send_signal(signal.SIGTERM)
                signalled = trio.current_time()
                # Both end cleanly (final chunk: no error raised) and promptly.
                rest = [c async for c in it]
                assert sum(len(c) for c in rest) < 20_000
                _ = [c async for c in events_it]
        # The notice period: still listening, refusing what would start new work.
        assert trio.current_time() - signalled < notice_s
        async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
            created = await fresh.post("/api/sessions", json={"responder": "loopback"})
            assert created.status_code == 503, created.text
            assert created.headers["retry-after"]
            ready = await fresh.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "draining"
            again = await fresh.get(s.urls["stream_audio"], headers=s.auth)
            assert again.status_code == 503
            assert again.json()["error"]["code"] == "draining"
        with trio.fail_after(notice_s + graceful_s + 2):
            await proc.wait()
        assert proc.returncode == 0


async def test_curl_recipe_talks_with_real_speech(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """docs/clients.md's recipe: `curl -N` events and stream, a live mic piped to `curl -T -`.

    The "microphone" is Piper speech written to curl's stdin in real time, as arecord would.
    """
    from tests.speech import synthesize
    from tests.voice import realtime_chunks, wer

    text = "What time does the library open tomorrow?"
    speech = synthesize((text,), lead_s=0.5)
    s = await create_session(client)
    base = str(client.base_url).rstrip("/")
    auth = f"Authorization: Bearer {s.token}"
    saved = tmp_path / "reply.wav"
    events = bytearray()
    replied = trio.Event()

    async def read_events(task_status: trio.TaskStatus[None]) -> None:
        proc = await trio.lowlevel.open_process(
            ["curl", "-sN", "-H", auth, base + s.urls["events"]], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        task_status.started()
        try:
            async for data in proc.stdout:
                events.extend(data)
                if b'"response.done"' in events:
                    replied.set()
        finally:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()

    stream_cmd = ["curl", "-sN", "--max-time", "15", "-o", str(saved), "-H", auth]
    upload_cmd = ["curl", "-sS", "-T", "-", "-w", "%{http_code}", "-o", "/dev/null", "-H", auth]
    async with trio.open_nursery() as nursery:
        await nursery.start(read_events)
        nursery.start_soon(
            partial(trio.run_process, [*stream_cmd, base + s.urls["stream_audio"]], check=False)
        )
        await trio.sleep(0.3)
        up = await trio.lowlevel.open_process(
            [*upload_cmd, base + s.urls["upload_audio"]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert up.stdin is not None
            assert up.stdout is not None
            async for chunk in realtime_chunks(speech.samples, then_silence_s=1.0):
                await up.stdin.send_all(chunk)
            await up.stdin.aclose()
            assert await up.stdout.receive_some() == b"204"
        finally:
            up.kill()
            with trio.CancelScope(shield=True):
                await up.wait()
        with trio.fail_after(15):
            await replied.wait()
        await trio.sleep(0.5)  # curl writes what it has received to the file
        nursery.cancel_scope.cancel()

    lines = [ln[6:] for ln in events.decode().splitlines() if ln.startswith("data: ")]
    parsed = [json.loads(ln) for ln in lines]
    final = next(
        e["transcript"]
        for e in parsed
        if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert wer(text, final) <= 0.2, final
    done = next(e for e in parsed if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    # The saved stream is a WAV whose reply part is the echo, audible.
    data = saved.read_bytes()
    assert data[:4] == b"RIFF"
    pcm = np.frombuffer(data[44 : 44 + (len(data) - 44) // 2 * 2], "<i2")
    assert np.count_nonzero(np.abs(pcm) > 300) > 16000 * 0.8


async def test_shutdown_is_not_blocked_by_a_client_that_never_reads() -> None:
    """RELIABILITY.md V7 at shutdown: the process still exits within its deadline
    (max(graceful timeout, send timeout) after SIGTERM). With the send timeout at 600 s
    this test fails: the stuck send holds the process."""
    graceful_s, send_s = 1.0, 2.0
    async with run_py(
        "/healthz", VOXWIRE_GRACEFUL_TIMEOUT_S=str(graceful_s), VOXWIRE_SEND_TIMEOUT_S=str(send_s)
    ) as (proc, url):
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            s = await create_session(client, responder="loopback", output_sample_rate=48000)
        sock = await never_reading_stream(url, s)
        try:
            await trio.sleep(1.0)  # 48 kHz fills the tiny window at once: the send is stuck
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(max(graceful_s, send_s) + 3):
                await proc.wait()
            assert proc.returncode == 0
        finally:
            sock.close()
