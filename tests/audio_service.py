"""A real OpenAI-compatible audio server for tests (quart-trio under hypercorn).

``/v1/audio/transcriptions`` runs the embedded Whisper on the uploaded WAV and
``/v1/audio/speech`` the embedded Piper voice, resampled to 24 kHz and sent as PCM16 LE
(``response_format: "pcm"``, the only format it speaks) in ``tts_chunk_bytes`` pieces
``tts_chunk_delay_s`` apart, so the body really streams. Any model name and voice are
accepted (and recorded): there is one of each.

Fault modes (``mode``), for both routes unless noted:

- ``"ok"``: answer.
- ``"status"``: answer ``status`` with an OpenAI error body whose message is
  ``error_message``.
- ``"hang"``: accept the request, then never answer (no headers).
- ``"malformed"``: 200 with a body that is not what was asked for (STT: plain text;
  TTS: JSON).
- ``"truncated"`` (TTS): announce the whole body's Content-Length, send half, close.
- ``"stall"`` (TTS): headers and one chunk of silence (no synthesis), then nothing.

``tts_odd_byte`` appends one byte to the TTS body (half a sample, for the client to drop).

How a client's leaving is seen: hypercorn reads the socket while the handler runs and,
on EOF or reset, delivers ``http.disconnect``; quart-trio then cancels the nursery the
handler runs in (checked: within a millisecond, whether the handler is waiting or
streaming). So ``cancelled`` counts handlers (and TTS bodies) that were stopped before
they were done: the client went away. (The service's own shutdown at the end of a test
stops unfinished handlers too, and counts them, after the test's assertions.)
"""

from __future__ import annotations

import io
import json
import threading
import wave
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import trio
from quart import Response, request
from quart_trio import QuartTrio

from audio import StreamResampler, pcm16_bytes
from models.stt import WhisperStt
from models.tts import PiperTts

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from models import ModelSet

STT_RATE = 16000
TTS_RATE = 24000


@dataclass(frozen=True)
class AudioModels:
    stt: WhisperStt
    tts: PiperTts


_models: AudioModels | None = None
_lock = threading.Lock()


def load_audio_models() -> AudioModels:
    """Whisper and Piper, loaded and warmed once per process (blocking)."""
    global _models
    with _lock:
        if _models is None:
            # one thread each: the machine is small and other tests run beside these
            stt, tts = WhisperStt(threads=1, workers=1), PiperTts(threads=1)
            tts.synthesize("Hello there.")  # the first call starts the phonemizer
            stt.transcribe(np.zeros(STT_RATE, np.int16))
            _models = AudioModels(stt, tts)
        return _models


