"""Sentence cutting for TTS, and the partial-transcript delta rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app._pipeline import first_sentence, new_partial_words
from models import SentenceCutter


def cut_all(deltas: list[str]) -> list[str]:
    cutter = SentenceCutter()
    out: list[str] = []
    for d in deltas:
        out += cutter.feed(d)
    return out + cutter.flush()


def test_cuts_at_sentence_ends_followed_by_space() -> None:
    text = "Hello there! How are you? I am fine. Thanks"
    assert cut_all([text]) == ["Hello there!", "How are you?", "I am fine.", "Thanks"]


def test_a_sentence_is_released_as_soon_as_the_next_word_starts() -> None:
    cutter = SentenceCutter()
    assert cutter.feed("It is sunny.") == []  # "." might be "3.5" or "Dr." still
    assert cutter.feed(" Tomorrow") == ["It is sunny."]
    assert cutter.flush() == ["Tomorrow"]


def test_abbreviations_initials_and_numbers_do_not_cut() -> None:
    text = "Dr. Smith met J. R. Tolkien at 3.5 p.m. today, e.g. in Oxford. Then left."
    assert cut_all([text]) == [
        "Dr. Smith met J. R. Tolkien at 3.5 p.m. today, e.g. in Oxford.",
        "Then left.",
    ]


def test_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert cut_all(['He said "stop!" Then (quietly.) we went.']) == [
        'He said "stop!"',
        "Then (quietly.)",
        "we went.",
    ]


@given(st.data())
def test_any_split_into_deltas_gives_the_same_sentences(data: st.DataObject) -> None:
    text = "Sure. The answer is 42! Dr. Who? It costs 3.50 dollars; see you.\nBye now"
    cuts = sorted(data.draw(st.sets(st.integers(1, len(text) - 1), max_size=20)))
    deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert cut_all(deltas) == cut_all([text])


def test_first_sentence_matches_what_the_response_side_cuts() -> None:
    assert first_sentence("Turn it off. Now.") == "Turn it off."
    assert first_sentence("no punctuation") == "no punctuation"
    assert first_sentence("") == ""


def test_partial_words_only_extend_what_was_emitted() -> None:
    assert new_partial_words([], "Please turn on the...") == ["Please", "turn", "on", "the"]
    assert new_partial_words(["Please", "turn"], "please turn, on the kitchen") == [
        "on",
        "the",
        "kitchen",
    ]
    # a revision of words already sent: wait for the final instead
    assert new_partial_words(["Please", "turn"], "Peas turn on") == []
    assert new_partial_words(["Please", "turn"], "Please turn") == []
