"""The repo's reference speech service on a port: one shared inference server for a demo.

    python deploy/speech_service.py [--host 127.0.0.1] [--port 8090] [--fast]

A thin wrapper around tests/audio_service.py (the tests' OpenAI-compatible audio server):
``POST /v1/audio/transcriptions`` runs the embedded Whisper tiny.en on the uploaded WAV,
``POST /v1/audio/speech`` the embedded Piper voice, answered as 24 kHz PCM16
(``response_format: "pcm"``) streamed in 20 ms pieces, in real time unless ``--fast``.
Any model name and voice are accepted. This adds ``GET /healthz``, an optional API key
(``--api-key-env NAME``: the key is read from that variable, never from the command
line; requests without ``Authorization: Bearer <key>`` get a 401) and bounded request
logs, so it can run for hours.

It is a stand-in with the same API as what production runs (see deploy/README.md: vLLM
serving Whisper on ``/v1/audio/transcriptions``, speaches or Kokoro-FastAPI on
``/v1/audio/speech``), on the same small CPU models voxwire embeds: it shows the
topology and the request pattern, not a GPU server's speed.
"""

from __future__ import annotations

import os

# as run.py: numpy's OpenBLAS pool would spin beside every Whisper decode. Before numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

# run as a script, deploy/ is on the path, not the repo (whose tests/ holds the service)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.stt import WhisperStt
from models.tts import PiperTts
from tests.audio_service import STT_RATE, AudioModels, AudioService

if TYPE_CHECKING:
    from quart import Response
    from quart_trio import QuartTrio

DEFAULT_PORT = 8090
KEEP = 200  # entries of each request log kept (the tests' service keeps them all)


class _Recent(list[Any]):
    """A list that keeps only its last ``KEEP`` entries (the service only appends)."""

    def append(self, item: Any) -> None:
        super().append(item)
        if len(self) > KEEP:
            del self[: len(self) - KEEP]


class SpeechService(AudioService):
    """:class:`tests.audio_service.AudioService` plus ``/healthz`` and an API key check."""

    api_key: str = ""

    def app(self) -> QuartTrio:
        from quart import request

        app = super().app()

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @app.before_request
        async def check_key() -> Response | None:
            if not self.api_key or request.path == "/healthz":
                return None
            if request.headers.get("Authorization", "") == f"Bearer {self.api_key}":
                return None
            return self._error(401, "invalid API key", "invalid_request_error")

        return app


def load_models(threads: int, workers: int) -> AudioModels:
    """Whisper and Piper, warmed (blocking)."""
    stt = WhisperStt(threads=threads, workers=workers)
    tts = PiperTts(threads=threads)
    tts.synthesize("Hello there.")  # the first call starts the phonemizer
    stt.transcribe(np.zeros(STT_RATE, np.int16))
    return AudioModels(stt, tts)


async def serve_speech(args: argparse.Namespace) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    service = SpeechService(
        tts_chunk_delay_s=0.0 if args.fast else 0.02,
        requests=_Recent(),
        tts_sent=_Recent(),
        tts_bodies=_Recent(),
    )
    if args.api_key_env:
        service.api_key = os.environ.get(args.api_key_env, "")
        if not service.api_key:
            raise SystemExit(f"speech service: ${args.api_key_env} is empty or unset")
    t0 = trio.current_time()
    service.models = await trio.to_thread.run_sync(load_models, args.threads, args.workers)
    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = "-" if args.access_log else None
    config.errorlog = "-"

    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    async with trio.open_nursery() as nursery:
        run = partial(serve, service.app(), config, shutdown_trigger=stop_on_signal)
        binds = await nursery.start(run)
        service.url = binds[0] + "/v1"
        print(
            json.dumps(
                {
                    "speech_service": service.url,
                    "models": "whisper tiny.en + piper (embedded)",
                    "loaded_s": round(trio.current_time() - t0, 1),
                    "tts_pace": "fast" if args.fast else "real time",
                    "api_key": f"${args.api_key_env}" if args.api_key_env else None,
                }
            ),
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python deploy/speech_service.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--threads", type=int, default=1, help="per model (Whisper, Piper)")
    parser.add_argument("--workers", type=int, default=1, help="Whisper decodes at once")
    parser.add_argument("--fast", action="store_true", help="send speech as fast as it can")
    parser.add_argument("--api-key-env", metavar="NAME", help="require the key in $NAME")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    trio.run(serve_speech, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
