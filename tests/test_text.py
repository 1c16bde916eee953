"""Sentence and clause cutting for TTS, and the partial-transcript delta rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.stages.listen import new_partial_words
from app.stages.respond import first_clause
from models import SentenceCutter
from models.sentences import ClauseCutter, words_after


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


def test_first_clause_matches_what_the_response_side_cuts() -> None:
    assert first_clause("Turn it off. Now.") == "Turn it off."
    assert first_clause("Sure thing, turning it off now.") == "Sure thing,"
    assert first_clause("no punctuation") == "no punctuation"
    assert first_clause("") == ""


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


# --- ClauseCutter: the first clause early, then sentences ----------------------------------


def clauses(deltas: list[str] | str, **limits: int) -> list[str]:
    cutter = ClauseCutter(**limits)
    out: list[str] = []
    for d in [deltas] if isinstance(deltas, str) else deltas:
        out += cutter.feed(d)
    return out + cutter.flush()


@pytest.mark.parametrize(
    ("reply", "pieces"),
    [
        (
            "Hello there, how are you doing today? I am fine.",
            ["Hello there,", "how are you doing today?", "I am fine."],
        ),
        # one word before the comma is a lead-in, not a clause: on to the sentence end
        ("Well, I think so. Yes.", ["Well, I think so.", "Yes."]),
        # a whole sentence is a piece however short
        ("Yes. I can do that for you, of course.", ["Yes.", "I can do that for you, of course."]),
        (
            "Sure! Turning off the kitchen lights now.",
            ["Sure!", "Turning off the kitchen lights now."],
        ),
        # after the first piece, commas do not cut: whole sentences
        (
            "Of course, I can help with that. First, open the app, then tap settings. Done.",
            [
                "Of course,",
                "I can help with that.",
                "First, open the app, then tap settings.",
                "Done.",
            ],
        ),
        # no comma: cut before the conjunction once the clause has six words
        (
            "I was thinking about the weather this morning and it looked like rain, so I went.",
            [
                "I was thinking about the weather this morning",
                "and it looked like rain, so I went.",
            ],
        ),
        ("It is raining and cold. Take a coat.", ["It is raining and cold.", "Take a coat."]),
        (
            "You should probably leave a little earlier because the traffic is bad.",
            ["You should probably leave a little earlier", "because the traffic is bad."],
        ),
        # "so." ends the clause it is in; it starts no new one
        (
            "I guess I have always thought about it so. Right.",
            [
                "I guess I have always thought about it so.",
                "Right.",
            ],
        ),
        # dashes between spaces are clause marks; a hyphen inside a word is not
        (
            "I was going to say — never mind. Sorry.",
            ["I was going to say —", "never mind.", "Sorry."],
        ),
        ("Let me check - one moment.", ["Let me check -", "one moment."]),
        ("A well-known long-running show is on.", ["A well-known long-running show is on."]),
        # in the first piece ";" and ":" are clause marks too, with the same two-word minimum
        ("Note: this is important. Right.", ["Note: this is important.", "Right."]),
        ("Here is the plan: we leave at noon.", ["Here is the plan:", "we leave at noon."]),
        # numbers, abbreviations and initials stay whole
        (
            "It costs 3,000 dollars, roughly. That is 3.5 times more.",
            ["It costs 3,000 dollars,", "roughly.", "That is 3.5 times more."],
        ),
        (
            "Dr. Smith said the meeting is at 3 p.m. tomorrow, okay?",
            ["Dr. Smith said the meeting is at 3 p.m. tomorrow,", "okay?"],
        ),
        # closing quotes and brackets stay with the mark before them
        ('She said "yes," and left.', ['She said "yes,"', "and left."]),
        # no punctuation and no conjunction: the budget of twelve words
        (
            "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
            [
                "one two three four five six seven eight nine ten eleven twelve",
                "thirteen fourteen",
            ],
        ),
        ("Paragraph one\n\nParagraph two", ["Paragraph one", "Paragraph two"]),
        # a single newline is a line wrap, not an end (as in SentenceCutter)
        ("Line one goes\non here. Next", ["Line one goes\non here.", "Next"]),
        ("Okay. A line\nwrapped. Next", ["Okay.", "A line\nwrapped.", "Next"]),
        ("", []),
        ("   ", []),
        ("Hi", ["Hi"]),
    ],
)
def test_clause_cutter_pieces(reply: str, pieces: list[str]) -> None:
    assert clauses(reply) == pieces


def test_the_first_clause_is_released_as_soon_as_the_next_word_starts() -> None:
    cutter = ClauseCutter()
    assert cutter.feed("Hello th") == []
    assert cutter.feed("ere,") == []  # "there," is complete only once whitespace follows
    assert cutter.feed(" h") == ["Hello there,"]
    assert cutter.feed("ow are you, friend? I") == ["how are you, friend?"]
    assert cutter.flush() == ["I"]
    assert cutter.flush() == []


def test_a_newline_ends_a_piece_only_once_more_whitespace_follows() -> None:
    cutter = ClauseCutter()
    assert cutter.feed("Good morning\n") == []  # a wrap, or a paragraph break?
    assert cutter.feed("\n") == ["Good morning"]
    cutter = ClauseCutter()
    assert cutter.feed("Good morning\n") == []
    assert cutter.feed("everyone") == []
    assert cutter.flush() == ["Good morning\neveryone"]


def test_a_conjunction_must_be_a_whole_word() -> None:
    cutter = ClauseCutter()
    assert cutter.feed("I went to the shop this morning an") == []  # "an", "and", "android"?
    assert cutter.feed("droid") == []
    assert cutter.feed(" phone") == []
    cutter = ClauseCutter()
    assert cutter.feed("I went to the shop this morning an") == []
    assert cutter.feed("d ") == ["I went to the shop this morning"]
    assert cutter.flush() == ["and"]


def test_a_long_sentence_is_cut_at_a_clause_after_max_words() -> None:
    long = " ".join(f"w{i}" for i in range(8))
    reply = f"Okay. {long}, more words, {long} and {long}. End."
    assert clauses(reply, max_words=10) == [
        "Okay.",
        f"{long}, more words,",  # 10 words reached at "words,"
        f"{long} and {long}.",  # a conjunction after 8 words: not yet
        "End.",
    ]
    assert clauses(reply, max_words=8) == [
        "Okay.",
        f"{long},",
        f"more words, {long}",
        f"and {long}.",
        "End.",
    ]


def test_a_sentence_with_no_clause_mark_is_cut_at_twice_max_words() -> None:
    words = [f"w{i}" for i in range(25)]
    assert clauses("Okay. " + " ".join(words), max_words=10) == [
        "Okay.",
        " ".join(words[:20]),
        " ".join(words[20:]),
    ]


@pytest.mark.parametrize(
    "limits",
    [
        {"min_first_words": 0},
        {"conjunction_after_words": 0},
        {"max_first_words": 0},
        {"max_words": -1},
    ],
)
def test_word_limits_must_be_positive(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ClauseCutter(**limits)


# Tokens that exercise every rule: clause marks, dashes, numbers, abbreviations, initials,
# quotes and brackets, conjunctions (also as parts of longer words), ellipses.
TOKENS = st.sampled_from(
    [
        *"Hello there how are you I am fine it the a was so".split(),
        *"and but or because which that when while if android sofa thatch".split(),
        *"So, And well, Well, okay? yes; note: stop! fine. Right. Dr. e.g. p.m. J.".split(),
        *'3,000 3.5 42! 3.50. etc. "stop!" (quietly.) "yes," yes," well... hm?!'.split(),
        "-",
        "—",
        "–",  # noqa: RUF001 - the en dash is the point
        "say—",
        "well-known",
        "!",
        ".",
        ",",
    ]
)
GAPS = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", " \n ", "\t", "\n "])


@st.composite
def replies(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(TOKENS, max_size=60))
    gaps = draw(st.lists(GAPS, min_size=len(tokens) + 1, max_size=len(tokens) + 1))
    return "".join(g + t for g, t in zip(gaps, [*tokens, ""], strict=True))


def split_at(text: str, cuts: set[int]) -> list[str]:
    points = sorted(c for c in cuts if 0 < c < len(text))
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


LIMITS = st.fixed_dictionaries(
    {
        "min_first_words": st.integers(1, 4),
        "conjunction_after_words": st.integers(1, 8),
        "max_first_words": st.integers(1, 14),
        "max_words": st.integers(1, 12),
    }
)


@settings(max_examples=400, deadline=None)
@given(replies() | st.text(max_size=200), st.sets(st.integers(0, 400), max_size=40), LIMITS)
def test_any_split_into_deltas_gives_the_same_clauses(
    text: str, cuts: set[int], limits: dict[str, int]
) -> None:
    whole = clauses(text, **limits)
    assert clauses(split_at(text, cuts), **limits) == whole
    assert clauses(list(text), **limits) == whole  # one character at a time
    assert " ".join(whole).split() == text.split()
    assert all(piece and piece == piece.strip() for piece in whole)


@settings(max_examples=300, deadline=None)
@given(replies(), LIMITS)
def test_no_piece_is_longer_than_its_budget(text: str, limits: dict[str, int]) -> None:
    def words(piece: str) -> int:
        return sum(any(c.isalnum() for c in token) for token in piece.split())

    pieces = clauses(text, **limits)
    if pieces:
        assert words(pieces[0]) <= limits["max_first_words"]
    assert all(words(piece) <= 2 * limits["max_words"] for piece in pieces[1:])


@settings(max_examples=300, deadline=None)
@given(replies().map(lambda text: " ".join(text.split())))
def test_after_the_first_piece_the_pieces_are_sentences(text: str) -> None:
    pieces = clauses(text, max_words=1000)
    assert cut_all([" ".join(pieces[1:])]) == pieces[1:]


def test_windowed_partials_line_up_on_the_last_words_sent() -> None:
    from app.stages.listen import windowed_partial_words

    sent = ["Hi,", "I", "was", "wondering"]
    # the window starts mid-utterance (its first word may be garbled)
    assert windowed_partial_words(sent, "ink I was wondering if you could") == [
        "if",
        "you",
        "could",
    ]
    assert windowed_partial_words(sent, "I was wondering, if you") == ["if", "you"]
    # no anchor: nothing (a revision waits for the final transcript)
    assert windowed_partial_words(sent, "I was thinking if you") == []
    assert windowed_partial_words([], "Hello there") == ["Hello", "there"]
    # the latest match wins: the window's end is the newest audio
    assert windowed_partial_words(["the", "list"], "the list and the list too") == ["too"]


# -- what is left to say of the final's first clause once the partial's was spoken ------


@pytest.mark.parametrize(
    ("said", "piece", "left"),
    [
        ("Hi, I was wondering", "Hi, I was wondering", ""),  # the same clause
        ("I think I left my number at the", "I think I left my umbrella at the", ""),
        ("The printer in the study keep running out", "The printer keeps running out", ""),
        ("I am not sure", "I'm not sure which room it was to", "which room it was to"),
        ("I would like to", "I would like to book a table for", "book a table for"),
        ("could you", "Could you, please,", "please,"),
    ],
)
def test_words_after_the_spoken_clause(said: str, piece: str, left: str) -> None:
    assert words_after(said, piece) == left


WORDS = "a the cat sat on mat, and then. went home".split()


@given(words=st.lists(st.sampled_from(WORDS), max_size=12), k=st.integers(0, 12))
def test_words_after_a_spoken_prefix_are_the_rest(words: list[str], k: int) -> None:
    k = min(k, len(words))
    assert words_after(" ".join(words[:k]), " ".join(words)) == " ".join(words[k:])
