"""Speech models as services: voxwire fronting a server that speaks OpenAI's audio APIs.

The service (tests/audio_service.py) wraps the embedded Whisper and Piper, so the audio is
real; it streams speech in 20 ms pieces in real time, and misbehaves on demand. Each test
runs real turns through the real server and checks what the client gets.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from tests import corpus
from tests.audio_service import AudioService, load_audio_models, start_audio_service
from tests.conftest import create_session, free_port
from tests.voice import Events, Stream, post_events, push_to_talk, realtime_chunks, upload, wer

if TYPE_CHECKING:
    from tests.conftest import SessionHandle, StartServer

SENTENCE = "Could you remind me to water the plants on the balcony tomorrow morning?"
KEY = "sk-audio-secret-0123456789"


@pytest.fixture
async def service(nursery: trio.Nursery) -> AudioService:
    models = await trio.to_thread.run_sync(load_audio_models)
    return await start_audio_service(nursery, AudioService(), models=models)


def remote(service: AudioService, *, stt: bool, tts: bool, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if stt:
        config |= {"stt_backend": "openai", "stt_base_url": service.url, "stt_api_key": KEY}
    if tts:
        config |= {"tts_backend": "openai", "tts_base_url": service.url, "tts_api_key": KEY}
    return config | extra


async def turn(
    client: httpx.AsyncClient, s: SessionHandle, samples: Any, *, n: int = 1
) -> tuple[Events, Stream, dict[str, Any]]:
    events, stream = Events(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        for _ in range(n):
            await push_to_talk(client, s, samples)
        done = await events.nth("response.done", n)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    return events, stream, done


def speech(voice: str = "piper") -> Any:
    return corpus.utterance(SENTENCE, voice).padded(0.3, 0.3).samples


@pytest.mark.parametrize(("stt", "tts"), [(True, False), (False, True), (True, True)])
async def test_a_spoken_turn_with_remote_models(
    start_server: StartServer, service: AudioService, stt: bool, tts: bool
) -> None:
    server = await start_server(**remote(service, stt=stt, tts=tts))
    voice = corpus.available_voices()[-1]
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        s = await create_session(client, turn_detection=None)
        events, stream, done = await turn(client, s, speech(voice))
    (completed,) = events.of("conversation.item.input_audio_transcription.completed")
    assert wer(SENTENCE, completed["transcript"]) <= 0.25, completed["transcript"]
    assert done["response"]["status"] == "completed"
    assert stream.voiced_since(0) > 1.0  # the reply was spoken
    paths = [r["path"] for r in service.requests]
    assert ("/v1/audio/transcriptions" in paths) == stt
    assert ("/v1/audio/speech" in paths) == tts
    if stt:
        form = next(r for r in service.requests if r["path"] == "/v1/audio/transcriptions")
        assert form["auth"] == f"Bearer {KEY}"
        assert form["form"]["model"] == "whisper-1"
    if tts:
        body = next(r for r in service.requests if r["path"] == "/v1/audio/speech")["json"]
        assert (body["voice"], body["response_format"]) == ("alloy", "pcm")
        assert body["input"] in completed["transcript"]  # the echo's pieces
    assert KEY not in json.dumps([e for _, e in events.got])


async def test_remote_speech_plays_before_the_service_has_sent_it_all(
    start_server: StartServer, service: AudioService
) -> None:
    """The TTS body is read as it streams: the client hears the first clause while the
    service is still sending it."""
    server = await start_server(**remote(service, stt=False, tts=True))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        s = await create_session(client, turn_detection=None)
        _, stream, _ = await turn(client, s, speech())
    nonzero = (stream.samples != 0).nonzero()[0]
    assert len(nonzero), "no reply audio"
    heard_at = next(t for t, total in stream.chunks if total > int(nonzero[0]))
    started, finished = service.tts_sent[0]
    assert heard_at < finished, (heard_at - started, finished - started)


async def test_session_voice_and_transcription_settings_pass_through(
    start_server: StartServer, service: AudioService
) -> None:
    server = await start_server(**remote(service, stt=True, tts=True))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        s = await create_session(
            client,
            type="realtime",
            audio={
                "input": {
                    "turn_detection": None,
                    "transcription": {
                        "model": "whisper-large-v3",
                        "language": "en",
                        "prompt": "balcony",
                    },
                },
                "output": {"voice": "nova", "speed": 1.25},
            },
        )
        await turn(client, s, speech())
        # a response.create's own voice speaks that response only
        events = Events()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run, client, s)
            await events.wait_for("session.created")
            item = {
                "type": "conversation.item.create",
                "item": {"role": "user", "content": [{"type": "input_text", "text": "Hi."}]},
            }
            create = {"type": "response.create", "response": {"voice": "shimmer"}}
            await post_events(client, s, item, create)
            await events.wait_for("response.done")
            nursery.cancel_scope.cancel()
    voices = [r["json"]["voice"] for r in service.requests if r["path"] == "/v1/audio/speech"]
    assert voices[-1] == "shimmer"
    assert set(voices[:-1]) == {"nova"}
    form = next(r for r in service.requests if r["path"] == "/v1/audio/transcriptions")["form"]
    assert (form["model"], form["language"], form["prompt"]) == (
        "whisper-large-v3",
        "en",
        "balcony",
    )
    body = next(r for r in service.requests if r["path"] == "/v1/audio/speech")["json"]
    assert (body["voice"], body["speed"]) == ("nova", 1.25)


@pytest.mark.parametrize(
    ("backend", "fault", "says"),
    [
        ("stt", "refused", "cannot reach"),
        ("stt", "status", "answered 500: model overloaded"),
        ("stt", "hang", "no answer within 1 s"),
        ("tts", "refused", "cannot reach"),
        ("tts", "status", "answered 500: model overloaded"),
        ("tts", "hang", "no audio within 1 s"),
        ("tts", "truncated", "ended early"),
    ],
)
async def test_a_failing_service_fails_that_turn_and_the_next_one_works(
    start_server: StartServer, nursery: trio.Nursery, backend: str, fault: str, says: str
) -> None:
    models = await trio.to_thread.run_sync(load_audio_models)
    service = AudioService()
    port = free_port()
    if fault != "refused":  # (refused: nothing listens until the second turn)
        await start_audio_service(nursery, service, models=models, port=port)
    url = f"http://127.0.0.1:{port}/v1"
    server = await start_server(
        **{
            f"{backend}_backend": "openai",
            f"{backend}_base_url": url,
            f"{backend}_api_key": KEY,
            f"{backend}_timeout_s": 1.0,
        }
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        s = await create_session(client, turn_detection=None)
        events, stream = Events(), Stream()
        async with trio.open_nursery() as inner:
            inner.start_soon(events.run, client, s)
            inner.start_soon(stream.run, client, s)
            await events.wait_for("session.created")
            service.mode = fault if fault != "refused" else "ok"
            await push_to_talk(client, s, speech())
            error = await events.wait_for("error", within=30)
            if backend == "stt":
                failed = await events.wait_for("conversation.item.input_audio_transcription.failed")
                assert failed["error"]["code"] == "model_error"
            else:
                first = await events.nth("response.done", 1)
                assert first["response"]["status"] == "failed"
            # the service recovers (or comes up): the same session's next turn works
            service.mode = "ok"
            if fault == "refused":
                await start_audio_service(nursery, service, models=models, port=port)
            mark = stream.n
            await push_to_talk(client, s, speech())
            done = await events.wait_for(
                "response.done", lambda e: e["response"]["status"] == "completed", within=60
            )
            await trio.sleep(0.3)
            inner.cancel_scope.cancel()
    assert error["error"]["code"] == "model_error"
    assert f"openai {backend.upper()} at {url}" in error["error"]["message"], error
    assert says in error["error"]["message"], error
    assert KEY not in json.dumps([e for _, e in events.got])
    assert done["response"]["audio_queued_ms"] > 1000
    assert stream.voiced_since(mark) > 1.0


async def test_fallback_to_the_embedded_models_is_counted(start_server: StartServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    server = await start_server(
        stt_backend="openai",
        stt_base_url=dead,
        stt_fallback=True,
        tts_backend="openai",
        tts_base_url=dead,
        tts_fallback=True,
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        s = await create_session(client, turn_detection=None)
        events, stream, done = await turn(client, s, speech())
        metrics = (await client.get("/metrics")).text
    (completed,) = events.of("conversation.item.input_audio_transcription.completed")
    assert wer(SENTENCE, completed["transcript"]) <= 0.25
    assert done["response"]["status"] == "completed"
    assert stream.voiced_since(0) > 1.0
    assert not events.of("error")
    fallbacks = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("voxwire_model_fallbacks_total{")
    }
    assert fallbacks["stt"] >= 1
    assert fallbacks["tts"] >= 1


async def test_partials_stay_local_or_go_off(
    start_server: StartServer, service: AudioService
) -> None:
    """With remote STT, partials come from the embedded model by default (no request per
    partial); ``stt_partials=off`` sends none."""
    long = corpus.utterance(SENTENCE, "piper").padded(0.3, 0.0).samples
    for partials in ("local", "off"):
        service.requests.clear()
        server = await start_server(**remote(service, stt=True, tts=False, stt_partials=partials))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            s = await create_session(client, turn_detection={"type": "server_vad"})
            events = Events()
            async with trio.open_nursery() as inner:
                inner.start_soon(events.run, client, s)
                await events.wait_for("session.created")
                inner.start_soon(
                    upload, client, s, realtime_chunks(long, chunk_ms=100, then_silence_s=1.5)
                )
                await events.wait_for(
                    "conversation.item.input_audio_transcription.completed", within=40
                )
                inner.cancel_scope.cancel()
        deltas = events.of("conversation.item.input_audio_transcription.delta")
        transcriptions = [r for r in service.requests if r["path"] == "/v1/audio/transcriptions"]
        if partials == "local":
            assert deltas, "no partials"
        else:
            assert not deltas
        # finals (and speculative finals at pauses) only: far fewer than one per partial
        assert 1 <= len(transcriptions) <= 4, len(transcriptions)


async def test_a_pause_that_was_not_the_end_cancels_its_request(
    start_server: StartServer, service: AudioService
) -> None:
    """The speculative final sent at a pause is really cancelled (the service sees the
    client go) when the user speaks on."""
    service.mode = "hang"  # every transcription is still in flight when the speech goes on
    server = await start_server(**remote(service, stt=True, tts=False, stt_timeout_s=20.0))
    utterance = corpus.hesitation("piper", pause_s=0.8)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        s = await create_session(
            client, turn_detection={"type": "server_vad", "silence_duration_ms": 1500}
        )
        events = Events()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run, client, s)
            await events.wait_for("session.created")
            nursery.start_soon(
                upload, client, s, realtime_chunks(utterance.samples, then_silence_s=0.3)
            )
            with trio.fail_after(20):
                while service.cancelled == 0:  # noqa: ASYNC110 - the service counts it
                    await trio.sleep(0.05)
            asked = sum(r["path"] == "/v1/audio/transcriptions" for r in service.requests)
            nursery.cancel_scope.cancel()
    assert asked >= 1
    assert not events.of("input_audio_buffer.committed")  # the pause was not the end
