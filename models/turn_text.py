"""Words-based end-of-turn and backchannel rules for a (speculative) transcript (sans-IO).

At a pause the acoustic turn detector knows how the user sounded; the words say whether the
clause is grammatically open. ``text_turn`` judges the speculative Whisper (tiny.en)
transcript of the speech so far:

* **unfinished** when it ends with a comma, dash, colon, semicolon or ellipsis (Whisper
  writes a trailing "..." on cut-off speech), or on a word that needs more after it: an
  article, conjunction, possessive determiner, filler, preposition, or an auxiliary/modal
  or subject pronoun still waiting for its verb ("My name is.", "Well, I"). Whisper often
  ends a cut-off clause with a period anyway ("I want to book a table for."), so such a
  word outranks the period;
* **finished** when it ends with ``.``, ``!`` or ``?`` after any other word;
* **unknown** otherwise: no final punctuation, or no words at all.

The continuation words come in two strengths. *Strong* ones ("the", "and", "my", "um") never
end a finished sentence, whatever the punctuation. *Weak* ones (prepositions, auxiliaries,
"so", "if", ...) end plenty of finished questions ("Where are you from?", "Do you know what
time it is?"), so a ``?`` or ``!`` (intonation Whisper heard) outranks them, but a ``.``
(Whisper's default) does not. A few idioms end in one of these words and are complete
anyway ("I think so.", "an hour or so.", "for a while."). An auxiliary right after a
subject pronoun is a short answer ("Yes I can.", "I know it is."), not a dangling verb, and
a pronoun right after an auxiliary is an inversion ("So do I."), not a dangling subject.

``is_backchannel`` tells a listener's acknowledgement ("mm-hmm", "yeah, okay") from a
real interruption; ``has_words`` drops Whisper's annotations of non-speech
("[BLANK_AUDIO]", "(coughs)"). Hallucinations that are words ("you", "Thank you.") are words
here: telling them apart is the acoustic side's job.
"""

from __future__ import annotations

import enum
import re

__all__ = ["TextTurn", "has_words", "is_backchannel", "text_turn"]


class TextTurn(enum.Enum):
    """What the words of a transcript say about the turn."""

    FINISHED = "finished"
    UNFINISHED = "unfinished"
    UNKNOWN = "unknown"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words after which the clause cannot be over, whatever the punctuation says.
_STRONG = _words(
    """
    a an the every very
    and but or nor because cause cos cuz coz although whereas whether than unless while
    my your our their its
    um umm uh uhh uhm er erm
    """
)
_AUXILIARIES = _words("is are was were am can could would should will shall may might must")
# Words that leave a statement open but may end a question: "What is it for?"
_WEAK = _AUXILIARIES | _words(
    """
    to for of with from at about into onto as like just be gonna wanna gotta
    if so when which whose whom since until
    """
)
# "I can.", "Yes it is.": the verb is understood, the answer is complete
_SUBJECTS = _words("i you he she it we they there this that who")
# A subject pronoun waits for its verb ("Well, I..."), unless the verb came first: "So do I."
_SUBJECTS_ONLY = _words("i we they he she")
_INVERTING = _AUXILIARIES | _words("do does did have has had")
# idioms that end on a continuation word and are complete anyway
_IDIOMS = frozenset(
    tuple(phrase.split())
    for phrase in [
        "think so",
        "hope so",
        "guess so",
        "believe so",
        "suppose so",
        "said so",
        "afraid so",
        "or so",
        "even so",
        "if so",
        "a while",
        "love to",
        "used to",
        "oh my",
    ]
)

