"""Whisper on sized windows: the window sizes, the loop trimming, and real decodes."""

from __future__ import annotations

import numpy as np

from models.stt import (
    BUCKETS,
    FULL_FRAMES,
    HOP,
    MARGIN_FRAMES,
    WhisperStt,
    trim_repeat,
    window_frames,
)
from tests.speech import synthesize
from tests.voice import wer


def test_windows_hold_the_audio_and_a_margin_from_few_shapes() -> None:
    for n in range(0, 25 * 16000, 997):
        frames = window_frames(n)
        assert frames in BUCKETS
        assert frames * HOP >= n + MARGIN_FRAMES * HOP or frames == FULL_FRAMES


def test_a_restart_at_the_end_is_trimmed_and_speech_is_kept() -> None:
    assert trim_repeat("Turn it off. Turn it") == "Turn it off."
    assert trim_repeat("A b c. A b c. A b c.") == "A b c."
    assert trim_repeat("No, no.") == "No, no."
    assert trim_repeat("I think so, and so do you.") == "I think so, and so do you."


def test_the_sized_window_hears_what_the_full_one_does() -> None:
    stt = WhisperStt(threads=1, workers=1)
    text = (
        "Could you tell me what the weather will be like in the mountains this weekend, "
        "because we want to go hiking."
    )
    audio = synthesize((text,), gap_s=0.1, lead_s=0.3).samples
    sized = stt.transcribe(audio)
    full = stt.transcribe(audio, window="full")
    assert wer(text, sized) <= 0.15, sized
    assert wer(text, sized) <= wer(text, full) + 0.1, (sized, full)
    assert stt.transcribe(np.zeros(16000, np.int16)) == ""
