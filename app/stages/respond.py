"""The respond stage: one response at a time, each in its own cancel scope.

The responder's text is cut into pieces (the first at its first clause, so speech starts
early; then sentences), Piper speaks each one, playout paces it out. Barge-in cancels the
scope and flushes playout; speech that may still turn out not to be a turn only pauses
playout, and :meth:`Responses.resume` carries on where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from app._conversation import Item, spoken_prefix
from app._scheduler import Priority
from app.stages.messages import UserTurn, new_id
from audio import StreamResampler
from models import ModelError, ResponseRequest
from models.sentences import ClauseCutter

if TYPE_CHECKING:
    from app.stages.deps import Deps


log = logging.getLogger(__name__)


# The first piece is what the user waits for: Piper takes ~30 ms a word on this CPU, and
# the first piece plays for ~2 s, long enough to synthesize the next sentence meanwhile.
FIRST_PIECE = {"conjunction_after_words": 4, "max_first_words": 8}


def cutter() -> ClauseCutter:
    return ClauseCutter(**FIRST_PIECE)


def first_clause(text: str) -> str:
    """The first piece the response side will cut from ``text`` (echo prefetch)."""
    pieces = cutter()
    parts = pieces.feed(text) + pieces.flush()
    return parts[0] if parts else ""


@dataclass(frozen=True, slots=True)
class ResponseStats:
    """A snapshot for other stages and the session's monitoring."""

    active: bool
    paused: bool
    response_id: str | None


@dataclass(slots=True)
class _Response:
    id: str
    item_id: str
    turn: UserTurn
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    text: str = ""
    first_token_at: float | None = None
    first_audio_queued_at: float | None = None
    truncated_ms: int | None = None
    cancel_reason: str | None = None
    spoken: list[tuple[str, int]] = field(default_factory=list)  # (piece, out samples)
    queued: int = 0  # samples handed to playout


