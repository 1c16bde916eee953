"""Conversational speech for tests and benches: real TTS voices, 16 kHz int16, cached on disk.

Two sets of English text:

- :data:`CONVERSATIONAL`: 40 utterances of one to three clauses, 5 to 8 s when spoken,
  the way people talk to an assistant. They hold no numbers (Whisper writes "10" for
  "ten"; :func:`normalise` maps digits to words anyway) and no British spellings.
- :data:`COMMANDS`: the short smart-speaker commands the first latency bench used.

Each is rendered in several voices (:data:`VOICES`): the bundled Piper voice, at its own
pace and slowed down, and espeak-ng voices (the ``espeak-ng`` CLI: ``apt install
espeak-ng``) at a few speeds. Optional light noise (seeded pink or white, 20 to 25 dB under
the speech) is added on demand, never cached. Rendered audio is cached under
``$TMPDIR/voxwire-corpus/`` keyed by a hash of the text, the voice and its parameters, so
only the first run pays for synthesis.

:func:`hesitation` builds one sentence said in two fragments with a pause between them
("I would like to book a table for" ... "four people tomorrow evening, please."), for turn
detectors that should wait through a mid-sentence pause.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from audio import StreamResampler
from tests.voice import wer, words

RATE = 16000
CACHE_VERSION = "1"  # bump to invalidate every cached render
MARGIN_S = 0.15  # silence kept around the voiced part of each render
VOICED_LEVEL = 300  # |sample| above this counts as voiced (clean renders are ~0 between words)

Samples = npt.NDArray[np.int16]

CONVERSATIONAL: tuple[str, ...] = (
    "Hi, I was wondering if you could help me plan a trip to Lisbon next month, because I"
    " have never been there and I do not speak Portuguese.",
    "Could you tell me whether the pharmacy on the corner is still open tonight, or "
    "should I just drive to the big one downtown instead?",
    "I think I left my umbrella at the office yesterday afternoon, so can you remind me "
    "to pick it up on the way home from work?",
    "My daughter has a piano lesson after school today, and I need to know how long it "
    "takes to get there by bus from our house.",
    "We are having some friends over for dinner on Saturday, so could you suggest "
    "something vegetarian that is easy to cook for a group?",
    "I keep forgetting to water the plants on the balcony, so please send me a little "
    "reminder every morning before I leave for work.",
    "Actually, never mind the weather forecast for now, I just want to know if the trains"
    " into the city are running on time this evening.",
    "The washing machine has been making a strange rattling noise all week, and I am not "
    "sure whether I should call someone to look at it.",
    "Can you read me the last message from my brother, and then tell me what time his "
    "flight from Chicago is supposed to land tonight?",
    "I would love to listen to some relaxing jazz while I finish writing this report, but"
    " please keep the volume fairly low so I can concentrate.",
    "If it is really going to rain this afternoon, I should probably move the team "
    "meeting indoors and let everyone know about the change.",
    "Please find a good Italian restaurant somewhere near the museum, ideally a quiet "
    "place where we can sit and talk without having to shout.",
    "My phone battery drains really quickly these days, and I was wondering if there is a"
    " setting that could help it last a bit longer.",
    "I need to send a birthday card to my grandmother this week, but I can never remember"
    " her new address since she moved to the country.",
    "Would you mind checking my calendar for tomorrow morning, because I have a feeling "
    "that I might have booked too many things at once?",
    "The kids really want to go swimming this weekend, so could you find out when the "
    "public pool opens on Sunday and how much it costs?",
    "I just got back from the gym and I am absolutely starving, so what can I make "
    "quickly with eggs, spinach and a little bit of cheese?",
    "The people next door are having a loud party tonight, and I was hoping you could "
    "play something calm and quiet to help me fall asleep.",
    "Can you explain the difference between a credit card and a debit card, using simple "
    "words that my teenage son would understand?",
    "I am trying to learn a little Spanish before our summer holiday, so could you teach "
    "me how to ask for directions politely on the street?",
    "Sorry, I did not quite catch that, could you please repeat the last part about where"
    " we are supposed to park near the football stadium?",
    "The living room is far too warm right now, but the bedroom upstairs is freezing "
    "cold, so can you balance the heating somehow for me?",
    "Let me know as soon as the package arrives, and if nobody is at home, please ask the"
    " driver to leave it by the back door of the garage.",
    "I have been feeling a bit tired and stiff lately, so maybe you could suggest a few "
    "simple stretches that I can do while sitting at my desk.",
    "Before we leave for the airport, please double check that the back door is locked, "
    "the windows are closed and all the lights are switched off.",
    "My friend recommended a history podcast the other day, but I forgot the name of it, "
    "I think it was something about ancient Rome.",
    "Could you add bread, butter and a big bag of apples to the shopping list for me, and"
    " then remove the orange juice because we still have some?",
    "We should probably book the hotel soon, because the prices always seem to go up as "
    "soon as the summer music festival starts in the park.",
    "I am not sure which movie to watch tonight, so please suggest something funny and "
    "light that is not too long, because I am tired.",
    "When you get a chance later today, could you look up the best way to get a red wine "
    "stain out of my favorite white cotton shirt?",
    "The printer in the study keeps running out of ink every few weeks, so please order a"
    " new cartridge and have it delivered to the house on Friday.",
    "Honestly, I would much rather walk to the concert tonight if it is not raining, but "
    "otherwise I think we should just take a taxi there.",
    "Can you please tell my wife that I am running about half an hour late, and that she "
    "should go ahead and start dinner without me tonight?",
    "I was reading about a new bakery that opened in the old town last week, and "
    "apparently their cinnamon rolls are absolutely amazing.",
    "Please turn the music down a little bit, and then tell me what the traffic looks "
    "like on the highway, because I have to leave very soon.",
    "My manager asked me to prepare a short presentation for the meeting on Monday, so "
    "could you help me outline the main points about our project?",
    "If the dentist happens to call while I am in the shower, just tell them that I will "
    "call them back right after lunch, if that is okay.",
    "I would like to try cooking fish at home this week for the first time, but I have no"
    " idea how to tell when it is properly done.",
    "The dog really needs a walk before it gets dark outside, so please remind me in an "
    "hour if I am still sitting here on the couch.",
    "We are thinking about adopting a cat from the shelter, but my husband is worried "
    "about his allergies, so what do you think we should do?",
)

COMMANDS: tuple[str, ...] = (
    "Please turn on the kitchen lights.",
    "What is the weather like tomorrow?",
    "Set a timer for ten minutes.",
    "Play some quiet music in the living room.",
    "How far is it to the train station?",
    "Remind me to call my sister tonight.",
    "Close the blinds in the bedroom.",
    "What time does the bakery open?",
    "Add milk and eggs to the shopping list.",
    "Turn the heating down a little.",
)

HESITATION = ("I would like to book a table for", "four people tomorrow evening, please.")


# -- voices ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    """One way of speaking: an engine and its parameters."""

    name: str
    engine: str  # "piper" or "espeak"
    espeak_voice: str = ""  # espeak-ng -v
    speed: int = 175  # espeak-ng -s, words per minute
    pitch: int = 50  # espeak-ng -p, 0..99
    length_scale: float = 1.0  # Piper: > 1 speaks slower

    def params(self) -> str:
        if self.engine == "piper":
            return f"piper:joe:{self.length_scale}"
        return f"espeak:{self.espeak_voice}:{self.speed}:{self.pitch}"


VOICES: tuple[Voice, ...] = (
    Voice("piper", "piper"),
    Voice("piper-slow", "piper", length_scale=1.15),
    Voice("espeak-us", "espeak", "en-us", speed=175),
    Voice("espeak-gb", "espeak", "en-gb", speed=175),
    Voice("espeak-us-f3", "espeak", "en-us+f3", speed=170, pitch=60),
    Voice("espeak-rp-m3", "espeak", "en-gb-x-rp+m3", speed=185, pitch=40),
)
VOICE_NAMES = tuple(v.name for v in VOICES)


def voice(name: str) -> Voice:
    for v in VOICES:
        if v.name == name:
            return v
    raise KeyError(f"unknown voice {name!r}; known: {', '.join(VOICE_NAMES)}")


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def available_voices() -> tuple[str, ...]:
    """The voices this machine can render (Piper always; espeak-ng when installed)."""
    return tuple(v.name for v in VOICES if v.engine == "piper" or espeak_available())


# -- rendering ---------------------------------------------------------------------------


def cache_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "voxwire-corpus"
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def _piper() -> object:
    from tests.speech import piper_voice

    return piper_voice()


def _render_piper(text: str, v: Voice) -> Samples:
    from piper import SynthesisConfig

    config = SynthesisConfig(length_scale=v.length_scale)
    chunks = list(_piper().synthesize(text, syn_config=config))  # type: ignore[attr-defined]
    audio = np.concatenate([c.audio_int16_array for c in chunks])
    return StreamResampler(chunks[0].sample_rate, RATE).feed(audio, last=True)


def _render_espeak(text: str, v: Voice) -> Samples:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt install espeak-ng)")
    with tempfile.TemporaryDirectory(prefix="voxwire-espeak-") as tmp:
        path = Path(tmp) / "out.wav"
        cmd = [exe, "-v", v.espeak_voice, "-s", str(v.speed), "-p", str(v.pitch), "-w", str(path)]
        subprocess.run([*cmd, "--", text], check=True, capture_output=True, timeout=60)
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise RuntimeError(
                    f"espeak-ng wrote {w.getnchannels()} channels, {w.getsampwidth()} B/sample"
                )
            rate = w.getframerate()
            audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)
    return StreamResampler(rate, RATE).feed(audio, last=True)


def _trim(samples: Samples) -> Samples:
    """``samples`` cut to the voiced part plus :data:`MARGIN_S` each side."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > VOICED_LEVEL)
    if not len(loud):
        return samples
    margin = int(MARGIN_S * RATE)
    lo, hi = max(0, int(loud[0]) - margin), min(len(samples), int(loud[-1]) + 1 + margin)
    out: Samples = samples[lo:hi]
    return out


