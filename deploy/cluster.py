"""Run N voxwire instances behind nginx or HAProxy on this machine (``make cluster``).

    python deploy/cluster.py [--instances 2] [--proxy nginx|haproxy] [--port 8080]

Each instance is ``run.py`` on its own port (``--base-port``, ``--base-port + 1``, ...) with
``VOXWIRE_SESSION_ID_HEADER`` set, so the proxy names new sessions. The proxy runs
``deploy/nginx.conf`` or ``deploy/haproxy.cfg`` with the listen port and the upstream list
rewritten; nothing else changes, so what runs here is what the docs describe. Ctrl-C
(or SIGTERM) stops the proxy, then drains the instances.

Speech models as services, one inference server shared by every instance
(deploy/README.md):

    python deploy/cluster.py --stt-url http://gpu:8000/v1 --tts-url http://tts:8880/v1 \
        --speech-key-env SPEECH_API_KEY
    python deploy/cluster.py --speech-service local      # demo: deploy/speech_service.py

``--stt-url``/``--tts-url`` set ``VOXWIRE_STT_BACKEND``/``VOXWIRE_TTS_BACKEND=openai`` and
the base URLs on every instance; ``--speech-key-env NAME`` passes the key in ``$NAME`` to
them as ``VOXWIRE_STT_API_KEY``/``VOXWIRE_TTS_API_KEY`` (never on a command line).
``--speech-service local`` first starts the repo's reference service on
``--speech-port`` and points both at it (unless a URL is given); it stops after the
instances have drained.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import trio

if TYPE_CHECKING:
    from collections.abc import Mapping

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SESSION_ID_HEADER = "X-Voxwire-Session-Id"


def render_nginx(listen: int, upstreams: list[int], template: str | None = None) -> str:
    """deploy/nginx.conf with its ``listen`` port and upstream servers replaced."""
    text = template if template is not None else (DEPLOY / "nginx.conf").read_text()
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstreams)
    text, n = re.subn(r"(?:        server 127\.0\.0\.1:\d+;\n)+", servers, text)
    if n != 1:
        raise ValueError("nginx.conf: expected one block of upstream server lines")
    text, n = re.subn(r"listen \d+;", f"listen 127.0.0.1:{listen};", text)
    if n != 1:
        raise ValueError("nginx.conf: expected one listen line")
    return text


def render_haproxy(listen: int, upstreams: list[int], template: str | None = None) -> str:
    """deploy/haproxy.cfg with its ``bind`` port and servers replaced."""
    text = template if template is not None else (DEPLOY / "haproxy.cfg").read_text()
    lines = [
        f"    server voxwire{i} 127.0.0.1:{p} check inter 2s fall 2 rise 1\n"
        for i, p in enumerate(upstreams, 1)
    ]
    text, n = re.subn(r"(?:    server voxwire\d+ [^\n]*\n)+", "".join(lines), text)
    if n != 1:
        raise ValueError("haproxy.cfg: expected one block of server lines")
    text, n = re.subn(r"bind 127\.0\.0\.1:\d+", f"bind 127.0.0.1:{listen}", text)
    if n != 1:
        raise ValueError("haproxy.cfg: expected one bind line")
    return text


def proxy_command(proxy: str, listen: int, upstreams: list[int], workdir: Path) -> list[str]:
    """Write the rendered config under ``workdir``; the command that runs it in the foreground."""
    workdir.mkdir(parents=True, exist_ok=True)
    if proxy == "nginx":
        (workdir / "logs").mkdir(exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(render_nginx(listen, upstreams))
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        return [exe, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"]
    if proxy == "haproxy":
        conf = workdir / "haproxy.cfg"
        conf.write_text(render_haproxy(listen, upstreams))
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        return [exe, "-db", "-f", str(conf)]
    raise ValueError(f"unknown proxy {proxy!r}")


async def wait_healthy(url: str) -> None:
    """Poll ``url`` until it answers 200 (the caller bounds the wait)."""
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.2)


def speech_env(
    stt_url: str | None, tts_url: str | None, key_env: str | None, environ: Mapping[str, str]
) -> dict[str, str]:
    """The ``VOXWIRE_*`` variables that put every instance's STT and/or TTS on a service.

    Raises:
        ValueError: a URL that is not http(s), or ``key_env`` unset or empty.
    """
    env: dict[str, str] = {}
    key = ""
    if key_env:
        key = environ.get(key_env, "")
        if not key:
            raise ValueError(f"--speech-key-env: ${key_env} is unset or empty")
    for name, url in (("STT", stt_url), ("TTS", tts_url)):
        if not url:
            continue
        if not re.match(r"https?://[^/]+", url):
            raise ValueError(f"--{name.lower()}-url {url!r}: expected http(s)://host[:port]/v1")
        env[f"VOXWIRE_{name}_BACKEND"] = "openai"
        env[f"VOXWIRE_{name}_BASE_URL"] = url.rstrip("/")
        if key:
            env[f"VOXWIRE_{name}_API_KEY"] = key
    return env


async def start_speech_service(nursery: trio.Nursery, args: argparse.Namespace) -> trio.Process:
    """deploy/speech_service.py on ``args.speech_port``, once it answers ``/healthz``."""
    cmd = [sys.executable, str(DEPLOY / "speech_service.py"), "--port", str(args.speech_port)]
    if args.speech_key_env:
        cmd += ["--api-key-env", args.speech_key_env]  # the variable's name, not the key
    # its own session: a terminal's Ctrl-C reaches the instances, not it (it stops last)
    run = partial(trio.run_process, cmd, cwd=ROOT, check=False, start_new_session=True)
    proc: trio.Process = await nursery.start(run)

    async def exited() -> None:
        await proc.wait()
        raise RuntimeError(f"the speech service exited with {proc.returncode}")

    with trio.fail_after(120):  # loads and warms Whisper and Piper
        async with trio.open_nursery() as watch:
            watch.start_soon(exited)
            await wait_healthy(f"http://127.0.0.1:{args.speech_port}/healthz")
            watch.cancel_scope.cancel()
    return proc


async def run_cluster(args: argparse.Namespace) -> None:
    ports = [args.base_port + i for i in range(args.instances)]
    stt_url, tts_url = args.stt_url, args.tts_url
    if args.speech_service == "local":
        local = f"http://127.0.0.1:{args.speech_port}/v1"
        stt_url, tts_url = stt_url or local, tts_url or local
    speech = speech_env(stt_url, tts_url, args.speech_key_env, os.environ)
    env = os.environ | {"VOXWIRE_SESSION_ID_HEADER": SESSION_ID_HEADER} | speech
    workdir = ROOT / "build" / "cluster" / args.proxy
    procs: list[trio.Process] = []
    service: trio.Process | None = None
    try:
        async with trio.open_nursery() as nursery:
            if args.speech_service == "local":
                service = await start_speech_service(nursery, args)
            for port in ports:
                cmd = [sys.executable, "run.py", "--host", "127.0.0.1", "--port", str(port)]
                run = partial(trio.run_process, cmd, cwd=ROOT, env=env, check=False)
                procs.append(await nursery.start(run))
            with trio.fail_after(60):
                for port in ports:
                    await wait_healthy(f"http://127.0.0.1:{port}/healthz")
            cmd = proxy_command(args.proxy, args.port, ports, workdir)
            procs.insert(0, await nursery.start(partial(trio.run_process, cmd, check=False)))
            print(
                f"voxwire: {len(ports)} instances ({', '.join(map(str, ports))}) behind "
                f"{args.proxy} on http://127.0.0.1:{args.port}/  (Ctrl-C stops)",
                flush=True,
            )
            for name, url in (("STT", stt_url), ("TTS", tts_url)):
                if url:
                    key = f", key from ${args.speech_key_env}" if args.speech_key_env else ""
                    print(f"voxwire: {name} on {url}{key}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            # The proxy first, then the instances, each draining (SIGTERM).
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            if service is not None:  # last: the draining instances may still use it
                for proc in procs:
                    await proc.wait()
                service.send_signal(signal.SIGTERM)
    finally:
        for proc in [*procs, *([service] if service is not None else [])]:
            if proc.returncode is None:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/cluster.py", description=__doc__)
    parser.add_argument("--instances", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--proxy", choices=["nginx", "haproxy"], default="nginx")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--base-port", type=int, default=8001)
    speech = parser.add_argument_group("speech models as services (deploy/README.md)")
    speech.add_argument("--stt-url", metavar="URL", help="OpenAI-compatible STT, e.g. .../v1")
    speech.add_argument("--tts-url", metavar="URL", help="OpenAI-compatible TTS, e.g. .../v1")
    speech.add_argument(
        "--speech-key-env", metavar="NAME", help="the services' API key is in $NAME"
    )
    speech.add_argument(
        "--speech-service",
        choices=["local"],
        help="start deploy/speech_service.py (the reference service) and use it",
    )
    speech.add_argument("--speech-port", type=int, default=8090, help="of --speech-service")
    args = parser.parse_args(argv)
    try:
        speech_env(args.stt_url, args.tts_url, args.speech_key_env, os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    trio.run(run_cluster, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
