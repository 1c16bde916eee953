"""Real curl against the real server, and run.py as a process (flags, SIGTERM drain)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import trio

from tests.conftest import create_session, tone

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_run_py_help_documents_flags() -> None:
    out = subprocess.run(
        [sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--host", "--port", "--log-level", "VOXWIRE_HOST", "VOXWIRE_PORT"):
        assert flag in out


async def test_sigterm_drains_streams_and_exits(tmp_path: Path) -> None:
    port = _free_port()
    env = os.environ | {"VOXWIRE_PORT": str(port), "VOXWIRE_GRACEFUL_TIMEOUT_S": "3"}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "run.py", "--host", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            with trio.fail_after(20):
                while True:
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await trio.sleep(0.1)
            s = await create_session(client)
            with trio.fail_after(10):
                async with client.stream("GET", s.urls["stream_audio"], headers=s.auth) as r:
                    it = r.aiter_raw()
                    await it.__anext__()
                    proc.send_signal(signal.SIGTERM)
                    rest = [c async for c in it]  # ends cleanly: final chunk, no error
                    assert sum(len(c) for c in rest) < 20_000
        with trio.fail_after(10):
            await proc.wait()
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