def render(text: str, v: Voice | str) -> Samples:
    """``text`` spoken by ``v`` (16 kHz int16, trimmed to the speech + 150 ms), cached."""
    v = voice(v) if isinstance(v, str) else v
    key = hashlib.sha256(f"{CACHE_VERSION}\n{v.params()}\n{text}".encode()).hexdigest()[:24]
    path = cache_dir() / f"{v.name}-{key}.npy"
    if path.exists():
        try:
            cached: Samples = np.load(path)
            return cached
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    raw = _render_piper(text, v) if v.engine == "piper" else _render_espeak(text, v)
    samples = _trim(raw)
    tmp = path.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.tmp.npy")
    np.save(tmp, samples)
    tmp.replace(path)  # atomic: concurrent runs never read half a file
    return samples


# -- noise -------------------------------------------------------------------------------


def noise(n: int, rms: float, *, seed: int = 0, kind: str = "pink") -> npt.NDArray[np.float64]:
    """``n`` samples of seeded white or pink (1/f power) noise at ``rms``."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(max(n, 1))
    if kind == "white":
        shaped = white
    elif kind == "pink":
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(len(white), 1 / RATE)
        f[0] = f[1] if len(f) > 1 else 1.0
        shaped = np.fft.irfft(spectrum / np.sqrt(f), len(white))
    else:
        raise ValueError(f"noise kind {kind!r}: white or pink")
    shaped = shaped[:n]
    level = float(np.sqrt(np.mean(shaped**2))) if n else 1.0
    out: npt.NDArray[np.float64] = shaped * (rms / max(level, 1e-12))
    return out


def add(samples: Samples, extra: npt.NDArray[np.float64]) -> Samples:
    out: Samples = np.clip(np.rint(samples.astype(np.float64) + extra), -32768, 32767).astype(
        np.int16
    )
    return out


def speech_rms(samples: Samples, onset: int, offset: int) -> float:
    """RMS of the voiced part (what an SNR is measured against)."""
    part = samples[onset:offset].astype(np.float64)
    return float(np.sqrt(np.mean(part**2))) if len(part) else 0.0


# -- utterances --------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """One spoken utterance and what was said."""

    text: str  # the reference transcript
    voice: str
    samples: Samples  # 16 kHz int16 (noisy if ``snr_db`` is set)
    onset: int  # first voiced sample, from the clean render
    offset: int  # one past the last voiced sample
    snr_db: float | None = None  # noise added at this SNR, or None for clean
    noise_kind: str = ""
    clean: Samples | None = None  # the render before noise, when noise was added
    pause: tuple[int, int] | None = None  # (start, end) of a mid-sentence hesitation

    @property
    def duration_s(self) -> float:
        return len(self.samples) / RATE

    @property
    def speech_s(self) -> float:
        return (self.offset - self.onset) / RATE

    @property
    def label(self) -> str:
        return (
            f"{self.voice}{'' if self.snr_db is None else f'+{self.noise_kind}{self.snr_db:g}dB'}"
        )

    @property
    def noise_rms(self) -> float:
        """RMS of the added noise (0 when clean): continue it through silence around this."""
        if self.snr_db is None:
            return 0.0
        base = self.samples if self.clean is None else self.clean
        return speech_rms(base, self.onset, self.offset) / 10 ** (self.snr_db / 20)

    def noisy(self, snr_db: float = 22.0, *, seed: int = 0, kind: str = "pink") -> Utterance:
        """This utterance with seeded noise ``snr_db`` under the speech's RMS."""
        clean = self.samples if self.clean is None else self.clean
        rms = speech_rms(clean, self.onset, self.offset) / 10 ** (snr_db / 20)
        seed = seed ^ int(hashlib.sha256(f"{self.voice}\n{self.text}".encode()).hexdigest()[:8], 16)
        mixed = add(clean, noise(len(clean), rms, seed=seed, kind=kind))
        return replace(self, samples=mixed, snr_db=snr_db, noise_kind=kind, clean=clean)

    def padded(self, lead_s: float, tail_s: float, *, seed: int = 1) -> Utterance:
        """This utterance with silence (or its noise, continued) before and after."""
        lead, tail = int(lead_s * RATE), int(tail_s * RATE)
        clean = self.samples if self.clean is None else self.clean
        clean2 = np.concatenate([np.zeros(lead, np.int16), clean, np.zeros(tail, np.int16)])
        samples = np.concatenate([np.zeros(lead, np.int16), self.samples, np.zeros(tail, np.int16)])
        if self.snr_db is not None:
            pad = noise(lead + tail, self.noise_rms, seed=seed, kind=self.noise_kind)
            samples[:lead] = add(samples[:lead], pad[:lead])
            samples[lead + len(self.samples) :] = add(
                samples[lead + len(self.samples) :], pad[lead:]
            )
        pause = None if self.pause is None else (self.pause[0] + lead, self.pause[1] + lead)
        return replace(
            self,
            samples=samples,
            onset=self.onset + lead,
            offset=self.offset + lead,
            clean=clean2 if self.snr_db is not None else None,
            pause=pause,
        )


