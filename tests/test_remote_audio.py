"""The OpenAI audio clients against a real local service running the embedded models."""

from __future__ import annotations

from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import trio

from models import ModelError
from models.remote_audio import OpenAiStt, OpenAiTts, RemoteSettings
from tests import corpus
from tests.audio_service import AudioModels, AudioService, load_audio_models, start_audio_service
from tests.conftest import eventually, free_port
from tests.voice import wer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY = "sk-remote-secret-0123456789"
SENTENCE = "Hello there, this sentence comes back in small pieces."
COMMAND = "Please turn on the kitchen lights."
ESPEAK = pytest.mark.skipif(not corpus.espeak_available(), reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def audio_models() -> AudioModels:
    return load_audio_models()


@pytest.fixture
async def service(nursery: trio.Nursery, audio_models: AudioModels) -> AudioService:
    return await start_audio_service(nursery, AudioService(), models=audio_models)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def settings(url: str, **overrides: Any) -> RemoteSettings:
    return RemoteSettings(url, **{"api_key": KEY, **overrides})


def speech(text: str = COMMAND, voice: str = "piper") -> np.ndarray:
    return corpus.utterance(text, voice).samples


async def collect(
    tts: OpenAiTts, text: str = SENTENCE, *, into: list[np.ndarray] | None = None, **kwargs: Any
) -> list[np.ndarray]:
    """The chunks of ``text`` spoken; ``into`` keeps those that came before an error."""
    got = [] if into is None else into
    kwargs.setdefault("voice", "alloy")
    async with aclosing(tts.stream(text, **kwargs)) as chunks:
        async for chunk in chunks:
            got.append(chunk)
    return got


def check_error(exc: pytest.ExceptionInfo[ModelError], kind: str, label: str, *parts: str) -> None:
    error = exc.value
    assert error.model == kind
    assert error.message.startswith(label + ": "), error.message
    for part in parts:
        assert part in error.message, error.message
    assert KEY not in str(error)


# -- STT ---------------------------------------------------------------------------------


@pytest.mark.parametrize("voice", ["piper", pytest.param("espeak-us", marks=ESPEAK)])
async def test_stt_transcribes_real_speech(
    http: httpx.AsyncClient, service: AudioService, voice: str
) -> None:
    stt = OpenAiStt(http, settings(service.url, model="whisper-large"))
    samples = speech(voice=voice)
    text = await stt.transcribe(samples, model="whisper-tiny", language="en", prompt="Kitchen")
    assert wer(COMMAND, text) <= 0.25, text
    assert text == text.strip()
    [sent] = service.requests
    assert sent["path"] == "/v1/audio/transcriptions"
    assert sent["auth"] == f"Bearer {KEY}"
    assert sent["form"] == {
        "model": "whisper-tiny",
        "language": "en",
        "prompt": "Kitchen",
        "response_format": "json",
    }
    assert sent["file"]["content_type"] == "audio/wav"
    assert sent["file"]["rate"] == 16000
    assert sent["file"]["samples"] == len(samples)


async def test_stt_defaults_and_no_key(http: httpx.AsyncClient, service: AudioService) -> None:
    stt = OpenAiStt(http, RemoteSettings(service.url))
    assert await stt.transcribe(np.zeros(0, np.int16)) == ""
    assert service.requests == []  # nothing to say: no request
    await stt.transcribe(speech())
    [sent] = service.requests
    assert sent["auth"] == ""
    assert sent["form"] == {"model": "whisper-1", "response_format": "json"}
    named = OpenAiStt(http, RemoteSettings(service.url, model="served-whisper"))
    await named.transcribe(speech())
    assert service.requests[-1]["form"]["model"] == "served-whisper"


# -- TTS ---------------------------------------------------------------------------------


async def test_tts_streams_real_speech(http: httpx.AsyncClient, service: AudioService) -> None:
    tts = OpenAiTts(http, settings(service.url, model="kokoro"))
    assert tts.sample_rate == 24000
    arrivals: list[float] = []
    chunks = []
    async with aclosing(tts.stream(SENTENCE, voice="nova", speed=1.0)) as stream:
        async for chunk in stream:
            arrivals.append(trio.current_time())
            chunks.append(chunk)
    [(_started, finished)] = service.tts_sent
    # the first audio came while the service was still sending the rest
    assert arrivals[0] < finished
    assert len(chunks) > 5
    assert all(c.dtype == np.int16 for c in chunks)
    audio = np.concatenate(chunks)
    [body] = service.tts_bodies
    assert audio.tobytes() == np.frombuffer(body, "<i2").astype(np.int16).tobytes()
    [sent] = service.requests
    # Piper's 22050 Hz resampled to 24 kHz
    assert abs(len(audio) - sent["samples_22050"] * 24000 / 22050) <= 2
    assert 1.0 < len(audio) / 24000 < 8.0
    assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 500  # speech, not silence
    assert sent["auth"] == f"Bearer {KEY}"
    assert sent["json"] == {
        "model": "kokoro",
        "input": SENTENCE,
        "voice": "nova",
        "response_format": "pcm",
        "speed": 1.0,
    }


async def test_tts_speed_voice_and_default_model(
    http: httpx.AsyncClient, service: AudioService
) -> None:
    service.tts_chunk_delay_s = 0
    tts = OpenAiTts(http, RemoteSettings(service.url))
    normal = np.concatenate(await collect(tts, voice="alloy"))
    fast = np.concatenate(await collect(tts, voice="echo", speed=1.5, model="tts-1-hd"))
    assert len(fast) < 0.8 * len(normal)
    first, second = (r["json"] for r in service.requests)
    assert (first["model"], first["voice"], first["speed"]) == ("tts-1", "alloy", 1.0)
    assert (second["model"], second["voice"], second["speed"]) == ("tts-1-hd", "echo", 1.5)
    assert service.requests[0]["auth"] == ""


async def test_tts_odd_chunks_are_carried_and_a_last_odd_byte_dropped(
    http: httpx.AsyncClient, service: AudioService
) -> None:
    service.tts_chunk_bytes, service.tts_chunk_delay_s, service.tts_odd_byte = 333, 0, True
    tts = OpenAiTts(http, settings(service.url))
    audio = np.concatenate(await collect(tts, "Short."))
    [body] = service.tts_bodies
    assert len(body) % 2 == 1
    assert audio.tobytes() == np.frombuffer(body[:-1], "<i2").astype(np.int16).tobytes()


async def test_tts_empty_text_makes_no_request(
    http: httpx.AsyncClient, service: AudioService
) -> None:
    tts = OpenAiTts(http, settings(service.url))
    assert await collect(tts, "") == []
    assert await collect(tts, "  \n") == []
    assert service.requests == []


# -- faults ------------------------------------------------------------------------------


async def test_connection_refused(http: httpx.AsyncClient) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    stt, tts = OpenAiStt(http, settings(url)), OpenAiTts(http, settings(url))
    assert stt.label == f"openai STT at {url}"
    assert tts.label == f"openai TTS at {url}"
    with trio.fail_after(5):
        with pytest.raises(ModelError) as exc:
            await stt.transcribe(speech())
        check_error(exc, "stt", stt.label, "cannot reach the service")
        with pytest.raises(ModelError) as exc:
            await collect(tts)
        check_error(exc, "tts", tts.label, "cannot reach the service")


@pytest.mark.parametrize("status", [500, 401])
async def test_error_status_quotes_the_message(
    http: httpx.AsyncClient, service: AudioService, status: int
) -> None:
    service.mode, service.status = "status", status
    service.error_message = f"Incorrect API key provided: {KEY}" if status == 401 else "busy"
    stt, tts = OpenAiStt(http, settings(service.url)), OpenAiTts(http, settings(service.url))
    quoted = "Incorrect API key provided: ***" if status == 401 else "busy"
    with pytest.raises(ModelError) as exc:
        await stt.transcribe(speech())
    check_error(exc, "stt", stt.label, f"answered {status}: {quoted}")
    with pytest.raises(ModelError) as exc:
        await collect(tts)
    check_error(exc, "tts", tts.label, f"answered {status}: {quoted}")


async def test_long_error_messages_are_cut(http: httpx.AsyncClient, service: AudioService) -> None:
    service.mode, service.error_message = "status", "x" * 5000
    stt = OpenAiStt(http, settings(service.url))
    with pytest.raises(ModelError) as exc:
        await stt.transcribe(speech())
    assert 300 <= exc.value.message.count("x") < 400


async def test_hang_past_the_deadline(http: httpx.AsyncClient, service: AudioService) -> None:
    service.mode = "hang"
    quick = settings(service.url, timeout_s=0.5)
    stt, tts = OpenAiStt(http, quick), OpenAiTts(http, quick)
    with trio.fail_after(5):
        with pytest.raises(ModelError) as exc:
            await stt.transcribe(speech())
        check_error(exc, "stt", stt.label, "no answer within 0.5 s")
        with pytest.raises(ModelError) as exc:
            await collect(tts)
        check_error(exc, "tts", tts.label, "no audio within 0.5 s")
        # a call given up on closes its connection: the service sees both go
        await eventually(lambda: service.cancelled == 2)


async def test_tts_body_past_the_total_deadline(
    http: httpx.AsyncClient, service: AudioService
) -> None:
    service.mode = "stall"
    tts = OpenAiTts(http, settings(service.url, timeout_s=5, total_timeout_s=0.5))
    got: list[np.ndarray] = []
    with trio.fail_after(5):
        with pytest.raises(ModelError) as exc:
            await collect(tts, into=got)
        check_error(exc, "tts", tts.label, "the audio took longer than 0.5 s (960 bytes came)")
        assert sum(len(c) for c in got) == 480  # the audio before the stall was delivered
        await eventually(lambda: service.cancelled == 1)


async def test_tts_truncated_body(http: httpx.AsyncClient, service: AudioService) -> None:
    service.mode = "truncated"
    tts = OpenAiTts(http, settings(service.url))
    got: list[np.ndarray] = []
    with pytest.raises(ModelError) as exc:
        await collect(tts, "A short one.", into=got)
    [sent] = service.tts_bodies
    check_error(exc, "tts", tts.label, f"the audio ended early after {len(sent)} bytes")
    assert sum(len(c) for c in got) == len(sent) // 2  # what came was played


async def test_malformed_answers(http: httpx.AsyncClient, service: AudioService) -> None:
    service.mode = "malformed"
    stt, tts = OpenAiStt(http, settings(service.url)), OpenAiTts(http, settings(service.url))
    with pytest.raises(ModelError) as exc:
        await stt.transcribe(speech())
    check_error(exc, "stt", stt.label, 'expected JSON with a "text" string', "this is not JSON")
    with pytest.raises(ModelError) as exc:
        await collect(tts)
    check_error(exc, "tts", tts.label, "expected audio/pcm", "application/json")


@pytest.mark.parametrize("content_type", ["application/octet-stream", "audio/L16; rate=24000"])
async def test_tts_accepts_other_audio_types(
    http: httpx.AsyncClient, service: AudioService, content_type: str
) -> None:
    service.tts_content_type, service.tts_chunk_delay_s = content_type, 0
    tts = OpenAiTts(http, settings(service.url))
    assert len(np.concatenate(await collect(tts, "Yes."))) > 2400


# -- cancellation ------------------------------------------------------------------------


async def test_cancelled_stt_call_closes_the_request(
    http: httpx.AsyncClient, service: AudioService
) -> None:
    service.mode = "hang"
    stt = OpenAiStt(http, settings(service.url))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stt.transcribe, speech())
            await eventually(lambda: bool(service.requests))  # it reached the handler
            assert service.cancelled == 0
            nursery.cancel_scope.cancel()
        await eventually(lambda: service.cancelled == 1)


async def test_leaving_a_tts_stream_early_closes_it(
    http: httpx.AsyncClient, service: AudioService
) -> None:
    tts = OpenAiTts(http, settings(service.url))
    with trio.fail_after(10):
        async with aclosing(tts.stream(SENTENCE, voice="alloy")) as chunks:
            async for _chunk in chunks:
                break  # barge-in: the rest is not wanted
        await eventually(lambda: service.cancelled == 1)
    assert service.tts_sent == []  # the body never finished


async def test_no_key_in_reprs(http: httpx.AsyncClient) -> None:
    s = settings("http://127.0.0.1:9/v1", model="m")
    assert KEY not in repr(s)
    assert KEY not in str(s)
    assert "http://127.0.0.1:9/v1" in repr(s)
    assert KEY not in OpenAiStt(http, s).label + OpenAiTts(http, s).label
