"""Does batching Whisper decodes across sessions pay on this CPU?

Not a test. Measures the real ``models.stt.WhisperStt`` (Whisper tiny.en, int8,
CTranslate2, sized mel windows) on groups of N utterances of 2-7 s of real synthetic speech
(tests/corpus.py: the short commands, clauses cut from the conversational sentences, and
the shorter conversational sentences, in the Piper and espeak-ng voices), each padded like
a turn the pipeline hands to STT (300 ms before, 500 ms after). For N = 1, 2, 4, 8 and for
each ``cpu_threads`` setting, every round draws a group of N and decodes it three ways,
back to back in rotating order:

- ``seq``: N batch-1 sized decodes one after another (``transcribe``);
- ``conc``: the same N split over two threads that call ``transcribe`` at once (what the
  server does today: ``num_workers`` > 1 lets CTranslate2 run them in parallel);
- ``batch``: one ``transcribe_batch`` call, i.e. one ``generate`` of N, every item padded
  to the largest item's bucket, each with its own prompt.

CPU is the process's CPU time (every thread: CTranslate2's workers, the feature extraction,
numpy's OpenBLAS pool), so "decodes per CPU-second" is the throughput per core, the figure
that decides how many sessions a core carries; it is also the one least disturbed by other
jobs on a shared machine. Wall times are the latency of the group: when its last text is
out, and the mean over its items of when each text is out. Timed decodes use
``retry=False`` (the 30 s re-decode of a loop would add the same ~0.6 s to both sides at
random).

Each thread setting runs in its own process (a model per setting; CTranslate2's and
OpenBLAS's thread pools are per process), and the settings alternate in blocks, so compare
ratios within one run, not runs. Then one more process checks the texts with ``retry=True``:
each utterance batch-1 against the same utterance in random batches of 2, 4 and 8 and in
batches of one bucket, with the corpus WER of each.

    .venv/bin/python bench/batch.py                         # ~10 min on 2 busy cores
    .venv/bin/python bench/batch.py --rounds 3 --blocks 1 --no-texts     # ~2 min
    .venv/bin/python bench/batch.py --threads 2 --sizes 2,4 --json /tmp/batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from _common import ROOT

sys.path.insert(0, str(ROOT))

from models.stt import WhisperStt, window_frames
from tests import corpus

LEAD_S, TAIL_S = 0.3, 0.5
MIN_S, MAX_S = 2.0, 7.0
MODES = ("seq", "conc", "batch")
CONC_THREADS = 2

Samples = npt.NDArray[np.int16]


# -- the utterances ------------------------------------------------------------------------


def pool() -> list[corpus.Utterance]:
    """Every corpus utterance of 2-7 s once padded, shortest first (~240 of them)."""
    items: list[corpus.Utterance] = []
    voices = corpus.available_voices()
    for v in voices:
        items += corpus.commands((v,))
        items += corpus.conversational((v,))
    # clauses of the conversational sentences fill the 3-6 s middle that neither set has
    for v in [n for n in ("piper", "espeak-us", "espeak-gb", "espeak-rp-m3") if n in voices]:
        for sentence in corpus.CONVERSATIONAL[:20]:
            for clause in sentence.split(", "):
                if len(clause.split()) >= 6:
                    items.append(corpus.utterance(clause, v))
    padded = [u.padded(LEAD_S, TAIL_S, seed=i) for i, u in enumerate(items)]
    return sorted((u for u in padded if MIN_S <= u.duration_s <= MAX_S), key=lambda u: u.duration_s)


# -- one process: timing ---------------------------------------------------------------------


@dataclass
class Timing:
    threads: int
    n: int
    mode: str
    cpu_s: float
    wall_s: float
    mean_done_s: float  # mean over the items of when each text was out
    frames: int  # the batch's window (the largest item's bucket)
    one_s: float  # the same round's ``seq`` wall time / N: one batch-1 decode
    differ: int  # items whose text differs from the ``seq`` one (same round)


def run_seq(stt: WhisperStt, group: list[Samples]) -> tuple[list[str], list[float]]:
    t0 = time.perf_counter()
    texts, done = [], []
    for samples in group:
        texts.append(stt.transcribe(samples, retry=False))
        done.append(time.perf_counter() - t0)
    return texts, done


def run_conc(
    stt: WhisperStt, group: list[Samples], pool_: ThreadPoolExecutor
) -> tuple[list[str], list[float]]:
    """The group split over ``CONC_THREADS`` threads, each decoding its share in turn."""
    t0 = time.perf_counter()
    texts: list[str] = [""] * len(group)
    done: list[float] = [0.0] * len(group)

    def share(k: int) -> None:
        for i in range(k, len(group), CONC_THREADS):
            texts[i] = stt.transcribe(group[i], retry=False)
            done[i] = time.perf_counter() - t0

    for f in [pool_.submit(share, k) for k in range(min(CONC_THREADS, len(group)))]:
        f.result()
    return texts, done


def run_batch(stt: WhisperStt, group: list[Samples]) -> tuple[list[str], list[float]]:
    t0 = time.perf_counter()
    texts = stt.transcribe_batch(group, retry=False)
    return texts, [time.perf_counter() - t0] * len(group)


def child_timing(args: argparse.Namespace) -> None:
    utterances = pool()
    stt = WhisperStt(threads=args.threads, workers=args.workers)
    sizes = [int(n) for n in args.sizes.split(",")]
    rng = random.Random(args.seed)
    with ThreadPoolExecutor(CONC_THREADS) as threads:
        # warm-up: every bucket and batch size once (allocator, caches), untimed
        by_frames = {window_frames(len(u.samples)): u.samples for u in utterances}
        for n in sizes:
            stt.transcribe_batch(list(by_frames.values())[:n], retry=False)
        run_conc(stt, list(by_frames.values()), threads)
        for r in range(args.rounds):
            for n in sizes:
                group = [u.samples for u in rng.sample(utterances, n)]
                frames = max(window_frames(len(s)) for s in group)
                modes = MODES if n > 1 else ("seq", "batch")
                k = (r + n) % len(modes)
                got: dict[str, tuple[list[str], float, float, list[float]]] = {}
                for mode in modes[k:] + modes[:k]:
                    c0, w0 = time.process_time(), time.perf_counter()
                    if mode == "seq":
                        texts, done = run_seq(stt, group)
                    elif mode == "conc":
                        texts, done = run_conc(stt, group, threads)
                    else:
                        texts, done = run_batch(stt, group)
                    got[mode] = (texts, time.process_time() - c0, time.perf_counter() - w0, done)
                seq_texts, _, seq_wall, _ = got["seq"]
                for mode, (texts, cpu, wall, done) in got.items():
                    differ = sum(a != b for a, b in zip(texts, seq_texts, strict=True))
                    mean_done = float(np.mean(done))
                    rec = Timing(
                        args.threads, n, mode, cpu, wall, mean_done, frames, seq_wall / n, differ
                    )
                    print(json.dumps(asdict(rec)), flush=True)


# -- one process: the texts ---------------------------------------------------------------------


def child_texts(args: argparse.Namespace) -> None:
    utterances = pool()
    stt = WhisperStt(threads=args.threads, workers=args.workers)
    single = [stt.transcribe(u.samples) for u in utterances]
    rng = random.Random(args.seed)
    groupings: dict[str, list[list[int]]] = {}
    for n in (2, 4, 8):
        order = list(range(len(utterances)))
        rng.shuffle(order)
        groupings[f"random {n}"] = [order[i : i + n] for i in range(0, len(order), n)]
    by_bucket: dict[int, list[int]] = defaultdict(list)
    for i, u in enumerate(utterances):
        by_bucket[window_frames(len(u.samples))].append(i)
    groupings["one bucket, 4"] = [
        b[i : i + 4] for b in by_bucket.values() for i in range(0, len(b), 4)
    ]

    def corpus_wer(texts: dict[int, str]) -> float:
        edits = words = 0
        for i, text in texts.items():
            e, w = corpus.word_errors(utterances[i].text, text)
            edits, words = edits + e, words + w
        return edits / max(1, words)

    base = corpus_wer(dict(enumerate(single)))
    for name, groups in groupings.items():
        batched: dict[int, str] = {}
        padded: set[int] = set()  # items decoded on a larger window than their own
        for g in groups:
            own = [window_frames(len(utterances[i].samples)) for i in g]
            padded.update(i for i, f in zip(g, own, strict=True) if f < max(own))
            texts = stt.transcribe_batch([utterances[i].samples for i in g])
            batched.update(zip(g, texts, strict=True))
        differ = [i for i in sorted(batched) if batched[i] != single[i]]
        record = {
            "grouping": name,
            "items": len(batched),
            "padded": len(padded),
            "differ": len(differ),
            "differ_padded": len(padded.intersection(differ)),
            "wer_single": base,
            "wer_batched": corpus_wer(batched),
            "examples": [[utterances[i].label, single[i], batched[i]] for i in differ[:3]],
        }
        print(json.dumps(record), flush=True)


# -- the parent: run the processes, print the tables -------------------------------------------


def spawn(args: argparse.Namespace, kind: str, threads: int, seed: int) -> list[dict[str, Any]]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--threads",
        str(threads),
        "--workers",
        str(args.workers),
        "--rounds",
        str(args.rounds),
        "--sizes",
        args.sizes,
        "--seed",
        str(seed),
    ]
    env = dict(os.environ)
    if args.blas_threads:
        env["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def timing_table(records: list[dict[str, Any]], threads: list[int], sizes: list[int]) -> None:
    """One row per (cpu_threads, N, mode); "x one decode" is the group's wall time over the
    mean wall time of one batch-1 decode of the same utterances (``seq`` wall / N)."""
    sums: dict[tuple[int, int, str], list[float]] = defaultdict(lambda: [0.0] * 6)
    for r in records:
        s = sums[(r["threads"], r["n"], r["mode"])]
        s[0] += r["cpu_s"]
        s[1] += r["wall_s"]
        s[2] += r["mean_done_s"]
        s[3] += 1
        s[4] += r["differ"]
        s[5] += r["one_s"]
    print(
        "| cpu_threads | N | mode | rounds | CPU ms / decode | decodes / CPU-s | x seq | "
        "wall of the group ms | mean wait ms | x one decode | texts differ from seq |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in threads:
        for n in sizes:
            seq = sums.get((t, n, "seq"))
            for mode in MODES:
                row = sums.get((t, n, mode))
                if row is None or seq is None:
                    continue
                rounds = int(row[3])
                cpu_per = row[0] / (rounds * n)
                rate, seq_rate = 1 / cpu_per, (rounds * n) / seq[0]
                print(
                    f"| {t} | {n} | {mode} | {rounds} | {1000 * cpu_per:.0f} | {rate:.2f} | "
                    f"{rate / seq_rate:.2f} | {1000 * row[1] / rounds:.0f} | "
                    f"{1000 * row[2] / rounds:.0f} | {row[1] / row[5]:.2f} | "
                    f"{int(row[4])}/{rounds * n} |"
                )


def texts_table(records: list[dict[str, Any]]) -> None:
    print(
        "| grouping (retry=True) | items | on a larger window | texts ≠ batch-1 "
        "(of them padded) | WER batch-1 | WER batched |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in records:
        print(
            f"| {r['grouping']} | {r['items']} | {r['padded']} | {r['differ']} "
            f"({r['differ_padded']}) | {r['wer_single']:.1%} | {r['wer_batched']:.1%} |"
        )
    for r in records:
        for label, a, b in r["examples"]:
            print(f"  [{r['grouping']}, {label}]\n    batch-1: {a}\n    batched: {b}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=6, help="groups per N per block (default 6)")
    p.add_argument("--blocks", type=int, default=2, help="alternations of the thread settings")
    p.add_argument("--sizes", default="1,2,4,8", help="batch sizes N (default 1,2,4,8)")
    p.add_argument("--threads", default="1,2", help="cpu_threads settings (default 1,2)")
    p.add_argument("--workers", type=int, default=2, help="num_workers (the server's: 2)")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=0,
        help="OPENBLAS_NUM_THREADS for the processes (default: unset, as the server runs)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-texts", action="store_true", help="skip the text comparison")
    p.add_argument("--json", type=Path, help="write every record here")
    p.add_argument("--child", choices=("timing", "texts"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "timing":
        args.threads = int(args.threads)
        child_timing(args)
        return
    if args.child == "texts":
        args.threads = int(args.threads)
        child_texts(args)
        return

    threads = [int(t) for t in args.threads.split(",")]
    sizes = [int(n) for n in args.sizes.split(",")]
    utterances = pool()  # renders (and caches) the corpus once, before any timing
    frames: dict[int, int] = defaultdict(int)
    for u in utterances:
        frames[window_frames(len(u.samples))] += 1
    print(
        f"{len(utterances)} utterances of {utterances[0].duration_s:.1f}-"
        f"{utterances[-1].duration_s:.1f} s; windows (mel frames: count) "
        + ", ".join(f"{f}: {c}" for f, c in sorted(frames.items()))
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    records: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for b in range(args.blocks):
        for t in threads if b % 2 == 0 else threads[::-1]:
            records += spawn(args, "timing", t, args.seed + b)
            print(f"  block {b + 1}, cpu_threads {t}: {time.monotonic() - t0:.0f} s", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    timing_table(records, threads, sizes)
    texts: list[dict[str, Any]] = []
    if not args.no_texts:
        texts = spawn(args, "texts", max(threads), args.seed)
        print()
        texts_table(texts)
    if args.json:
        args.json.write_text(json.dumps({"timing": records, "texts": texts}, indent=1))


if __name__ == "__main__":
    main()
