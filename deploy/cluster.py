"""Run N voxwire instances behind nginx or HAProxy on this machine (``make cluster``).

    python deploy/cluster.py [--instances 2] [--proxy nginx|haproxy] [--port 8080]

Each instance is ``run.py`` on its own port (``--base-port``, ``--base-port + 1``, ...) with
``VOXWIRE_SESSION_ID_HEADER`` set, so the proxy names new sessions. The proxy runs
``deploy/nginx.conf`` or ``deploy/haproxy.cfg`` with the listen port and the upstream list
rewritten; nothing else changes, so what runs here is what the docs describe. Ctrl-C
(or SIGTERM) stops the proxy, then drains the instances.
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

import httpx
import trio

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


async def run_cluster(args: argparse.Namespace) -> None:
    ports = [args.base_port + i for i in range(args.instances)]
    env = os.environ | {"VOXWIRE_SESSION_ID_HEADER": SESSION_ID_HEADER}
    workdir = ROOT / "build" / "cluster" / args.proxy
    procs: list[trio.Process] = []
    try:
        async with trio.open_nursery() as nursery:
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
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            # The proxy first, then the instances, each draining (SIGTERM).
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/cluster.py", description=__doc__)
    parser.add_argument("--instances", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--proxy", choices=["nginx", "haproxy"], default="nginx")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--base-port", type=int, default=8001)
    args = parser.parse_args(argv)
    trio.run(run_cluster, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