def voiced(samples: Samples) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > VOICED_LEVEL)
    if not len(loud):
        return 0, 0
    return int(loud[0]), int(loud[-1]) + 1


def utterance(
    text: str, v: Voice | str, *, snr_db: float | None = None, seed: int = 0, kind: str = "pink"
) -> Utterance:
    v = voice(v) if isinstance(v, str) else v
    samples = render(text, v)
    on, off = voiced(samples)
    u = Utterance(text, v.name, samples, on, off)
    return u if snr_db is None else u.noisy(snr_db, seed=seed, kind=kind)


def utterances(
    texts: tuple[str, ...] = CONVERSATIONAL,
    voices: tuple[str, ...] | None = None,
    *,
    noise_db: tuple[float | None, ...] = (None,),
    seed: int = 0,
    kind: str = "pink",
) -> list[Utterance]:
    """Every text in every voice, clean and/or with noise at each SNR in ``noise_db``."""
    names = available_voices() if voices is None else voices
    return [
        utterance(text, name, snr_db=snr, seed=seed, kind=kind)
        for name in names
        for text in texts
        for snr in noise_db
    ]


def conversational(
    voices: tuple[str, ...] | None = None, *, noise_db: tuple[float | None, ...] = (None,)
) -> list[Utterance]:
    return utterances(CONVERSATIONAL, voices, noise_db=noise_db)


