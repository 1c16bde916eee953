"""Cut a stream of text deltas into sentences for TTS (sans-IO).

TTS speaks whole sentences: cutting too early makes prosody choppy, cutting late delays the
first audio. A sentence ends at ``.``, ``!``, ``?`` (or ``;``/``:``/newline) followed by
whitespace, except after common abbreviations, initials and inside numbers ("3.5").
"""

from __future__ import annotations

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
            if self._is_abbreviation(candidate) or len(candidate) < self._min_chars:
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

    @staticmethod
    def _is_abbreviation(candidate: str) -> bool:
        if not candidate.endswith("."):
            return False
        last = candidate.rsplit(maxsplit=1)[-1].rstrip(".").lower()
        # "J." (an initial) or "Dr." / "e.g." (a known abbreviation)
        return (len(last) == 1 and last.isalpha()) or last in _ABBREVIATIONS
