"""Words-based end-of-turn and backchannel rules, on the kind of text Whisper tiny.en writes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.turn_text import TextTurn, has_words, is_backchannel, text_turn

FINISHED = [
    "Turn on the kitchen lights.",
    "What's the weather like tomorrow?",
    "Set a timer for ten minutes.",
    "Thank you.",
    "No.",
    "Okay, that's great!",
    "I'd like a large coffee, please.",
    " Can you play some music?",  # Whisper's leading space
    'He said "stop."',
    "It's the one in the (blue) box.",
    "Call me at 5.",
    "I'm not sure what to do.",
    "Where are you from?",  # a stranded preposition ends a question
    "What is it for?",
    "Who are you talking to?",
    "Do you know what time it is?",
    "Can you?",
    "Yes I can.",  # an auxiliary after a pronoun is a short answer
    "Yes, it is.",
    "I know you are.",
    "I think so.",
    "I hope so!",
    "It takes an hour or so.",
    "Let's wait for a while.",
    "I'd love to.",
    "So do I.",  # a pronoun after its auxiliary
    "Neither can we.",
    "Shall we?",
    "Oh my.",
    "Let's go with plan A.",
    "Turn it on.",  # particles are not prepositions here
    "Hold on.",
    "Switch it off.",
    "I want to book a table for two.",
    "That's all. [BLANK_AUDIO]",
    "Goodbye.’",  # noqa: RUF001 - a typographic closing quote
]

UNFINISHED = [
    "I want to book a table for.",  # Whisper's period after a cut-off clause
    "I want to book a table for",
    "Can you tell me about the.",
    "Turn on the",
    "I was wondering if you could help me with.",
    "The kids could.",  # an auxiliary after a noun still waits for its verb
    "So what we.",
    "My name is.",
    "The problem is",
    "Add milk and.",
    "Add milk and",
    "I'd go, but.",
    "Because.",
    "I need it because",
    "Set an alarm for my.",
    "What about their?",  # a strong word outranks even a question mark
    "I want a.",
    "Thank you very.",
    "Um.",
    "um",
    "So, uh.",
    "I think, er",
    "Can you remind me to.",
    "It's gonna.",
    "The best option would be.",
    "Okay so I was thinking...",
    "Okay so I was thinking…",
    "Well, I",
    "Hello,",
    "So the thing is -",
    "I want to go — ",
    "I was going to say–",  # noqa: RUF001 - the en dash is the point
    "The options are:",
    "I want to [BLANK_AUDIO]",
    "Please turn off the (coughs)",
    '"I want the."',
]

UNKNOWN = [
    "",
    "   ",
    "[BLANK_AUDIO]",
    "(coughs)",
    "[Music]",
    "...",
    "♪♪",
    "Set a timer for ten minutes",  # no final punctuation, no open word
    "turn on the lights",
    "okay",
    "I think so",
]


@pytest.mark.parametrize("transcript", FINISHED)
def test_finished(transcript: str) -> None:
    assert text_turn(transcript) is TextTurn.FINISHED


@pytest.mark.parametrize("transcript", UNFINISHED)
def test_unfinished(transcript: str) -> None:
    assert text_turn(transcript) is TextTurn.UNFINISHED


@pytest.mark.parametrize("transcript", UNKNOWN)
def test_unknown(transcript: str) -> None:
    assert text_turn(transcript) is TextTurn.UNKNOWN


@pytest.mark.parametrize(
    "transcript", ["I WANT TO BOOK A TABLE FOR.", "i want to book a TABLE FOR"]
)
def test_case_does_not_matter(transcript: str) -> None:
    assert text_turn(transcript) is TextTurn.UNFINISHED


BACKCHANNELS = [
    "mm-hmm",
    "Mm-hmm.",
    "Mhm.",
    "Uh-huh.",
    "uh huh",
    "Yeah.",
    "Yes.",
    "Yep!",
    "Okay.",
    "OK",
    "Right.",
    "Sure.",
    "I see.",
    "Got it.",
    "Hmm.",
    "Mm.",
    "Yeah, yeah.",
    "Yeah yeah yeah.",
    "Oh, okay.",
    "Okay, okay, I see.",
    "All right.",
    "Yeah, that makes sense.",
    "Oh, right, of course.",
    " Mm-hmm. [BLANK_AUDIO]",
    "YEAH!",
]

NOT_BACKCHANNELS = [
    "",
    "[BLANK_AUDIO]",
    "(coughs)",
    "yes please turn it off",
    "Yeah, but what about tomorrow?",
    "Okay, thank you.",
    "No.",
    "Uh-uh.",  # "no"
    "Mm-mm.",  # "no"
    "Wait.",
    "Stop.",
    "Um.",  # a filler takes the turn
    "Uh,",
    "you",  # Whisper's favourite hallucination is not an acknowledgement either
    "Okay so",
    "I see what you mean, but no.",
    "Yes, I want the red one.",
]


@pytest.mark.parametrize("transcript", BACKCHANNELS)
def test_backchannel(transcript: str) -> None:
    assert is_backchannel(transcript)


@pytest.mark.parametrize("transcript", NOT_BACKCHANNELS)
def test_not_backchannel(transcript: str) -> None:
    assert not is_backchannel(transcript)


@pytest.mark.parametrize(
    ("transcript", "words"),
    [
        ("", False),
        ("   ", False),
        ("[BLANK_AUDIO]", False),
        (" [BLANK_AUDIO] ", False),
        ("(coughs)", False),
        ("[Music]", False),
        ("(upbeat music) [BLANK_AUDIO]", False),
        ("[BLANK_AUDIO", False),  # cut off by the end of the window
        ("♪ ♪", False),
        ("...", False),
        ("you", True),  # a hallucination, but words: not filtered here
        ("Thank you.", True),
        ("Mm-hmm.", True),
        ("[Music] Hello there.", True),
        ("5", True),
    ],
)
def test_has_words(transcript: str, words: bool) -> None:
    assert has_words(transcript) is words


@given(st.text())
def test_never_raises_and_always_answers(transcript: str) -> None:
    assert isinstance(text_turn(transcript), TextTurn)
    assert isinstance(is_backchannel(transcript), bool)
    assert isinstance(has_words(transcript), bool)
    if not has_words(transcript):
        assert text_turn(transcript) is TextTurn.UNKNOWN
        assert not is_backchannel(transcript)


NO_BRACKETS = st.text(st.characters(exclude_characters="[]()"))


@given(NO_BRACKETS, st.sampled_from(["the", "and", "my", "um", "because", "a"]), st.text(".!?"))
def test_a_strong_continuation_word_leaves_any_text_unfinished(
    text: str, word: str, punctuation: str
) -> None:
    assert text_turn(f"{text} {word}{punctuation}") is TextTurn.UNFINISHED


@given(NO_BRACKETS, st.sampled_from(["[BLANK_AUDIO]", "(coughs)", " [Music] "]))
def test_annotations_at_the_end_change_nothing(text: str, annotation: str) -> None:
    assert text_turn(text + annotation) is text_turn(text)


@given(
    st.lists(st.sampled_from(["yeah", "Okay", "mm-hmm", "I see", "uh huh", "RIGHT"]), min_size=1),
    st.lists(st.sampled_from([" ", ", ", ". ", "! ", "... ", " - "]), min_size=1),
)
def test_runs_of_acknowledgements_are_backchannels(words: list[str], gaps: list[str]) -> None:
    text = "".join(word + gaps[i % len(gaps)] for i, word in enumerate(words))
    assert is_backchannel(text)
    assert not is_backchannel(text + " please turn it off")
    assert not is_backchannel("Please, " + text)
