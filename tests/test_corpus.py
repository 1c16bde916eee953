"""The speech corpus renders: every voice, the noise, the hesitation sentence (fast, cached)."""

from __future__ import annotations

import numpy as np
import pytest

from tests import corpus, tools


def _need_espeak() -> None:
    tools.require("espeak-ng", what="the espeak-ng voices")


@pytest.mark.parametrize("name", corpus.VOICE_NAMES)
def test_every_voice_renders_a_conversational_sentence(name: str) -> None:
    if corpus.voice(name).engine == "espeak":
        _need_espeak()
    u = corpus.utterance(corpus.CONVERSATIONAL[0], name)
    assert u.samples.dtype == np.int16
    assert u.voice == name
    assert u.text == corpus.CONVERSATIONAL[0]
    assert 0 < u.onset < u.offset <= len(u.samples)
    assert 4.5 < u.speech_s < 9.0  # a several-clause utterance, not a command
    assert corpus.utterance(u.text, name).samples.tobytes() == u.samples.tobytes()  # cached


def test_noise_is_seeded_and_at_the_asked_snr() -> None:
    u = corpus.utterance(corpus.COMMANDS[0], "piper")
    a, b = u.noisy(22.0, seed=3), u.noisy(22.0, seed=3)
    assert a.samples.tobytes() == b.samples.tobytes()
    assert a.samples.tobytes() != u.noisy(22.0, seed=4).samples.tobytes()
    added = a.samples.astype(np.float64) - u.samples
    snr = 20 * np.log10(corpus.speech_rms(u.samples, u.onset, u.offset) / added.std())
    assert abs(snr - 22.0) < 0.5
    padded = a.padded(0.3, 0.5)
    assert padded.offset - padded.onset == u.offset - u.onset
    assert np.abs(padded.samples[:4000].astype(np.int32)).max() > 0  # the noise goes on


def test_hesitation_has_a_silent_pause_between_the_fragments() -> None:
    h = corpus.hesitation("piper", pause_s=0.8)
    assert h.pause is not None
    start, end = h.pause
    assert end - start == int(0.8 * corpus.RATE)
    assert h.onset < start < end < h.offset
    assert not np.any(h.samples[start:end])
    assert np.abs(h.samples[start - 800 : start].astype(np.int32)).max() > corpus.VOICED_LEVEL
    assert np.abs(h.samples[end : end + 800].astype(np.int32)).max() > corpus.VOICED_LEVEL
    assert h.text == " ".join(corpus.HESITATION)


def test_word_errors_normalise_numbers_and_case() -> None:
    assert corpus.word_errors("Set a timer for ten minutes.", "set a timer for 10 minutes") == (
        0,
        6,
    )
    assert corpus.word_errors("a table for four people", "a table for for people") == (1, 5)
