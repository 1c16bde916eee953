"""What scoring one VAD frame costs the process: on the event loop against a thread hop.

Not a test. Every session's uploads are scored frame by frame (32 ms each), so this is
paid ~31 times a second per talking session. Prints the process CPU time per frame of
Silero's ``prob`` called inline, called through ``trio.to_thread.run_sync`` with a
limiter (what app/_models.py did for every frame), and of ``probs`` scoring 4 consecutive
frames (a 100 ms upload) in one call, inline, in one run.

    .venv/bin/python bench/vad_hop.py
"""

from __future__ import annotations

import time

import numpy as np
import trio

from models.vad import FRAME_SAMPLES, SileroVad, VadState

FRAMES = 3000


def _cpu() -> float:
    return time.process_time()  # every thread of the process: the hop's worker too


async def main() -> None:
    vad = SileroVad()
    state = VadState()
    rng = np.random.default_rng(0)
    frame = (rng.standard_normal(FRAME_SAMPLES) * 3000).astype(np.int16)
    limiter = trio.CapacityLimiter(2)
    for _ in range(200):  # warm both paths
        vad.prob(state, frame)
        await trio.to_thread.run_sync(vad.prob, state, frame, limiter=limiter)
    results: dict[str, list[float]] = {"inline": [], "thread hop": [], "4 in one call": []}
    four = [frame] * 4
    for _ in range(3):  # interleaved rounds: the machine is shared
        t0 = _cpu()
        for _ in range(FRAMES):
            vad.prob(state, frame)
            await trio.lowlevel.checkpoint()
        results["inline"].append((_cpu() - t0) / FRAMES)
        t0 = _cpu()
        for _ in range(FRAMES):
            await trio.to_thread.run_sync(vad.prob, state, frame, limiter=limiter)
        results["thread hop"].append((_cpu() - t0) / FRAMES)
        t0 = _cpu()
        for _ in range(FRAMES // 4):
            vad.probs(state, four)
            await trio.lowlevel.checkpoint()
        results["4 in one call"].append((_cpu() - t0) / (FRAMES // 4 * 4))
    inline = sorted(results["inline"])[1]
    for name, values in results.items():
        median = sorted(values)[1]
        rounds = ", ".join(f"{v * 1e6:.0f}" for v in values)
        ratio = median / inline
        print(f"{name:>13}: {median * 1e6:6.0f} us CPU per frame ({rounds}), {ratio:.2f}x")


if __name__ == "__main__":
    trio.run(main)