def commands(
    voices: tuple[str, ...] | None = None, *, noise_db: tuple[float | None, ...] = (None,)
) -> list[Utterance]:
    return utterances(COMMANDS, voices, noise_db=noise_db)


def hesitation(
    v: Voice | str = "piper", *, pause_s: float = 0.8, fragments: tuple[str, str] = HESITATION
) -> Utterance:
    """One sentence said in two fragments with ``pause_s`` of silence between them.

    ``pause`` is the (start, end) sample of the silence: from the last voiced sample of the
    first fragment to the first voiced sample of the second. ``text`` is the whole sentence.
    """
    a, b = (render(f, v) for f in fragments)
    a_on, a_off = voiced(a)
    b_on, b_off = voiced(b)
    head, tail = a[:a_off], b[b_on:]
    gap = np.zeros(int(pause_s * RATE), np.int16)
    samples = np.concatenate([head, gap, tail])
    start = len(head)
    end = start + len(gap)
    name = v if isinstance(v, str) else v.name
    text = " ".join(fragments)
    return Utterance(text, name, samples, a_on, end + (b_off - b_on), pause=(start, end))


# -- scoring -----------------------------------------------------------------------------

_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SPELLING = {
    "ok": "okay",
    "alright": "all right",
    "neighbour": "neighbor",
    "colour": "color",
    "favourite": "favorite",
}


def _number(n: int) -> str:
    if n < 20:
        return _UNITS[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _UNITS[n % 10])
    return str(n)


def normalise(text: str) -> str:
    """Lower case, digits 0..99 as words, a few spelling variants unified."""
    text = text.lower().replace("%", " percent")
    text = re.sub(r"\b\d{1,2}\b", lambda m: _number(int(m.group())), text)
    out = [_SPELLING.get(w, w) for w in words(text)]
    return " ".join(out)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words) after :func:`normalise`: sum both for a corpus WER."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    n = len(ref.split())
    return round(wer(ref, hyp) * max(1, n)), n
