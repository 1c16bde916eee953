"""The Python client library (async and sync) and its CLI against the real server.

Real models, real Piper speech, real HTTP on loopback; the CLI runs as a subprocess.
"""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import sys
import wave
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import trio
from voxwire_client import Client, Event, VoxwireClient, VoxwireError
from voxwire_client._audio import WavFile
from voxwire_client._cli import Printer

from audio import StreamResampler
from tests.conftest import tone
from tests.speech import synthesize
from tests.voice import voiced_bounds, wer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.conftest import Running, StartServer

SENTENCE = "Please turn on the kitchen lights."
QUESTION = "Could you read me the news from this morning?"


def reply_span(samples: np.ndarray) -> tuple[int, int]:
    """First and last non-zero sample of the stream (its silence padding is exact zeros)."""
    nz = np.flatnonzero(samples)
    assert len(nz), "no reply audio at all"
    return int(nz[0]), int(nz[-1]) + 1


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> None:
    frames = np.repeat(samples[:, None], channels, axis=1) if channels > 1 else samples
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.astype("<i2").tobytes())


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "VOXWIRE_API_KEY"}
    done = await trio.run_process(
        [sys.executable, "-m", "voxwire_client", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**environ, **(env or {})},
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


# -- the async client --------------------------------------------------------------------


async def test_async_client_talks_in_real_time(server: Running) -> None:
    speech = synthesize((QUESTION,), gap_s=0.0, lead_s=0.5).samples
    pcm = speech.astype("<i2").tobytes() + bytes(2 * 16000 * 2)  # + 2 s of silence

    async def odd_pieces() -> AsyncIterator[bytes]:
        # Pieces split mid-sample: the client must still upload whole samples.
        for at in range(0, len(pcm), 1001):
            yield pcm[at : at + 1001]
            await trio.lowlevel.checkpoint()

    events: list[Event] = []
    reply = bytearray()
    response_done = trio.Event()
    async with (
        VoxwireClient(server.url) as client,
        client.session(output_sample_rate=24000) as s,
    ):
        assert s.config["output_sample_rate"] == 24000
        async with s.events() as event_stream, s.audio() as audio, trio.open_nursery() as nursery:
            assert audio.sample_rate == 24000

            async def follow() -> None:
                async for event in event_stream:
                    events.append(event)
                    if event.type == "response.done":
                        response_done.set()

            async def listen() -> None:
                async for chunk in audio:
                    assert len(chunk) % 2 == 0
                    reply.extend(chunk)

            nursery.start_soon(follow)
            nursery.start_soon(listen)
            t0 = trio.current_time()
            sent = await s.stream_pcm(odd_pieces())
            elapsed = trio.current_time() - t0
            with trio.fail_after(20):
                await response_done.wait()
            await trio.sleep(0.3)  # the reply's last frames reach us
            nursery.cancel_scope.cancel()
        stats = (await s.describe())["stats"]

    # paced like a microphone: as long as the audio, not as fast as the network
    assert sent == len(pcm) // 2
    assert len(pcm) / 32000 - 0.15 <= elapsed <= len(pcm) / 32000 + 1.0, elapsed
    # one sequenced 100 ms POST per chunk, every byte arrived
    assert s.next_sequence == stats["next_sequence"] == -(-sent // 1600)
    assert stats["bytes_in"] == len(pcm)

    types = [e.type for e in events]
    assert types[0] == "session.created"
    (completed,) = [
        e for e in events if e.type == "conversation.item.input_audio_transcription.completed"
    ]
    assert wer(QUESTION, completed["transcript"]) <= 0.2, completed["transcript"]
    (done,) = [e for e in events if e.type == "response.done"]
    assert done["response"]["status"] == "completed"
    said = "".join(e["delta"] for e in events if e.type == "response.output_audio_transcript.delta")
    assert said == completed["transcript"]  # the echo responder
    ids = [e.id for e in events if e.id is not None]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)

    samples = np.frombuffer(bytes(reply), "<i2")
    a, b = reply_span(samples)
    assert np.abs(samples[a:b].astype(np.int32)).max() > 3000
    reply_ms = (b - a) / 24
    assert abs(reply_ms - done["response"]["audio_ms"]) <= 100, (reply_ms, done["response"])
    assert 0.5 * len(speech) / 16 <= reply_ms <= 3 * len(speech) / 16  # plausible for the text


async def test_async_client_one_response_at_a_time_and_text_replies(server: Running) -> None:
    """response.create while a reply is active: 409 conversation_already_has_active_response
    naming the refused event; a text-only reply comes as response.output_text.*."""
    events: list[Event] = []
    async with (
        VoxwireClient(server.url) as client,
        client.session(responder="echo") as s,
        s.events() as event_stream,
        trio.open_nursery() as nursery,
    ):
        done = trio.Condition()

        async def follow() -> None:
            async for event in event_stream:
                events.append(event)
                if event.type == "response.done":
                    async with done:
                        done.notify_all()

        async def replies(n: int) -> None:
            async with done:
                while sum(e.type == "response.done" for e in events) < n:
                    await done.wait()

        nursery.start_soon(follow)
        await s.add_text(SENTENCE)
        await s.create_response()  # spoken: active until its audio has played out
        with pytest.raises(VoxwireError) as busy:
            await s.send({"type": "response.create", "event_id": "evt_again"})
        with trio.fail_after(20):
            await replies(1)
        await s.create_response(output_modalities=["text"])
        with trio.fail_after(20):
            await replies(2)
        nursery.cancel_scope.cancel()

    error = busy.value
    assert (error.status, error.code) == (409, "conversation_already_has_active_response")
    assert error.event_id == "evt_again"
    assert "(event evt_again)" in str(error)
    (refused,) = [e for e in events if e.type == "error"]
    assert refused["error"]["event_id"] == "evt_again"
    assert refused["error"]["code"] == "conversation_already_has_active_response"

    spoken, text = [e["response"] for e in events if e.type == "response.done"]
    assert spoken["status"] == text["status"] == "completed"
    assert spoken["output_modalities"] == ["audio"]
    assert text["output_modalities"] == ["text"]

    def of(kind: str, response: dict[str, Any]) -> list[Event]:
        return [e for e in events if e.type == kind and e.get("response_id") == response["id"]]

    said = "".join(e["delta"] for e in of("response.output_audio_transcript.delta", spoken))
    assert said == SENTENCE  # the echo
    (transcript,) = of("response.output_audio_transcript.done", spoken)
    assert transcript["transcript"] == SENTENCE
    assert of("output_audio_buffer.started", spoken)
    assert of("output_audio_buffer.stopped", spoken)
    written = "".join(e["delta"] for e in of("response.output_text.delta", text))
    (text_done,) = of("response.output_text.done", text)
    assert written == text_done["text"] == SENTENCE
    assert not of("output_audio_buffer.started", text)
    assert not of("response.output_audio.done", text)
    # GA names only: this client never asks for the beta vocabulary
    types = {e.type for e in events}
    assert not types & {"response.audio_transcript.delta", "conversation.item.created"}
    assert "conversation.item.added" in types


# -- the sync client ---------------------------------------------------------------------


def sync_conversation(url: str) -> dict[str, Any]:
    """Runs in a worker thread: the server lives in the test's trio loop."""
    out: dict[str, Any] = {}
    with Client(url) as client:
        with pytest.raises(VoxwireError) as bad:
            client.create_session(turn_detection={"threshold": 7})
        out["bad_config"] = bad.value
        with client.session(responder="none", input_sample_rate=8000) as s:
            out["id"] = s.id
            with s.events() as events, s.audio() as audio:
                out["first"] = next(events)
                out["rate"] = audio.sample_rate
                out["sent"] = s.stream_pcm(tone(0.5, rate=8000), chunk_ms=100)
                out["seq_after_stream"] = s.next_sequence
                with pytest.raises(VoxwireError) as bad_rate:
                    s.upload(bytes(320), rate=12345)
                out["bad_rate"] = bad_rate.value
                s.upload(bytes(1601))  # an odd byte: held for the next upload
                s.upload(bytes(1))
                out["stats"] = s.describe()["stats"]
                out["seq"] = s.next_sequence
                out["config"] = s.update(instructions="Be brief.")
                s.clear()
                seen = [e for e in _until(events, "input_audio_buffer.cleared")]
                out["updated"] = [e for e in seen if e.type == "session.updated"]
                stream = b""
                for chunk in audio:
                    stream += chunk
                    if len(stream) >= 16000:  # half a second
                        break
                out["stream"] = stream
            # resuming the event stream after an id gives the events after it, in order
            with s.events(last_event_id=out["first"].id) as resumed:
                out["resumed"] = next(resumed)
        try:
            s.describe()
        except VoxwireError as exc:
            out["after_delete"] = exc
    return out


def _until(events: Any, kind: str) -> list[Event]:
    seen = []
    for event in events:
        seen.append(event)
        if event.type == kind:
            return seen
    raise AssertionError(f"the stream ended before {kind}")


async def test_sync_client_in_a_thread(server: Running) -> None:
    with trio.fail_after(30):
        out = await trio.to_thread.run_sync(sync_conversation, server.url)

    bad = out["bad_config"]
    assert (bad.status, bad.code, bad.param) == (422, "invalid_value", "turn_detection.threshold")
    first = out["first"]
    assert first.type == "session.created"
    assert first["session"]["id"] == out["id"]
    assert out["rate"] == 16000
    assert out["sent"] == 4000
    assert out["seq_after_stream"] == 5
    assert (out["bad_rate"].status, out["bad_rate"].code) == (415, "unsupported_media_type")
    assert out["seq"] == out["stats"]["next_sequence"] == 7  # the 415 did not use a number
    assert out["stats"]["bytes_in"] == 8000 + 1602
    assert out["config"]["instructions"] == "Be brief."
    assert len(out["updated"]) == 1
    assert out["updated"][0]["session"]["config"]["instructions"] == "Be brief."
    assert len(out["stream"]) >= 16000
    assert not any(out["stream"])
    assert out["resumed"].id == first.id + 1
    assert (out["after_delete"].status, out["after_delete"].code) == (404, "session_not_found")


# -- the CLI -----------------------------------------------------------------------------


async def test_cli_talk_prints_the_conversation_and_saves_the_reply(
    server: Running, tmp_path: Path
) -> None:
    speech = synthesize((SENTENCE,), gap_s=0.0, lead_s=0.5).samples
    at_22k = StreamResampler(16000, 22050).feed(speech, last=True)
    wav, saved = tmp_path / "say.wav", tmp_path / "reply.wav"
    write_wav(wav, at_22k, 22050, channels=2)  # an accepted rate, downmixed by the CLI

    t0 = trio.current_time()
    code, out, err = await cli(
        "talk", str(wav), "--save", str(saved), "--url", server.url, "--output-rate", "24000"
    )
    took = trio.current_time() - t0
    assert code == 0, err
    lines = out.splitlines()
    you = [line.removeprefix("you: ") for line in lines if line.startswith("you: ")]
    mine = [line.removeprefix("assistant: ") for line in lines if line.startswith("assistant:")]
    assert len(you) == 1, out
    assert wer(SENTENCE, you[0]) <= 0.2, out
    assert mine == you, out  # the echo responder
    # it stopped once the conversation went quiet, not at --wait (30 s)
    assert took < len(at_22k) / 22050 + 12, took

    with wave.open(str(saved), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    # the whole stream from its start: the user's turn in silence, then the reply
    _, spoken_end = voiced_bounds(speech)
    a, b = reply_span(samples)
    assert a / 24000 > spoken_end / 16000 + 0.4  # after the turn's closing silence window
    assert np.abs(samples[a:b].astype(np.int32)).max() > 3000
    assert 0.5 * len(speech) / 16000 <= (b - a) / 24000 <= 3 * len(speech) / 16000


def test_cli_printer_shows_text_replies_and_the_event_an_error_names() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = Printer(out, err)
    for data in (
        {"type": "conversation.item.input_audio_transcription.completed", "transcript": "Hi."},
        {"type": "response.output_text.delta", "delta": "Hello"},
        {"type": "response.output_text.delta", "delta": " there."},
        {"type": "response.done", "response": {"status": "completed"}},
        {"type": "response.output_audio_transcript.delta", "delta": "Spoken"},
        {"type": "response.done", "response": {"status": "cancelled"}},
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": "conversation_already_has_active_response",
                "message": "a response is already in progress",
                "param": None,
                "event_id": "evt_7",
            },
        },
    ):
        printer.show(Event(data["type"], data))
    assert out.getvalue().splitlines() == [
        "you: Hi.",
        "assistant: Hello there.",
        "assistant: Spoken [cancelled]",
    ]
    assert err.getvalue() == (
        "voxwire: server error conversation_already_has_active_response: "
        "a response is already in progress (event evt_7)\n"
    )


