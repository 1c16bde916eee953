"""WER and decode time of Whisper's sized mel window against faster-whisper's full 30 s one.

Not a test. Loads the real ``models.stt.WhisperStt`` (Whisper tiny.en, int8, CTranslate2)
in this process and transcribes every utterance of the speech corpus (tests/corpus.py:
40 conversational sentences of 5-8 s, in the Piper and espeak-ng voices, clean and pink
noise at 22 dB SNR; plus the 10 short commands) twice, back to back in alternating order:

- ``window="full"``: faster-whisper's own path, every decode padded to 30 s (the old one);
- ``window="sized"``: the log-mel window fitted to the audio (what partials use);
- ``window="auto"``, when models/stt.py has it: what the server's final transcripts use
  (the 30 s window for short audio, the sized one otherwise).

Each utterance is padded like the turn the pipeline hands to STT: 300 ms before the
speech (``prefix_padding_ms``) and 500 ms after it (the silence window); the noise runs
on through the padding. WER is corpus-level (word edits summed over utterances ÷
reference words summed), after tests.corpus.normalise (case, punctuation, digits as
words). Decode times are wall clock per call on this machine's 2 cores (shared with
whatever else runs: compare the two columns of one run, not runs).

It also transcribes any audio files shipped inside .venv's site-packages (real recordings
are what a corpus of synthetic voices lacks) and prints what both windows heard.

    .venv/bin/python bench/wer.py                       # 600 utterances x 3 windows (~14 min)
    .venv/bin/python bench/wer.py --sentences 10 --voices piper,espeak-us
    .venv/bin/python bench/wer.py --noise-db none --no-commands --json wer.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
from _common import ROOT

sys.path.insert(0, str(ROOT))

from audio import StreamResampler
from models.stt import WhisperStt, Window, window_frames
from tests import corpus

WINDOWS: tuple[str, ...] = ("full", "sized", *(("auto",) if "auto" in get_args(Window) else ()))
LEAD_S, TAIL_S = 0.3, 0.5


@dataclass
class Tally:
    edits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WINDOWS, 0))
    words: int = 0
    n: int = 0

    def wer(self, window: str) -> float:
        return self.edits[window] / max(1, self.words)


@dataclass
class Result:
    set: str
    text: str
    label: str
    voice: str
    noisy: bool
    seconds: float
    frames: int
    transcript: dict[str, str]
    edits: dict[str, int]
    words: int
    ms: dict[str, float]


def decode(stt: WhisperStt, samples: np.ndarray, window: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    text = stt.transcribe(samples, window=window)  # type: ignore[arg-type]
    return text, 1000 * (time.perf_counter() - t0)


def run_set(
    stt: WhisperStt, name: str, utterances: list[corpus.Utterance], results: list[Result]
) -> None:
    for i, u in enumerate(utterances):
        padded = u.padded(LEAD_S, TAIL_S, seed=i)
        order = WINDOWS[i % len(WINDOWS) :] + WINDOWS[: i % len(WINDOWS)]  # rotate
        transcript, ms, edits = {}, {}, {}
        for window in order:
            transcript[window], ms[window] = decode(stt, padded.samples, window)
        words = 0
        for window in WINDOWS:
            edits[window], words = corpus.word_errors(u.text, transcript[window])
        results.append(
            Result(
                name,
                u.text,
                u.label,
                u.voice,
                u.snr_db is not None,
                padded.duration_s,
                window_frames(len(padded.samples)),
                transcript,
                edits,
                words,
                ms,
            )
        )
        if sys.stdout.isatty():
            print(f"  {name} {i + 1}/{len(utterances)}", end="\r", flush=True)
    if sys.stdout.isatty():
        print(" " * 40, end="\r")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def wer_table(results: list[Result], voices: tuple[str, ...]) -> None:
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    for r in results:
        noise = "noisy" if r.noisy else "clean"
        for key in ((r.voice, noise), (r.voice, "all"), ("all", noise), ("all", "all")):
            t = tallies[key]
            t.n += 1
            t.words += r.words
            for w in WINDOWS:
                t.edits[w] += r.edits[w]
    heads = " | ".join(f"WER {w}" + (" (30 s)" if w == "full" else "") for w in WINDOWS)
    print(f"| voice | noise | utterances | words | {heads} |")
    print("|---|---|---:|---:|" + "---:|" * len(WINDOWS))
    for v in (*voices, "all"):
        for noise in ("clean", "noisy", "all"):
            row = tallies.get((v, noise))
            if row is None or row.n == 0:
                continue
            label = f"**{v}**" if v == "all" and noise == "all" else v
            cells = " | ".join(f"{row.wer(w):.1%}" for w in WINDOWS)
            print(f"| {label} | {noise} | {row.n} | {row.words} | {cells} |")


def time_table(results: list[Result]) -> None:
    print("| window | decode mean | p50 | p95 | max |")
    print("|---|---:|---:|---:|---:|")
    for w in WINDOWS:
        ms = [r.ms[w] for r in results]
        print(
            f"| {w} | {np.mean(ms):.0f} ms | {pct(ms, 50):.0f} ms | {pct(ms, 95):.0f} ms | "
            f"{max(ms):.0f} ms |"
        )
    full = np.array([r.ms["full"] for r in results])
    for w in WINDOWS[1:]:
        other = np.array([r.ms[w] for r in results])
        each = np.percentile(full / other, [5, 50, 95])
        print(
            f"full / {w}: mean {full.mean() / other.mean():.2f}x, p50 "
            f"{np.median(full) / np.median(other):.2f}x; per utterance p50 {each[1]:.2f}x "
            f"(p5 {each[0]:.2f}x, p95 {each[2]:.2f}x)"
        )
    frames = sorted({r.frames for r in results})
    print(f"sized windows used (mel frames): {', '.join(map(str, frames))} of 3000")


def differences(results: list[Result], limit: int) -> None:
    for w in WINDOWS[1:]:
        differ = [r for r in results if r.transcript["full"] != r.transcript[w]]
        worse = sum(r.edits[w] > r.edits["full"] for r in results)
        better = sum(r.edits[w] < r.edits["full"] for r in results)
        print(
            f"{w} vs full: transcripts differ in {len(differ)}/{len(results)} utterances; "
            f"{w} has more word errors in {worse}, fewer in {better}"
        )
    shown = sorted(results, key=lambda r: r.edits["full"] - r.edits["sized"])[:limit]
    for r in shown:
        if r.edits["sized"] <= r.edits["full"]:
            break
        pad = " " * len(r.label)
        print(f"  [{r.label}] ref:   {r.text}")
        for w in WINDOWS:
            print(f"  {pad}   {w + ':':6} {r.transcript[w]}  ({r.edits[w]} edits)")


# -- audio shipped in site-packages -------------------------------------------------------

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")


def shipped_audio() -> list[Path]:
    site = [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    found = {f for s in site for f in s.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES}
    return sorted(found)


def load_audio(path: Path) -> np.ndarray | None:
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError):
        return None
    mono = data.mean(axis=1).astype(np.int16)
    return StreamResampler(int(rate), 16000).feed(mono, last=True)


def site_packages(stt: WhisperStt) -> None:
    files = shipped_audio()
    print(f"\n== audio files in site-packages: {len(files)}")
    for path in files:
        samples = load_audio(path)
        rel = path.relative_to(next(p for p in path.parents if p.name == "site-packages"))
        if samples is None or len(samples) < 8000:
            print(f"  {rel}: {'unreadable' if samples is None else 'under 0.5 s'}, skipped")
            continue
        padded = np.concatenate([np.zeros(int(LEAD_S * 16000), np.int16), samples])
        heard = {w: decode(stt, padded, w)[0] for w in WINDOWS}
        said = ", ".join(f"{w} {t!r}" for w, t in heard.items())
        print(f"  {rel} ({len(samples) / 16000:.2f} s): {said}")


def stt_version() -> str:
    """The commit models/stt.py was last changed in, and whether the working copy differs."""
    import subprocess

    def git(*a: str) -> str:
        run = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return run.stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    last = git("log", "-1", "--format=%h", "--", "models/stt.py")
    dirty = git("status", "--porcelain", "--", "models/stt.py")
    return f"HEAD {head}, last changed in {last}" + (" + uncommitted edits" if dirty else "")


def main() -> None:
    global WINDOWS  # one run, one set of windows
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", default="", help="comma-separated; default all available")
    parser.add_argument("--sentences", type=int, default=len(corpus.CONVERSATIONAL))
    parser.add_argument("--noise-db", default="22", help="SNR of the noisy copies, or none")
    parser.add_argument("--noise-kind", default="pink", choices=("pink", "white"))
    parser.add_argument("--no-commands", action="store_true", help="skip the short commands")
    parser.add_argument("--show", type=int, default=6, help="differing transcripts to print")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--windows", default=",".join(WINDOWS), help="of " + ",".join(WINDOWS))
    args = parser.parse_args()
    WINDOWS = tuple(w for w in args.windows.split(",") if w)
    if WINDOWS[0] != "full":
        parser.error("--windows must start with full (the reference)")
    print(f"models/stt.py: {stt_version()}; windows {', '.join(WINDOWS)}")

    voices = tuple(args.voices.split(",")) if args.voices else corpus.available_voices()
    missing = [v.name for v in corpus.VOICES if v.name not in corpus.available_voices()]
    if missing:
        print(f"espeak-ng not installed: skipping {', '.join(missing)}")
    noise_db: tuple[float | None, ...] = (
        (None,) if args.noise_db == "none" else (None, float(args.noise_db))
    )
    texts = corpus.CONVERSATIONAL[: args.sentences]

    t0 = time.perf_counter()
    conv = corpus.utterances(texts, voices, noise_db=noise_db, kind=args.noise_kind)
    cmds = (
        []
        if args.no_commands
        else corpus.utterances(corpus.COMMANDS, voices, noise_db=noise_db, kind=args.noise_kind)
    )
    print(
        f"corpus: {len(conv)} conversational + {len(cmds)} command utterances "
        f"({len(voices)} voices, noise {args.noise_db} dB {args.noise_kind}), "
        f"rendered/loaded in {time.perf_counter() - t0:.1f} s"
    )
    stt = WhisperStt()
    warm = corpus.utterance(corpus.COMMANDS[0], voices[0]).samples
    for _ in range(3):
        for w in WINDOWS:
            decode(stt, warm, w)

    results: list[Result] = []
    t0 = time.perf_counter()
    run_set(stt, "conversational", conv, results)
    conv_results = list(results)
    run_set(stt, "commands", cmds, results)
    cmd_results = results[len(conv_results) :]
    print(f"decoded {len(WINDOWS) * len(results)} times in {time.perf_counter() - t0:.0f} s")

    speech = [r.seconds for r in conv_results]
    print(
        f"\n== conversational: {len(conv_results)} utterances, {np.mean(speech):.1f} s each "
        f"with padding ({min(speech):.1f}-{max(speech):.1f} s)"
    )
    wer_table(conv_results, voices)
    print()
    time_table(conv_results)
    differences(conv_results, args.show)
    if cmd_results:
        print(f"\n== short commands: {len(cmd_results)} utterances")
        wer_table(cmd_results, voices)
        print()
        time_table(cmd_results)
        differences(cmd_results, args.show)
    site_packages(stt)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))


if __name__ == "__main__":
    main()
