"""Speech models served over OpenAI's audio APIs: vLLM, speaches, Kokoro-FastAPI, OpenAI.

:class:`OpenAiStt` posts an utterance to ``/audio/transcriptions`` and returns the text;
:class:`OpenAiTts` posts text to ``/audio/speech`` and yields the PCM as the body arrives,
so the first words can play while the rest is still being synthesized. Both use an
``httpx.AsyncClient`` owned by the caller. Deadlines are trio cancel scopes around each
network wait, so they hold whatever the server does (accepts and says nothing, or
trickles); a cancelled call closes its connection, so the service sees the client go.

Every failure is a :class:`ModelError` (``"stt"`` or ``"tts"``) whose message starts with
the client's :attr:`label`; the API key never appears in a message or a repr, even when a
server quotes it back.
"""

from __future__ import annotations

import io
import json
import wave
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import httpx
import trio

from audio.pcm import PcmDecoder, pcm16_bytes
from models._errors import ModelError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    import numpy as np
    import numpy.typing as npt

STT_RATE = 16000  # what the embedded pipeline records at; the WAV says so
TTS_RATE = 24000  # OpenAI's response_format "pcm": 24 kHz PCM16 LE mono
DEFAULT_STT_MODEL = "whisper-1"
DEFAULT_TTS_MODEL = "tts-1"
MAX_ERROR_CHARS = 300  # of a server's error message, quoted in ours
MAX_QUOTED_BODY = 100  # of a body that is not what was expected


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """How to reach one OpenAI-compatible audio service.

    Attributes:
        base_url: up to and including the API version, e.g. ``http://127.0.0.1:8123/v1``.
        api_key: sent as a Bearer token when non-empty.
        model: the model name sent when a call names none (``""``: ``whisper-1`` for
            STT, ``tts-1`` for TTS).
        timeout_s: STT: the whole call; TTS: until the first audio byte.
        total_timeout_s: TTS: the whole body, from the call's start (the time the caller
            spends between chunks counts too).
        connect_timeout_s: opening the connection.
    """

    base_url: str
    api_key: str = ""
    model: str = ""
    timeout_s: float = 10.0
    total_timeout_s: float = 60.0
    connect_timeout_s: float = 3.0

    def __repr__(self) -> str:  # never print the key
        return (
            f"RemoteSettings(base_url={self.base_url!r}, model={self.model!r}, "
            f"timeout_s={self.timeout_s}, total_timeout_s={self.total_timeout_s}, "
            f"connect_timeout_s={self.connect_timeout_s})"
        )


class _Remote:
    """What both clients share: the URL, the headers, errors that name the service."""

    _kind = ""  # "stt" or "tts": the ModelError's model

    def __init__(self, client: httpx.AsyncClient, settings: RemoteSettings) -> None:
        self._client = client
        self._settings = settings

    @property
    def label(self) -> str:
        """Names the service in errors and logs (never the key)."""
        return f"openai {self._kind.upper()} at {self._settings.base_url}"

    def _url(self, path: str) -> str:
        return self._settings.base_url.rstrip("/") + path

    def _headers(self) -> dict[str, str]:
        key = self._settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _timeout(self) -> httpx.Timeout:
        # Only the connect phase is httpx's: the rest is bounded by trio deadlines, which
        # also cover a server that trickles bytes (httpx's read timeout is per read).
        return httpx.Timeout(None, connect=self._settings.connect_timeout_s)

    def _error(self, what: str) -> ModelError:
        key = self._settings.api_key
        if key:  # a server may quote the key back ("invalid key sk-...")
            what = what.replace(key, "***")
        return ModelError(self._kind, f"{self.label}: {what}")

    def _unreachable(self, exc: httpx.TransportError) -> ModelError:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return self._error(f"cannot reach the service ({detail})")

    def _status_error(self, response: httpx.Response, body: bytes) -> ModelError:
        return self._error(f"answered {response.status_code}: {_error_detail(body)}")


class OpenAiStt(_Remote):
    """``POST /audio/transcriptions``: a WAV (16 kHz PCM16 mono) in, its text out."""

    _kind = "stt"

    async def transcribe(
        self,
        samples: npt.NDArray[np.int16],
        *,
        model: str | None = None,
        language: str | None = None,
        prompt: str | None = None,
    ) -> str:
        """The text of ``samples`` (int16 at 16 kHz); ``""`` for no samples (no request).

        Args:
            samples: the utterance.
            model: overrides the settings' model for this call.
            language: an ISO-639-1 hint (``"en"``), sent when given.
            prompt: text to steer the decode (names, spelling), sent when given.

        Raises:
            ModelError: unreachable, no answer within ``timeout_s``, an error status, or
                an answer that is not JSON with a string ``"text"``.
        """
        if len(samples) == 0:
            return ""
        s = self._settings
        fields = {"model": model or s.model or DEFAULT_STT_MODEL, "response_format": "json"}
        if language:
            fields["language"] = language
        if prompt:
            fields["prompt"] = prompt
        files = {"file": ("audio.wav", wav_bytes(samples, STT_RATE), "audio/wav")}
        with trio.move_on_after(s.timeout_s) as deadline:
            try:
                response = await self._client.post(
                    self._url("/audio/transcriptions"),
                    data=fields,
                    files=files,
                    headers=self._headers(),
                    timeout=self._timeout(),
                )
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
        if deadline.cancelled_caught:
            raise self._error(f"no answer within {s.timeout_s:g} s")
        if not response.is_success:
            raise self._status_error(response, response.content)
        try:
            text = response.json()["text"]
        except (ValueError, TypeError, KeyError):
            text = None
        if not isinstance(text, str):
            quoted = response.content[:MAX_QUOTED_BODY].decode(errors="replace")
            raise self._error(f'expected JSON with a "text" string, got {quoted!r}')
        return text.strip()  # Whisper servers often start the text with a space