def _has_input_device() -> bool:
    if importlib.util.find_spec("sounddevice") is None:
        return False
    try:
        import sounddevice

        sounddevice.query_devices(kind="input")
    except (OSError, ValueError):  # no PortAudio, or no input device (PortAudioError)
        return False
    return True


@pytest.mark.skipif(_has_input_device(), reason="this machine has a microphone")
async def test_cli_mic_without_a_sound_device_is_a_usage_error() -> None:
    code, out, err = await cli("talk", "--mic", "--url", "http://127.0.0.1:9")
    assert code == 2
    assert err.startswith("voxwire: --mic needs a sound input device: "), err
    assert len(err.strip().splitlines()) == 1
    assert out == ""


async def test_cli_bad_inputs_and_unreachable_server(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    eight_bit = tmp_path / "8bit.wav"
    with wave.open(str(eight_bit), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(16000)
        w.writeframes(bytes(1600))
    ok = tmp_path / "ok.wav"
    write_wav(ok, tone(0.2), 16000)

    async def run(*args: str) -> tuple[int, str]:
        code, _out, err = await cli("talk", *args, "--url", url)
        return code, err

    code, err = await run(str(tmp_path / "missing.wav"))
    assert (code, err.strip()) == (2, f"voxwire: {tmp_path / 'missing.wav'}: no such file")
    code, err = await run(str(text))
    assert code == 2
    assert err.startswith(f"voxwire: {text} is not a PCM WAV file"), err
    code, err = await run(str(eight_bit))
    assert code == 2
    assert "only 16-bit PCM WAV is supported" in err, err
    code, err = await run(str(ok))
    assert code == 1
    assert err.strip().startswith(f"voxwire: cannot connect to {url}"), err


async def test_cli_api_key_from_the_environment(start_server: StartServer, tmp_path: Path) -> None:
    server = await start_server(api_key="s3cret")
    wav = tmp_path / "beep.wav"
    write_wav(wav, tone(0.3), 16000)
    args = ("talk", str(wav), "--url", server.url, "--responder", "none")

    code, out, err = await cli(*args)
    assert code == 1
    assert err.startswith("voxwire: server said 401 invalid_api_key: "), err
    assert out == ""

    code, _, err = await cli(*args, env={"VOXWIRE_API_KEY": "s3cret"})
    assert code == 0, err
    assert len(server.registry) == 0  # the CLI deleted its session


def test_wav_file_downmixes_and_resamples_odd_rates(tmp_path: Path) -> None:
    rate = 17000  # not a rate the server takes: the CLI resamples to 16 kHz itself
    t = np.arange(rate) / rate
    left = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    path = tmp_path / "odd.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.stack([left, np.zeros_like(left)], axis=1).astype("<i2").tobytes())
    f = WavFile(path)
    assert (f.file_rate, f.rate, f.channels) == (17000, 16000, 2)
    out = np.frombuffer(b"".join(f.blocks(100)), "<i2")
    f.close()
    assert abs(len(out) - 16000) <= 1
    expected = 4000 * np.sin(2 * np.pi * 300 * np.arange(len(out)) / 16000)  # mono = mean
    assert np.abs(out - expected).max() < 60  # linear interpolation of a 300 Hz tone
