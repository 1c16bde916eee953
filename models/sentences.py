"""Cut a stream of text deltas into pieces for TTS (sans-IO).

TTS speaks whole sentences: cutting too early makes prosody choppy, cutting late delays the
first audio. A sentence ends at ``.``, ``!``, ``?`` (or ``;``/``:``/newline) followed by
whitespace, except after common abbreviations, initials and inside numbers ("3.5").
:class:`SentenceCutter` cuts sentences; :class:`ClauseCutter` cuts the first clause of a
reply early (the first audio is what the user waits for), then sentences.
"""

from __future__ import annotations

import difflib
import re

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m approx no fig mt ft".split()
)
_END = re.compile(r"[.!?;:\n]+[\"')\]]*(?=\s)")


class SentenceCutter:
    """Feed text deltas; get back every sentence completed so far.

    ``min_chars`` keeps very short fragments ("Hi.") attached to what follows only when they
    are shorter than it; the first sentence is never held back longer than needed.
    """

    def __init__(self, min_chars: int = 2) -> None:
        self._buffer = ""
        self._min_chars = min_chars

    def feed(self, delta: str) -> list[str]:
        """Add ``delta``; return complete sentences (stripped, in order)."""
        self._buffer += delta
        out: list[str] = []
        start = 0
        for match in _END.finditer(self._buffer):
            end = match.end()
            candidate = self._buffer[start:end].strip()
            if _is_abbreviation(candidate) or len(candidate) < self._min_chars:
                continue
            out.append(candidate)
            start = end
        self._buffer = self._buffer[start:]
        return out

    def flush(self) -> list[str]:
        """The text left at the end of the stream, if any."""
        rest = self._buffer.strip()
        self._buffer = ""
        return [rest] if rest else []


_CLOSERS = "\"')]"  # what may follow an end mark and still belong to it (as ``_END``)
_TOKEN = re.compile(r"\S+")
_FULL_STOP = re.compile(r"[.!?;:]+[\"')\]]*\Z")  # the token ends a sentence (as ``_END``)
# a comma, semicolon or colon ending a token, a token of dashes, or a dash ending a word
_CLAUSE = re.compile(r"[,;:]+[\"')\]]*\Z|\A[-–—]+\Z|[–—][\"')\]]*\Z")  # noqa: RUF001
_MIN_CHARS = 2  # SentenceCutter's default: a lone "!" is not a sentence

# Words that start a new clause. Cutting *before* one keeps it with the clause it introduces,
# where a speaker would pause. "for" and "as" are left out: mostly prepositions.
CONJUNCTIONS = frozenset(
    """and but or nor yet so because since although though unless until whereas while when
    whenever where wherever whether if which who whom whose that""".split()
)