# single words and phrases a listener says to acknowledge, not to take the turn
_BACKCHANNELS = frozenset(
    tuple(phrase.split())
    for phrase in [
        *"""yeah yea yes yep yup ya yah okay ok okey kay right alright sure mhm mmhm mhmm
        mm mmm hm hmm hmmm oh ooh ah aha wow cool nice great exactly true totally
        absolutely indeed gotcha""".split(),
        "uh huh",
        "mm hmm",
        "mm hm",
        "um hmm",
        "uh hmm",
        "i see",
        "got it",
        "i got it",
        "all right",
        "i know",
        "that's right",
        "that's true",
        "of course",
        "sounds good",
        "fair enough",
        "makes sense",
        "that makes sense",
    ]
)
# hyphenated, they are one sound; "uh-uh" and "mm-mm" (no!) are not acknowledgements
_HYPHENATED_BACKCHANNELS = _words("mm-hmm mm-hm m-hm mhm-hmm uh-huh um-hmm uh-hmm um-hum uh-hum")
_MAX_PHRASE = max(len(phrase) for phrase in _BACKCHANNELS)

# Whisper's annotations of non-speech; one cut off by the end of the window counts too
_ANNOTATION = re.compile(r"\[[^\]]*(?:\]|\Z)|\([^)]*(?:\)|\Z)")
_CLOSERS = "\"'”’»)]}"  # noqa: RUF001 - the typographic closing quotes are the point
_OPEN_ENDS = ("...", "…", ",", "-", "–", "—", ":", ";")  # noqa: RUF001
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits, "don't" whole
_TOKEN = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")  # as _WORD, and "mm-hmm" whole


def _clean(transcript: str) -> str:
    """Without annotations, typographic apostrophes or the closing quotes at the end."""
    text = _ANNOTATION.sub(" ", transcript).replace("’", "'")  # noqa: RUF001
    return text.strip().rstrip(_CLOSERS + " \t\r\n\f\v")


def has_words(transcript: str) -> bool:
    """Whether any letter or digit is left once Whisper's annotations are removed.

    "[BLANK_AUDIO]", "(coughs)", "[Music]", "♪" and "" have none; "you" and "Thank you."
    (Whisper's favourite hallucinations on noise) do, and count as words.
    """
    return any(c.isalnum() for c in _ANNOTATION.sub(" ", transcript))


def text_turn(transcript: str) -> TextTurn:
    """Whether the words so far end the user's turn (the rules are in the module doc)."""
    text = _clean(transcript)
    words = _WORD.findall(text)
    if not words:
        return TextTurn.UNKNOWN
    if text.endswith(_OPEN_ENDS):
        return TextTurn.UNFINISHED
    ends = text.rstrip(".!?") != text
    question = text.endswith(("?", "!"))
    last = words[-1].lower()
    pair = (words[-2].lower(), last) if len(words) > 1 else ("", last)
    letter = words[-1] == "A" and len(words) > 1  # "Plan A.", not "I want a."
    if pair not in _IDIOMS and not letter:
        if last in _STRONG:
            return TextTurn.UNFINISHED
        answer = last in _AUXILIARIES and pair[0] in _SUBJECTS
        dangling = last in _SUBJECTS_ONLY and pair[0] not in _INVERTING
        if (dangling or (last in _WEAK and not answer)) and not question:
            return TextTurn.UNFINISHED
    return TextTurn.FINISHED if ends else TextTurn.UNKNOWN


def is_backchannel(transcript: str) -> bool:
    """Whether the whole transcript is only a listener's acknowledgement.

    "mm-hmm", "Yeah.", "Oh, okay.", "yeah yeah", "I see." are; "yes please turn it off",
    "No.", "Uh-uh." and an empty transcript are not. Case and punctuation do not matter.
    """
    tokens = _TOKEN.findall(_clean(transcript).lower())
    parts: list[tuple[str, ...]] = []
    for token in tokens:
        if "-" in token:
            if token not in _HYPHENATED_BACKCHANNELS:
                return False
            parts.append(("mm", "hmm"))  # any known acknowledgement, as one unit
        else:
            parts.append((token,))
    words = [word for part in parts for word in part]
    # can the words be read as a run of acknowledgements? (a small exact cover)
    covered = [True] + [False] * len(words)
    for end in range(1, len(words) + 1):
        covered[end] = any(
            covered[end - n] and tuple(words[end - n : end]) in _BACKCHANNELS
            for n in range(1, min(_MAX_PHRASE, end) + 1)
        )
    return bool(words) and covered[-1]
