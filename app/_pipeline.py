"""One session's voice pipeline: the stages of :mod:`app.stages`, wired by channels.

::

    frames ─► vad.run ─► listen.run ─► Responses.run ─► playout
              (Silero)   (turn machine,   (responder, clause-first TTS;
                          STT, turn checks) barge-in cancels its scope)

Each producer closes its send side; each stage ends when its input ends. :class:`Pipeline`
only wires them and gives the session its controls (response.create, response.cancel,
conversation items).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from app.stages import listen, vad
from app.stages.deps import Deps
from app.stages.listen import new_partial_words
from app.stages.messages import (
    FRAME_SAMPLES,
    PIPELINE_RATE,
    Control,
    Frame,
    ResponseSpec,
    Scored,
    UserTurn,
    new_item_id,
)
from app.stages.respond import Responses, first_clause

if TYPE_CHECKING:
    from app._conversation import Item

__all__ = [
    "FRAME_SAMPLES",
    "PIPELINE_RATE",
    "Control",
    "Deps",
    "Frame",
    "Pipeline",
    "ResponseSpec",
    "first_clause",
    "new_item_id",
    "new_partial_words",
]


class Pipeline:
    """The voice stages of one session; :meth:`run` lives in the session's nursery."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self.conversation = deps.conversation
        self.responses = Responses(deps)

    @property
    def responding(self) -> bool:
        return self.responses.statistics().active

    async def run(self, frames: trio.MemoryReceiveChannel[Frame | Control]) -> None:
        """Run the stages until ``frames`` ends or the session is cancelled."""
        server = self._deps.server
        scored_send, scored_recv = trio.open_memory_channel[Scored | Control](
            server.frame_queue_frames
        )
        turns_send, turns_recv = trio.open_memory_channel[UserTurn](server.turn_queue)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(vad.run, frames, scored_send, self._deps)
            nursery.start_soon(listen.run, scored_recv, turns_send, self.responses, self._deps)
            nursery.start_soon(self.responses.run, turns_recv, turns_send.clone())

    def add_item(self, item: Item, previous_item_id: str | None = None) -> None:
        """Add to the conversation; emits ``conversation.item.added`` and ``done``."""
        self._deps.add_item(item, previous_item_id)

    def request_response(self, spec: ResponseSpec) -> None:
        """response.create.

        Raises:
            trio.WouldBlock: the pipeline cannot take it now.
        """
        self.responses.request(spec)

    def cancel_response(self, reason: str) -> bool:
        """Stop the current response now; whether there was one."""
        return self.responses.cancel(reason)