class Responses:
    """Runs replies (:meth:`run`) and takes the other stages' and the client's controls.

    The controls are synchronous and only touch the current response's cancel scope and
    the playout buffer, as a barge-in must act before the next frame.
    """

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._current: _Response | None = None
        self._paused = False
        self._requests: trio.MemorySendChannel[UserTurn] | None = None

    def statistics(self) -> ResponseStats:
        r = self._current
        return ResponseStats(r is not None, self._paused, None if r is None else r.id)

    # -- controls ---------------------------------------------------------------------

    def room(self) -> int:
        """How many more ``response.create`` requests the queue takes now."""
        if self._requests is None:
            return 0
        stats = self._requests.statistics()
        return int(stats.max_buffer_size - stats.current_buffer_used)

    def request(self, instructions: str | None) -> None:
        """``response.create``: a reply to the conversation as it stands.

        Raises:
            trio.WouldBlock: too many responses are queued already (or none can be yet).
        """
        if self._requests is None:
            raise trio.WouldBlock
        now = trio.current_time()
        text = self._deps.conversation.last_user_text()
        self._requests.send_nowait(UserTurn("", text, now, now, now, None, instructions))

    def pause(self) -> None:
        """Speech during the reply: the stream goes silent now, the reply is kept."""
        r = self._current
        if r is None or self._paused:
            return
        self._paused = True
        log.debug("reply %s paused", r.id)
        self._deps.playout.pause()
        self._deps.events.emit(
            "output_audio_buffer.paused", response_id=r.id, item_id=r.item_id, reason="speech"
        )

    def resume(self, reason: str) -> None:
        """It was not a turn: the reply plays on from where it stopped."""
        if not self._paused:
            return
        self._paused = False
        self._deps.playout.resume()
        r = self._current
        log.debug("reply resumed: %s", reason)
        if r is not None:
            self._deps.metrics.false_interruptions.inc()
            self._deps.events.emit(
                "output_audio_buffer.resumed", response_id=r.id, item_id=r.item_id, reason=reason
            )

    def _unpause(self) -> None:
        """Playout runs again (the reply ended or was cut: nothing to announce)."""
        if self._paused:
            self._paused = False
            self._deps.playout.resume()

    def cancel(self, reason: str) -> bool:
        """Stop the current response now (barge-in, ``response.cancel``).

        The playout buffer is flushed at once, so the client falls silent within the
        stream's lead; the response task then reports what was played.
        """
        r = self._current
        self._unpause()
        if r is None or r.scope.cancel_called:
            return False
        playout = self._deps.playout
        r.truncated_ms = 1000 * playout.cursor_played // playout.sample_rate
        r.cancel_reason = reason
        playout.flush()
        r.scope.cancel()
        if reason == "turn_detected":
            self._deps.metrics.barge_ins.inc()
        return True

    # -- the task ---------------------------------------------------------------------

    async def run(
        self,
        turns: trio.MemoryReceiveChannel[UserTurn],
        requests: trio.MemorySendChannel[UserTurn],
    ) -> None:
        """Answer each turn in order until ``turns`` ends (or the session is cancelled).

        ``requests`` is a clone of the turns' send side: ``response.create`` queues there,
        in order with the voice turns.
        """
        self._requests = requests
        async with turns, requests:
            async for turn in turns:
                # A voice turn under "none" is transcribed only; response.create always
                # gets an answer.
                config = self._deps.config()
                td = config.turn_detection
                if turn.item_id and (
                    config.responder in ("none", "loopback")
                    or (td is not None and not td.create_response)
                ):
                    continue
                await self._respond(turn)

    async def _respond(self, turn: UserTurn) -> None:
        deps = self._deps
        response = _Response(new_id("resp_"), new_id("item_"), turn)
        config = deps.config()
        deps.playout.mark()
        self._current = response
        deps.events.emit(
            "response.created",
            response={"id": response.id, "object": "realtime.response", "status": "in_progress"},
        )
        status = "completed"
        error: dict[str, Any] | None = None
        try:
            with response.scope:
                try:
                    async with trio.open_nursery() as nursery:
                        send, recv = trio.open_memory_channel[str](deps.server.sentence_queue)
                        instructions = config.instructions
                        if turn.instructions is not None:
                            instructions = turn.instructions
                        request = ResponseRequest(
                            transcript=turn.transcript,
                            messages=deps.conversation.messages(instructions),
                            temperature=config.temperature,
                            max_output_tokens=config.max_response_output_tokens,
                        )
                        nursery.start_soon(self._produce_text, response, request, send)
                        nursery.start_soon(self._speak, response, recv, config.output_sample_rate)
                except* ModelError as group:
                    status = "failed"
                    exc = group.exceptions[0]
                    assert isinstance(exc, ModelError)
                    error = deps.model_error(exc.model, exc)
                # Completed (or failed part-way): the response lasts until its audio played.
                await deps.playout.drained()
        finally:
            self._current = None
            self._unpause()
        if response.scope.cancel_called:
            status = "cancelled"
        self._finish(response, status, error)

    async def _produce_text(
        self, response: _Response, request: ResponseRequest, pieces: trio.MemorySendChannel[str]
    ) -> None:
        pieces_of = cutter()

        async def emit(delta: str) -> None:
            if not delta:
                return
            if response.first_token_at is None:
                response.first_token_at = trio.current_time()
            response.text += delta
            self._deps.events.emit(
                "response.audio_transcript.delta",
                response_id=response.id,
                item_id=response.item_id,
                output_index=0,
                content_index=0,
                delta=delta,
            )
            for piece in pieces_of.feed(delta):
                await pieces.send(piece)

        async with pieces:
            responder = self._deps.responders(self._deps.config().responder)
            await responder.respond(request, emit)
            for piece in pieces_of.flush():
                await pieces.send(piece)

    async def _speak(
        self, response: _Response, pieces: trio.MemoryReceiveChannel[str], rate: int
    ) -> None:
        deps = self._deps
        tts = deps.hub.models.tts
        # One resampler for the whole response: joins between pieces stay continuous.
        resampler = StreamResampler(tts.sample_rate, rate)
        prefetched = response.turn.prefetched
        async with pieces:
            async for piece in pieces:
                if prefetched is not None and prefetched[0] == piece:
                    pcm = prefetched[1]
                else:
                    # the first piece is the reply's latency; later ones have its length
                    first = not response.spoken
                    priority = Priority.FIRST if first else Priority.REPLY
                    pcm = await deps.hub.infer("tts", priority, tts.synthesize, piece)
                prefetched = None
                out = resampler.feed(pcm)
                if len(out) and response.first_audio_queued_at is None:
                    response.first_audio_queued_at = trio.current_time()
                await deps.playout.put(out)
                response.queued += len(out)
                response.spoken.append((piece, len(out)))
        tail = resampler.feed(np.zeros(0, np.int16), last=True)
        if len(tail):
            await deps.playout.put(tail)
            response.queued += len(tail)

    def _finish(self, response: _Response, status: str, error: dict[str, Any] | None) -> None:
        deps = self._deps
        playout = deps.playout
        turn = response.turn
        played_ms = 1000 * playout.cursor_played // playout.sample_rate

        def since_end(t: float | None) -> int | None:
            return None if t is None else round(1000 * (t - turn.speech_end_at))

        latency = {
            "turn_detected_ms": since_end(turn.stopped_at),
            "transcript_ms": since_end(turn.transcript_at),
            "first_token_ms": since_end(response.first_token_at),
            "first_audio_queued_ms": since_end(response.first_audio_queued_at),
            "first_audio_byte_ms": since_end(playout.cursor_first_at),
        }
        for stage, t in (
            ("first_token", response.first_token_at),
            ("first_audio_queued", response.first_audio_queued_at),
            ("first_audio_byte", playout.cursor_first_at),
        ):
            if t is not None:
                deps.metrics.turn_latency.labels(stage).observe(t - turn.speech_end_at)
        deps.metrics.responses.labels(status).inc()
        # The history keeps what the listener heard: all of a completed reply, the played
        # part of a cut one, so the next turn's context matches the conversation.
        heard = response.text
        if status != "completed":
            heard = spoken_prefix(response.spoken, playout.cursor_played)
        if heard:
            deps.conversation.add(Item(response.item_id, "assistant", heard))
        ids = {"response_id": response.id, "item_id": response.item_id}
        deps.events.emit(
            "response.audio_transcript.done",
            **ids,
            output_index=0,
            content_index=0,
            transcript=response.text,
        )
        deps.events.emit("response.audio.done", **ids, output_index=0, content_index=0)
        body: dict[str, Any] = {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": [
                {
                    "id": response.item_id,
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "audio", "transcript": response.text}],
                }
            ],
            "audio_ms": played_ms,
            # voxwire: the reply's audio as synthesized; a completed reply played it all
            "audio_queued_ms": 1000 * response.queued // playout.sample_rate,
            "latency": latency,
        }
        if status == "cancelled":
            body["status_details"] = {"type": "cancelled", "reason": response.cancel_reason}
        elif status == "failed":
            body["status_details"] = {"type": "failed", "error": error}
        deps.events.emit("response.done", response=body)
        if status == "cancelled":
            deps.events.emit(
                "conversation.item.truncated",
                item_id=response.item_id,
                content_index=0,
                audio_end_ms=response.truncated_ms or 0,
            )
