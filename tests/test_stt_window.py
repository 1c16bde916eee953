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
from tests import corpus
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


def test_a_batch_hears_what_single_decodes_do() -> None:
    """One ``generate`` for several utterances gives the batch-1 texts.

    Utterances of one bucket come out exactly as batch-1 decodes (bench/batch.py: 240 of
    240). An utterance padded to a longer one's window hears more trailing silence and
    now and then a word changes (bench/batch.py: 14-33 of 240 texts in random batches of
    2-8, corpus WER 10.4% batch-1 against 10.4-10.8% batched): there the bound is WER.
    """
    stt = WhisperStt(threads=1, workers=1)
    texts = (*corpus.COMMANDS[:6], corpus.CONVERSATIONAL[1])
    utts = [corpus.utterance(t, "piper").padded(0.3, 0.5) for t in texts]
    single = [stt.transcribe(u.samples) for u in utts]

    by_bucket: dict[int, list[int]] = {}
    for i, u in enumerate(utts):
        by_bucket.setdefault(window_frames(len(u.samples)), []).append(i)
    same = max(by_bucket.values(), key=len)
    assert len(same) >= 3, by_bucket  # the commands share a bucket or two
    assert stt.transcribe_batch([utts[i].samples for i in same]) == [single[i] for i in same]

    # every bucket at once, with the edge cases: nothing, silence, too long for a sized
    # window (the 30 s path, one by one; mostly silence, so that it decodes fast)
    long = np.concatenate([utts[0].samples, np.zeros(30 * 16000 - len(utts[0].samples), np.int16)])
    batch = [u.samples for u in utts] + [np.zeros(0, np.int16), np.zeros(16000, np.int16), long]
    got = stt.transcribe_batch(batch)
    assert len(got) == len(batch)
    assert got[-3:] == ["", "", stt.transcribe(long)]
    assert wer(utts[0].text, got[-1]) <= 0.2, got[-1]
    # (Piper's renders vary a little from machine to machine: bounds, not exact texts)
    errors = [corpus.word_errors(u.text, t) for u, t in zip(utts, single, strict=True)]
    batched = [corpus.word_errors(u.text, t) for u, t in zip(utts, got[: len(utts)], strict=True)]
    for (one, _), (many, _), a, b in zip(errors, batched, single, got, strict=False):
        assert many <= one + 2, (a, b)
    words = sum(n for _, n in errors)
    assert sum(e for e, _ in batched) <= sum(e for e, _ in errors) + 0.05 * words, (single, got)
    assert stt.transcribe_batch([]) == []