@dataclass
class AudioService:
    mode: str = "ok"  # "ok", "status", "hang", "malformed", "truncated", "stall"
    status: int = 500
    error_message: str = "model overloaded"
    tts_chunk_bytes: int = 960  # 20 ms at 24 kHz
    tts_chunk_delay_s: float = 0.02
    tts_content_type: str = "audio/pcm"
    tts_odd_byte: bool = False
    url: str = ""  # ends in /v1, set by start_audio_service
    # one per request: path, auth (the Authorization header), and form (STT; the file as
    # filename, content_type, bytes, rate, samples) or json (TTS; plus samples_22050)
    requests: list[dict[str, Any]] = field(default_factory=list)
    tts_sent: list[tuple[float, float]] = field(default_factory=list)  # finished bodies
    # per TTS body: the bytes it set out to send (truncated: the half it sends)
    tts_bodies: list[bytes] = field(default_factory=list)
    cancelled: int = 0
    models: AudioModels | ModelSet | None = None

    def app(self) -> QuartTrio:
        app = QuartTrio("audio-service")

        @app.post("/v1/audio/transcriptions")
        async def transcriptions() -> Response:
            with self._watch():
                return await self._transcribe()

        @app.post("/v1/audio/speech")
        async def speech() -> Response:
            with self._watch():
                return await self._speech()

        return app

    @contextmanager
    def _watch(self) -> Iterator[None]:
        try:
            yield
        except trio.Cancelled:  # the client went away (see the module docstring)
            self.cancelled += 1
            raise

    def _error(self, status: int, message: str, kind: str = "server_error") -> Response:
        body = {"error": {"message": message, "type": kind}}
        return Response(json.dumps(body), status=status, content_type="application/json")

    async def _transcribe(self) -> Response:
        form = await request.form
        files = await request.files
        upload = files.get("file")
        data = upload.read() if upload is not None else b""
        entry: dict[str, Any] = {
            "path": request.path,
            "auth": request.headers.get("Authorization", ""),
            "form": dict(form),
        }
        self.requests.append(entry)
        if self.mode == "status":
            return self._error(self.status, self.error_message)
        if self.mode == "hang":
            await trio.sleep_forever()
        if upload is None:
            return self._error(400, "no file", "invalid_request_error")
        try:
            samples, rate = _read_wav(data)
        except (wave.Error, EOFError, ValueError) as exc:
            return self._error(400, f"not a PCM16 mono WAV: {exc}", "invalid_request_error")
        entry["file"] = {
            "filename": upload.filename,
            "content_type": upload.content_type,
            "bytes": len(data),
            "rate": rate,
            "samples": len(samples),
        }
        if self.mode == "malformed":
            return Response("this is not JSON", content_type="text/plain")
        if rate != STT_RATE:
            samples = StreamResampler(rate, STT_RATE).feed(samples, last=True)
        text = await trio.to_thread.run_sync(self._loaded().stt.transcribe, samples)
        return Response(json.dumps({"text": " " + text}), content_type="application/json")

    async def _speech(self) -> Response:
        body = await request.get_json(silent=True) or {}
        entry: dict[str, Any] = {
            "path": request.path,
            "auth": request.headers.get("Authorization", ""),
            "json": body,
        }
        self.requests.append(entry)
        if self.mode == "status":
            return self._error(self.status, self.error_message)
        if self.mode == "hang":
            await trio.sleep_forever()
        if self.mode == "malformed":
            return Response(json.dumps({"audio": None}), content_type="application/json")
        if body.get("response_format") != "pcm":
            return self._error(400, "only response_format pcm", "invalid_request_error")
        if self.mode == "stall":
            pcm = bytes(self.tts_chunk_bytes)
        else:
            tts = self._loaded().tts
            speed = float(body.get("speed", 1.0))
            audio = await trio.to_thread.run_sync(tts.synthesize, str(body.get("input", "")), speed)
            entry["samples_22050"] = len(audio)
            pcm = pcm16_bytes(StreamResampler(tts.sample_rate, TTS_RATE).feed(audio, last=True))
            if self.tts_odd_byte:
                pcm += b"\x01"
        send = pcm[: len(pcm) // 2] if self.mode == "truncated" else pcm
        response = Response(self._body(send), content_type=self.tts_content_type)
        if self.mode == "truncated":
            # h11 then frames the body by length: closing short of it is what a proxy or
            # a crashed worker does mid-stream
            response.headers["Content-Length"] = str(len(pcm))
        response.timeout = None  # no cut-off of a slow body
        return response

    async def _body(self, pcm: bytes) -> AsyncIterator[bytes]:
        start, n, done = trio.current_time(), self.tts_chunk_bytes, False
        try:
            for i in range(0, len(pcm), n):
                if i:
                    await trio.sleep(self.tts_chunk_delay_s)
                yield pcm[i : i + n]
            if self.mode == "stall":
                await trio.sleep_forever()
            done = True
        finally:
            # cancelled while waiting, or closed at a yield by quart when the send failed
            if not done:
                self.cancelled += 1
            self.tts_bodies.append(pcm)
        self.tts_sent.append((start, trio.current_time()))

    def _loaded(self) -> AudioModels | ModelSet:
        assert self.models is not None, "start the service with start_audio_service"
        return self.models


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{w.getnchannels()} channels, {w.getsampwidth()} bytes a sample")
        rate = w.getframerate()
        frames = w.readframes(w.getnframes())
    return np.frombuffer(frames, "<i2").astype(np.int16), rate


async def start_audio_service(
    nursery: trio.Nursery,
    service: AudioService,
    *,
    models: AudioModels | ModelSet | None = None,
    port: int = 0,
) -> AudioService:
    """Serve ``service`` on a loopback port (ephemeral unless ``port``) until ``nursery``
    ends.

    ``models`` (anything with ``.stt`` and ``.tts``, e.g. :func:`load_audio_models`'s or
    the app's :class:`models.ModelSet`) saves loading them again.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    service.models = models or service.models or await trio.to_thread.run_sync(load_audio_models)
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    binds = await nursery.start(partial(serve, service.app(), config))
    service.url = binds[0] + "/v1"
    return service