class OpenAiTts(_Remote):
    """``POST /audio/speech`` with ``response_format: "pcm"``: PCM16 LE 24 kHz mono, streamed."""

    _kind = "tts"
    sample_rate: int = TTS_RATE

    async def stream(
        self, text: str, *, voice: str, speed: float = 1.0, model: str | None = None
    ) -> AsyncGenerator[npt.NDArray[np.int16], None]:
        """Yield ``text`` spoken, as int16 arrays at :attr:`sample_rate`, as they arrive.

        Wrap it in ``contextlib.aclosing``: leaving early closes the connection. Chunks
        can be small (a byte odd out is carried to the next); a last odd byte at the
        end of the body is dropped. Empty text yields nothing without a request.

        Raises:
            ModelError: unreachable, no audio within ``timeout_s``, the body not done
                within ``total_timeout_s``, an error status, a body that is not audio
                (by its content type) or that ends before its announced length.
        """
        if not text.strip():
            return
        s = self._settings
        start = trio.current_time()
        first_deadline = start + s.timeout_s
        total_deadline = start + s.total_timeout_s
        payload = {
            "model": model or s.model or DEFAULT_TTS_MODEL,
            "input": text,
            "voice": voice,
            "response_format": "pcm",
            "speed": speed,
        }
        request = self._client.build_request(
            "POST",
            self._url("/audio/speech"),
            json=payload,
            headers=self._headers(),
            timeout=self._timeout(),
        )
        with trio.move_on_at(min(first_deadline, total_deadline)) as headers_wait:
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
        if headers_wait.cancelled_caught:
            raise self._deadline_error(0, first_deadline <= total_deadline)
        # httpx's aiter_bytes is an async generator (typed as an iterator): closing it
        # explicitly keeps it from being finalized later, outside this call.
        chunks = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        try:
            await self._check(response, total_deadline)
            decoder = PcmDecoder()
            received = 0
            while True:
                # Each wait has its own scope: a yield inside a cancel scope would put
                # the caller's code between chunks under this generator's deadline.
                first = received == 0 and first_deadline <= total_deadline
                with trio.move_on_at(first_deadline if first else total_deadline) as wait:
                    try:
                        chunk: bytes | None = await anext(chunks)
                    except StopAsyncIteration:
                        chunk = None
                    except httpx.TransportError as exc:  # h11: body shorter than announced
                        raise self._error(
                            f"the audio ended early after {received} bytes ({type(exc).__name__})"
                        ) from exc
                if wait.cancelled_caught:
                    raise self._deadline_error(received, first)
                if chunk is None:
                    return  # (an odd byte left in the decoder is half a sample: dropped)
                received += len(chunk)
                samples = decoder.feed(chunk)
                if len(samples):
                    yield samples
        finally:
            # Shielded: on cancellation or an early close the connection must still be
            # closed (that is what tells the service to stop); closing does not block.
            with trio.CancelScope(shield=True):
                await chunks.aclose()
                await response.aclose()

    async def _check(self, response: httpx.Response, deadline: float) -> None:
        """Raise for an error status (quoting the error body) or a body that is not audio."""
        if not response.is_success:
            body = b""
            with trio.move_on_at(deadline):
                try:
                    body = await response.aread()
                except httpx.TransportError:
                    pass  # the status alone still says what happened
            raise self._status_error(response, body)
        content_type = response.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        # Servers label raw PCM differently (audio/pcm, audio/L16, octet-stream)
        if not (media.startswith("audio/") or media == "application/octet-stream"):
            raise self._error(f"expected audio/pcm, got content-type {content_type!r}")

    def _deadline_error(self, received: int, first: bool) -> ModelError:
        s = self._settings
        if first:
            return self._error(f"no audio within {s.timeout_s:g} s")
        return self._error(
            f"the audio took longer than {s.total_timeout_s:g} s ({received} bytes came)"
        )


def wav_bytes(samples: npt.NDArray[np.int16], rate: int) -> bytes:
    """A complete WAV file (PCM16 mono) of ``samples``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16_bytes(samples))
    return out.getvalue()


def _error_detail(body: bytes) -> str:
    """The message of an OpenAI error body (``{"error": {"message": ...}}``), else the body."""
    text = body.decode(errors="replace")
    detail: Any = text
    try:
        error = json.loads(text).get("error")
        if isinstance(error, dict):
            detail = error.get("message", text)
        elif error:  # some servers send "error": "text"
            detail = error
    except (ValueError, AttributeError):
        pass
    quoted = str(detail).strip() or "(no body)"
    return quoted if len(quoted) <= MAX_ERROR_CHARS else quoted[:MAX_ERROR_CHARS] + "..."
