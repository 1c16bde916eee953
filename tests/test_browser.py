"""The page at ``/`` in headless Chromium, with a fake microphone playing Piper speech.

Playwright drives Debian's ``chromium`` (installed by ``.ci/run``; Playwright never downloads
a browser here). Chromium's fake capture device plays a WAV made with the bundled voice,
the page uploads it, and the test reads what the page shows and what its worklets counted.
A screenshot goes to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import wave
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import trio

from audio import StreamResampler
from tests import tools
from tests.speech import synthesize
from tests.voice import wer

if TYPE_CHECKING:
    from collections.abc import Callable

    from playwright.sync_api import Page

    from tests.conftest import Running

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = os.environ.get("VOXWIRE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SENTENCE = "Please turn on the lights in the kitchen."

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("VOXWIRE_SKIP_BROWSER") == "1", reason="VOXWIRE_SKIP_BROWSER=1"
    ),
    tools.needs(CHROMIUM, package="chromium", what="the browser page tests"),
]


def fake_mic_wav(path: Path, sentences: tuple[str, ...], tail_s: float) -> None:
    """Piper speech at 48 kHz (a sound card's rate), lead silence, then ``tail_s`` of quiet."""
    speech = synthesize(sentences, gap_s=1.5, lead_s=1.0)
    pcm = StreamResampler(16000, 48000).feed(speech.samples, last=True)
    pcm = np.concatenate([pcm, np.zeros(int(tail_s * 48000), np.int16)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.astype("<i2").tobytes())


def drive_page(
    url: str,
    wav: Path,
    shot: Path,
    until: str,
    act: Callable[[Page], None] | None = None,
    turns: str = "vad",
) -> dict[str, Any]:
    """Open the page, click talk (then ``act``), wait for ``until`` (JS over ``stats``) and
    for the reply to play out; returns the page's state."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `apt install chromium` (or VOXWIRE_CHROMIUM)")
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            context = browser.new_context(permissions=["microphone"])
            page = context.new_page()
            console_errors: list[str] = []
            page.on(
                "console", lambda m: console_errors.append(m.text) if m.type == "error" else None
            )
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(url)
            page.select_option("#turns", turns)
            page.click("#talk")
            if act is not None:
                act(page)
            page.wait_for_function(f"(stats => {until})(window.voxwire.stats)", timeout=60_000)
            # Let the reply play out in the page's worklet.
            page.wait_for_function(
                "['listening', 'idle-ptt'].includes(window.voxwire.stats.state)"
                " && window.voxwire.stats.playedVoiced > 0",
                timeout=20_000,
            )
            page.wait_for_timeout(500)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            state: dict[str, Any] = page.evaluate(
                "JSON.parse(JSON.stringify(window.voxwire.stats))"
            )
            state["log_user"] = page.locator("#log li.user .text").all_inner_texts()
            state["log_assistant"] = page.locator("#log li.assistant .text").all_inner_texts()
            state["latency_rows"] = page.locator("#latency tbody tr").count()
            state["latency_last"] = page.locator("#latency-last").inner_text()
            state["state_attr"] = page.locator("#state").get_attribute("data-state")
            state["console_errors"] = console_errors
            page.click("#talk")  # hang up: the page deletes its session
            page.wait_for_function("window.voxwire.stats.state === 'idle'", timeout=10_000)
            return state
        finally:
            browser.close()


async def test_page_talks_and_plays_the_reply(server: Running, tmp_path: Path) -> None:
    wav = tmp_path / "mic.wav"
    fake_mic_wav(wav, (SENTENCE,), tail_s=8.0)
    shot = ARTIFACTS / "browser-talk.png"
    state = await trio.to_thread.run_sync(
        drive_page, server.url + "/", wav, shot, "stats.replies.some(r => r.status === 'completed')"
    )

    assert state["console_errors"] == [], state["console_errors"]
    assert state["errors"] == []
    # The final transcript reached the page, on the page.
    assert state["finals"], state
    assert wer(SENTENCE, state["finals"][0]) <= 0.2, state["finals"]
    assert any(wer(SENTENCE, t) <= 0.2 for t in state["log_user"]), state["log_user"]
    # The echo's text and audio came back: voiced samples on the stream and out of the worklet.
    assert wer(SENTENCE, state["replies"][0]["text"]) <= 0.2, state["replies"]
    assert state["log_assistant"][0] == state["replies"][0]["text"]
    rate = state["streamRate"]
    assert rate in (44100, 48000, 24000), rate
    assert state["rxVoiced"] > 0.8 * rate, state  # the reply lasts well over a second
    assert state["playedVoiced"] > 0.8 * rate, state
    # Latency readout from response.done.
    assert state["latency_rows"] == 1
    assert state["latencies"][0]["first_audio_byte_ms"] > 0
    assert "ms after you stopped talking" in state["latency_last"]
    assert state["uploadedChunks"] > 30  # ~100 ms chunks for the seconds the mic ran
    assert state["droppedChunks"] == 0
    assert shot.stat().st_size > 10_000
    # The page hung up (its Stop awaits the DELETE): the session is gone on the server.
    assert len(server.registry) == 0


async def test_barge_in_silences_the_page(server: Running, tmp_path: Path) -> None:
    """Speaking over the echo cuts it: no reply sound plays soon after speech starts."""
    wav = tmp_path / "mic.wav"
    first = "Tell me everything you know about the history of the Roman empire."
    second = "Stop, that is enough."
    # The second sentence starts 3 s after the first ends: the echo (~0.7 s after the end
    # of speech on a quiet machine, ~3.5 s long) is still playing then even when Chromium
    # and the models share a slow CPU (CI once took over 1.8 s to start it).
    speech = synthesize((first, second), gap_s=3.0, lead_s=1.0)
    pcm = StreamResampler(16000, 48000).feed(speech.samples, last=True)
    pcm = np.concatenate([pcm, np.zeros(8 * 48000, np.int16)])
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.astype("<i2").tobytes())
    state = await trio.to_thread.run_sync(
        drive_page,
        server.url + "/",
        wav,
        ARTIFACTS / "browser-barge-in.png",
        "stats.replies.length >= 2",
    )
    assert state["console_errors"] == [], state["console_errors"]
    statuses = [r["status"] for r in state["replies"]]
    assert statuses == ["cancelled", "completed"], (state["replies"], state["marks"])
    assert state["flushed"] > 0  # the page dropped its buffered reply at speech_started

    marks = state["marks"]
    starts = [m["t"] for m in marks if m["type"] == "input_audio_buffer.speech_started"]
    created = [m["t"] for m in marks if m["type"] == "response.created"]
    assert len(starts) == 2, marks
    assert len(created) == 2, marks
    barge, second_reply = starts[1], created[1]
    spans = state["spans"]
    # The first reply was audible before the user cut in...
    assert any(s < barge and e > created[0] for s, e in spans), (spans, marks)
    # ...and no reply sound played from shortly after speech_started until the next reply.
    late = [(s, e) for s, e in spans if e > barge + 0.15 and s < second_reply]
    assert late == [], (late, barge, second_reply)


async def test_push_to_talk_in_the_page(server: Running, tmp_path: Path) -> None:
    """Turns set to push-to-talk: holding the button sends audio, releasing commits it."""
    wav = tmp_path / "mic.wav"
    fake_mic_wav(wav, (SENTENCE,), tail_s=8.0)

    def hold_while_speaking(page: Page) -> None:
        page.wait_for_function("!document.getElementById('ptt').hidden")
        page.locator("#ptt").hover()
        page.mouse.down()
        page.wait_for_timeout(4500)  # the 1 s lead, the sentence, and a little quiet
        page.mouse.up()

    state = await trio.to_thread.run_sync(
        partial(
            drive_page,
            server.url + "/",
            wav,
            ARTIFACTS / "browser-ptt.png",
            "stats.replies.length >= 1",
            hold_while_speaking,
            "ptt",
        )
    )
    assert state["console_errors"] == [], state["console_errors"]
    assert state["errors"] == []
    assert len(state["finals"]) == 1, state["finals"]
    assert wer(SENTENCE, state["finals"][0]) <= 0.2, state["finals"]
    assert [r["status"] for r in state["replies"]] == ["completed"]
    assert state["rxVoiced"] > 0.8 * state["streamRate"]
    # Only what was captured while held went up: the tail of quiet after release did not.
    assert 35 <= state["uploadedChunks"] <= 50, state["uploadedChunks"]


async def test_the_page_resumes_the_stream_after_a_drop(server: Running, tmp_path: Path) -> None:
    """The stream's connection is cut while the echo plays: the page reconnects with
    ?from_ms= and the server resumes it (no gap), and the reply still plays."""
    wav = tmp_path / "mic.wav"
    fake_mic_wav(wav, (SENTENCE,), tail_s=8.0)

    def cut_the_stream_mid_reply(page: Page) -> None:
        page.wait_for_function(
            "window.voxwire.stats.marks.some(m => m.type === 'response.created')"
            " && window.voxwire.stats.rxVoiced > 4000",
            timeout=30_000,
        )
        page.evaluate("window.voxwire.conversation.streamAbort.abort()")

    state = await trio.to_thread.run_sync(
        partial(
            drive_page,
            server.url + "/",
            wav,
            ARTIFACTS / "browser-resume.png",
            "stats.replies.some(r => r.status === 'completed')",
            cut_the_stream_mid_reply,
        )
    )
    assert state["console_errors"] == [], state["console_errors"]
    assert state["streamResumes"] == 1, state
    assert state["streamGaps"] == 0, state
    assert wer(SENTENCE, state["finals"][0]) <= 0.2
    assert state["rxVoiced"] > 0.8 * state["streamRate"]