class ClauseCutter:
    """Feed text deltas; get back pieces for TTS: the first clause early, then sentences.

    The user waits for the first audio, and TTS can only start on a finished piece, so the
    first piece is cut as early as it can be without sounding broken. Prosody stays natural
    because every cut is at a boundary where a speaker pauses anyway. The first piece ends at
    the earliest of:

    * a sentence end, with :class:`SentenceCutter`'s rules (``.``, ``!``, ``?``, a newline
      followed by whitespace; not after abbreviations, initials or inside "3.5"): a whole
      sentence, however short ("Yes."), is the most natural piece there is;
    * a comma, semicolon, colon or dash (a hyphen, en or em dash between spaces) followed by
      whitespace, once the piece has ``min_first_words`` words: "Hello there," is a clause
      TTS says well, while "Well," or "Note:" alone is a lead-in that sounds clipped if the
      next piece comes late (so here ``;`` and ``:`` are clause marks, not sentence ends);
    * *before* a conjunction ("and", "because", "which", ...; see :data:`CONJUNCTIONS`) once
      the piece has ``conjunction_after_words`` words: a long clause with no comma still has
      a natural break there, and the conjunction starts (and belongs to) the next piece;
    * ``max_first_words`` words: the latency budget when none of the above comes; cut at
      that word's end.

    Later pieces only need to be ready before the previous one has been spoken, so they are
    whole sentences (:class:`SentenceCutter` rules, where ``;`` and ``:`` end sentences
    too), for the best prosody. A sentence longer than ``max_words`` words is cut at its next
    clause mark or before its next conjunction, and at ``2 * max_words`` words in any case,
    so that no piece keeps TTS (and the listener) waiting long.

    Cuts are only ever made at whitespace, so numbers ("3,000", "3.5") and words stay whole,
    and only once the text that decides them has arrived: a word is complete when whitespace
    follows it (a delta may end inside one: "th" + "ere,"). So any split of a text into
    deltas gives the same pieces as the whole text, and the pieces, joined with spaces, are
    the text's words.
    """

    def __init__(
        self,
        *,
        min_first_words: int = 2,
        conjunction_after_words: int = 6,
        max_first_words: int = 12,
        max_words: int = 30,
    ) -> None:
        limits = (min_first_words, conjunction_after_words, max_first_words, max_words)
        if min(limits) < 1:
            raise ValueError(f"word limits must be at least 1, got {limits}")
        self._min_first_words = min_first_words
        self._conjunction_after_words = conjunction_after_words
        self._max_first_words = max_first_words
        self._max_words = max_words
        self._buffer = ""
        self._first = True

    def feed(self, delta: str) -> list[str]:
        """Add ``delta``; return the pieces completed so far (stripped, in order)."""
        self._buffer += delta
        out: list[str] = []
        while (cut := self._next_cut(self._buffer)) is not None:
            out.append(self._buffer[:cut].strip())
            self._buffer = self._buffer[cut:]
            self._first = False
        return out

    def flush(self) -> list[str]:
        """The text left at the end of the stream, if any, as one piece."""
        rest = self._buffer.strip()
        self._buffer = ""
        self._first = False
        return [rest] if rest else []

    def _next_cut(self, text: str) -> int | None:
        """Where the piece at the start of ``text`` ends, or ``None`` if it cannot be known.

        Every decision looks only at complete tokens and the whitespace after them, so a
        cut found here is also where the cut would be in any longer text.
        """
        if self._first:
            clause_words = self._min_first_words
            conjunction_words = self._conjunction_after_words
            limit = self._max_first_words
        else:
            clause_words = conjunction_words = self._max_words
            limit = 2 * self._max_words
        words = 0
        tokens = list(_TOKEN.finditer(text))
        for i, token in enumerate(tokens):
            start, end = token.span()
            if end == len(text):
                return None  # the token may go on in the next delta
            word = token.group()
            if i > 0 and words >= conjunction_words and _is_conjunction(word):
                return start
            words += any(c.isalnum() for c in word)
            piece = text[:end].strip()
            sentence_ok = len(piece) >= _MIN_CHARS and not _is_abbreviation(piece)
            stop = _FULL_STOP.search(word)
            # in the first piece ";" and ":" are clause marks, so "Note:" does not stand alone
            if stop and sentence_ok and (not self._first or stop.group().strip(";:" + _CLOSERS)):
                return end
            if words >= clause_words and _CLAUSE.search(word):
                return end
            if words >= limit:
                return end
            # a newline followed by more whitespace ends a sentence, as in SentenceCutter
            run_end = tokens[i + 1].start() if i + 1 < len(tokens) else len(text)
            if sentence_ok and "\n" in text[end : run_end - 1]:
                return end
            if i + 1 == len(tokens):
                return None  # the whitespace may yet hold a paragraph break
        return None


def _is_conjunction(token: str) -> bool:
    # "so," starts a clause; "so." ("I think so.") or "that?" ends one
    return token.lower().rstrip(",") in CONJUNCTIONS


def _is_abbreviation(candidate: str) -> bool:
    if not candidate.endswith("."):
        return False
    last = candidate.rsplit(maxsplit=1)[-1].rstrip(".").lower()
    # "J." (an initial) or "Dr." / "e.g." (a known abbreviation)
    return (len(last) == 1 and last.isalpha()) or last in _ABBREVIATIONS


def norm_word(word: str) -> str:
    """A word as compared across transcripts: lower case, no punctuation around it."""
    return word.lower().strip(".,!?;:\"'…")


def same_words(a: str, b: str) -> bool:
    """The same words, whatever the case and punctuation."""
    return bool(a) and [norm_word(w) for w in a.split()] == [norm_word(w) for w in b.split()]


def words_after(said: str, piece: str) -> str:
    """What of ``piece`` is left to say once ``said`` was: its words past those lined up
    with ``said`` (a word or two may differ, as two decodes of the same speech do).

    ``said`` is the first clause of a partial transcript, already spoken; ``piece`` the
    same clause cut from the final one.
    """
    spoken = [norm_word(w) for w in said.split()]
    words = piece.split()
    matcher = difflib.SequenceMatcher(None, spoken, [norm_word(w) for w in words], autojunk=False)
    matches = [b for b in matcher.get_matching_blocks() if b.size]
    last = matches[-1] if matches else difflib.Match(0, 0, 0)
    # words of ``said`` after its last match stand for as many words of ``piece``
    end = last.b + last.size + (len(spoken) - last.a - last.size)
    return " ".join(words[end:])
