"""The VAD stage: Silero probabilities for each frame (a backlog scored in one thread call)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from app.stages.messages import FRAME_SAMPLES, PIPELINE_RATE, Control, Frame, Scored
from audio import StreamResampler
from models import ModelError, VadState

if TYPE_CHECKING:
    from app.stages.deps import Deps

VAD_BATCH = 16  # frames scored per worker-thread call when a backlog has built up


async def run(
    frames: trio.MemoryReceiveChannel[Frame | Control],
    out: trio.MemorySendChannel[Scored | Control],
    deps: Deps,
) -> None:
    """Score every frame (in order with the client's buffer events) until ``frames`` ends.

    ``loopback`` sessions send their audio straight back to playout instead.
    """
    state = VadState()  # the model's recurrent state: this session's, this task's
    loopback: StreamResampler | None = None
    async with frames, out:
        while True:
            try:
                batch = [await frames.receive()]
            except trio.EndOfChannel:
                return
            while len(batch) < VAD_BATCH:
                try:
                    batch.append(frames.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            config = deps.config()
            if config.responder == "loopback":
                rate = config.output_sample_rate
                for item in batch:
                    if isinstance(item, Frame):
                        if loopback is None or loopback.out_rate != rate:
                            loopback = StreamResampler(PIPELINE_RATE, rate)
                        await deps.playout.put(loopback.feed(item.samples))
                continue
            vad_mode = config.turn_detection is not None
            scored = [
                f
                for f in batch
                if vad_mode and isinstance(f, Frame) and len(f.samples) == FRAME_SAMPLES
            ]
            probs: list[float] = []
            if scored:
                try:
                    probs = await deps.hub.infer_vad(
                        _score, deps, state, scored, frames=len(scored)
                    )
                except ModelError as exc:
                    deps.model_error("vad", exc)
                    probs = [0.0] * len(scored)
            prob_of = dict(zip(map(id, scored), probs, strict=True))
            for item in batch:
                if isinstance(item, Control):
                    await out.send(item)
                else:
                    await out.send(Scored(item, prob_of.get(id(item))))


def _score(deps: Deps, state: VadState, frames: list[Frame]) -> list[float]:
    return deps.hub.models.vad.probs(state, [f.samples for f in frames])
