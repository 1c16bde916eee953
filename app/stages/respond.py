"""The respond stage: one response at a time, each in its own cancel scope.

The responder's text is cut into pieces (the first at its first clause, so speech starts
early; then sentences), Piper speaks each one, playout paces it out. Barge-in cancels the
scope and flushes playout; speech that may still turn out not to be a turn only pauses
playout, and :meth:`Responses.resume` carries on where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from app._conversation import Item, last_user_text, spoken_prefix
from app._realtime import chat_tool_choice, chat_tools
from app._scheduler import Priority
from app.stages.messages import Int16, ResponseSpec, UserTurn, new_id
from audio import StreamResampler
from models import ModelError, ResponseRequest, ToolCallDelta, Usage
from models.sentences import ClauseCutter, same_words, words_after

if TYPE_CHECKING:
    from app._config import SessionConfig
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
    turn: UserTurn
    spec: ResponseSpec
    modalities: tuple[str, ...]
    in_conversation: bool  # conversation "none": out of band, the items are not kept
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    text: str = ""
    message: Item | None = None  # the assistant message, once the first text came
    calls: dict[int, Item] = field(default_factory=dict)  # by the responder's call index
    output: list[Item] = field(default_factory=list)  # output items in order
    usage: Usage | None = None
    error: dict[str, Any] | None = None  # a failure that did not end the stream
    first_token_at: float | None = None
    first_audio_queued_at: float | None = None
    truncated_ms: int | None = None
    cancel_reason: str | None = None
    spoken: list[tuple[str, int]] = field(default_factory=list)  # (piece, out samples)
    queued: int = 0  # samples handed to playout

    @property
    def speaks(self) -> bool:
        return "audio" in self.modalities


class _Output:
    """One response's output as the responder produces it (a :class:`ResponseSink`):
    output items and their events, and the pieces of text to speak."""

    def __init__(
        self, deps: Deps, response: _Response, pieces: trio.MemorySendChannel[str] | None
    ) -> None:
        self._deps = deps
        self._r = response
        self._pieces = pieces
        self._cutter = cutter()

    def _emit(self, kind: str, **fields: Any) -> None:
        self._deps.events.emit(kind, response_id=self._r.id, **fields)

    def _first_token(self) -> None:
        if self._r.first_token_at is None:
            self._r.first_token_at = trio.current_time()

    def added(self, item: Item) -> None:
        r = self._r
        r.output.append(item)
        self._emit(
            "response.output_item.added", output_index=len(r.output) - 1, item=item.describe()
        )
        if r.in_conversation:
            previous = self._deps.conversation.add(item)
            self._deps.events.emit(
                "conversation.item.added", item=item.describe(), previous_item_id=previous
            )

    def done(self, item: Item) -> None:
        r = self._r
        self._emit(
            "response.output_item.done", output_index=r.output.index(item), item=item.describe()
        )
        if r.in_conversation and self._deps.conversation.get(item.id) is item:
            self._deps.events.emit("conversation.item.done", item=item.describe())

    def part(self, text: str) -> dict[str, Any]:
        if self._r.speaks:
            return {"type": "audio", "transcript": text}
        return {"type": "text", "text": text}

    def message(self) -> Item:
        """The assistant message, added (with its content part) on first use."""
        r = self._r
        if r.message is None:
            r.message = Item(new_id("item_"), "assistant", audio=r.speaks, status="in_progress")
            self.added(r.message)
            self._emit(
                "response.content_part.added",
                item_id=r.message.id,
                output_index=r.output.index(r.message),
                content_index=0,
                part=self.part(""),
            )
        return r.message

    async def text(self, delta: str) -> None:
        if not delta:
            return
        r = self._r
        self._first_token()
        message = self.message()
        r.text += delta
        message.text = r.text
        kind = "output_audio_transcript" if r.speaks else "output_text"
        self._emit(
            f"response.{kind}.delta",
            item_id=message.id,
            output_index=r.output.index(message),
            content_index=0,
            delta=delta,
        )
        if r.speaks and self._pieces is not None:
            for piece in self._cutter.feed(delta):
                await self._pieces.send(piece)

    async def tool_call(self, delta: ToolCallDelta) -> None:
        r = self._r
        self._first_token()
        item = r.calls.get(delta.index)
        if item is None:
            if not delta.name:
                raise ModelError("llm", f"tool call {delta.index} began without a name")
            item = Item(
                new_id("item_"),
                "assistant",
                type="function_call",
                status="in_progress",
                call_id=delta.call_id or new_id("call_"),
                name=delta.name,
            )
            r.calls[delta.index] = item
            self.added(item)
        if delta.arguments:
            item.arguments += delta.arguments
            self._emit(
                "response.function_call_arguments.delta",
                item_id=item.id,
                output_index=r.output.index(item),
                call_id=item.call_id,
                delta=delta.arguments,
            )
        await trio.lowlevel.checkpoint()

    def usage(self, usage: Usage) -> None:
        self._r.usage = usage

    async def finish(self) -> None:
        """The responder is done: speak the rest, and close each call (a call whose
        arguments are not a JSON object is an error event, and is not kept)."""
        r = self._r
        if r.speaks and self._pieces is not None:
            for piece in self._cutter.flush():
                await self._pieces.send(piece)
        for item in r.calls.values():
            try:
                arguments = json.loads(item.arguments or "{}")
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                item.status = "incomplete"
                error = self._deps.error(
                    "invalid_function_call_arguments",
                    f"the model's arguments for {item.name} are not a JSON object: "
                    f"{item.arguments[:200]!r}",
                    event_id=r.spec.event_id,
                )
                r.error = r.error or error
                self.done(item)
                continue
            item.status = "completed"
            self._emit(
                "response.function_call_arguments.done",
                item_id=item.id,
                output_index=r.output.index(item),
                call_id=item.call_id,
                name=item.name,
                arguments=item.arguments,
            )
            self.done(item)


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

    def busy(self) -> bool:
        """A response is in progress or about to start (a turn is queued for one)."""
        if self._current is not None:
            return True
        if self._requests is None:
            return False
        return bool(self._requests.statistics().current_buffer_used)

    def ready(self) -> bool:
        return self._requests is not None

    def request(self, spec: ResponseSpec) -> None:
        """``response.create``: a reply to the conversation as it stands (or to
        ``spec.input``).

        Raises:
            trio.WouldBlock: the pipeline cannot take it now.
        """
        if self._requests is None:
            raise trio.WouldBlock
        now = trio.current_time()
        items = self._deps.conversation.items if spec.input is None else spec.input
        text = last_user_text(items)
        self._requests.send_nowait(UserTurn("", text, now, now, now, None, spec))

    def pause(self) -> None:
        """Speech during the reply: the stream goes silent now, the reply is kept."""
        r = self._current
        if r is None or self._paused:
            return
        self._paused = True
        log.debug("reply %s paused", r.id)
        self._deps.playout.pause()
        item_id = None if r.message is None else r.message.id
        self._deps.events.emit(
            "voxwire.output_audio_buffer.paused",
            response_id=r.id,
            item_id=item_id,
            reason="speech",
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
            item_id = None if r.message is None else r.message.id
            self._deps.events.emit(
                "voxwire.output_audio_buffer.resumed",
                response_id=r.id,
                item_id=item_id,
                reason=reason,
            )

    def _unpause(self) -> None:
        """Playout runs again (the reply ended or was cut: nothing to announce)."""
        if self._paused:
            self._paused = False
            self._deps.playout.resume()

    def cancel(self, reason: str, *, barge_in: bool = True) -> bool:
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
        if r.queued:
            self._deps.events.emit("output_audio_buffer.cleared", response_id=r.id)
        if reason == "turn_detected" and barge_in:
            self._deps.metrics.barge_ins.inc()
        return True

    def current_item(self) -> str | None:
        """The id of the message the current response is speaking, if any."""
        r = self._current
        return None if r is None or r.message is None else r.message.id

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

    def _request(self, response: _Response, config: SessionConfig) -> ResponseRequest:
        spec = response.spec
        instructions = config.instructions if spec.instructions is None else spec.instructions
        extra = None if spec.input is None else list(spec.input)
        tools = config.tools if spec.tools is None else spec.tools
        choice = config.tool_choice if spec.tool_choice is None else spec.tool_choice
        return ResponseRequest(
            transcript=response.turn.transcript,
            messages=self._deps.conversation.messages(instructions, extra),
            temperature=config.temperature if spec.temperature is None else spec.temperature,
            max_output_tokens=spec.max_output_tokens or config.max_response_output_tokens,
            tools=chat_tools(tools),
            tool_choice=chat_tool_choice(choice) if tools else None,
        )

    async def _respond(self, turn: UserTurn) -> None:
        deps = self._deps
        config = deps.config()
        spec = turn.spec or ResponseSpec()
        if spec.voice is not None:  # this response only
            config = dataclasses.replace(config, voice=spec.voice)
        response = _Response(
            new_id("resp_"),
            turn,
            spec,
            spec.modalities or config.modalities,
            spec.conversation != "none",
        )
        deps.playout.mark()
        self._current = response
        deps.events.emit("response.created", response=self._describe(response, "in_progress"))
        status = "completed"
        error: dict[str, Any] | None = None
        try:
            with response.scope:
                try:
                    async with trio.open_nursery() as nursery:
                        send, recv = trio.open_memory_channel[str](deps.server.sentence_queue)
                        output = _Output(deps, response, send)
                        # handed over ahead of its transcript: its first clause now
                        ahead = turn.prefetched if turn.later and response.speaks else None
                        if ahead is not None:  # (what it says can be truncated at once)
                            output.message()
                        nursery.start_soon(self._produce, response, config, output, send)
                        nursery.start_soon(self._speak, response, recv, config, ahead)
                except* ModelError as group:
                    status = "failed"
                    exc = group.exceptions[0]
                    assert isinstance(exc, ModelError)
                    error = deps.model_error(exc.model, exc, event_id=spec.event_id)
                if response.error is not None and error is None:
                    status, error = "failed", response.error
                # Completed (or failed part-way): the response lasts until its audio played.
                await deps.playout.drained()
        finally:
            self._current = None
            self._unpause()
        if response.scope.cancel_called:
            status = "cancelled"
        self._finish(response, status, error)

    async def _produce(
        self,
        response: _Response,
        config: SessionConfig,
        output: _Output,
        pieces: trio.MemorySendChannel[str],
    ) -> None:
        async with pieces:
            later = response.turn.later
            if later is not None:
                async with later:
                    try:
                        text, at = await later.receive()
                    except trio.EndOfChannel:
                        # the turn held no words after all, or its decode failed (said in
                        # its own events): what was said ahead stops, like a barge-in
                        self.cancel("turn_detected", barge_in=False)
                        return
                response.turn = dataclasses.replace(
                    response.turn, transcript=text, transcript_at=at, later=None
                )
            request = self._request(response, config)
            responder = self._deps.responders(self._deps.config().responder)
            await responder.respond(request, output)
            await output.finish()

    async def _speak(
        self,
        response: _Response,
        pieces: trio.MemoryReceiveChannel[str],
        config: SessionConfig,
        ahead: tuple[str, Int16] | None,
    ) -> None:
        deps = self._deps
        out_rate = config.output_sample_rate
        # One resampler for the whole response (joins between pieces stay continuous);
        # a new one only if the voice's rate changes (a service fell back to the local one).
        resampler: StreamResampler | None = None
        prefetched = response.turn.prefetched if config.speed == 1.0 and ahead is None else None

        async def play(pcm: Int16, rate: int) -> int:
            nonlocal resampler
            if resampler is None or resampler.in_rate != rate:
                if resampler is not None:
                    await play_out(resampler.feed(np.zeros(0, np.int16), last=True))
                resampler = StreamResampler(rate, out_rate)
            return await play_out(resampler.feed(pcm))

        async def play_out(out: Int16) -> int:
            if len(out) and response.first_audio_queued_at is None:
                response.first_audio_queued_at = trio.current_time()
                deps.events.emit("output_audio_buffer.started", response_id=response.id)
            if len(out) and response.queued and not deps.playout.queued_samples:
                deps.metrics.reply_gaps.inc()  # the next piece came late (the lead is all left)
            await deps.playout.put(out)
            response.queued += len(out)
            return len(out)

        rate = deps.hub.models.tts.sample_rate
        async with pieces:
            if ahead is not None:
                response.spoken.append((ahead[0], await play(ahead[1], rate)))
            async for piece in pieces:
                if ahead is not None:
                    said, ahead = ahead[0], None
                    if same_words(piece, said):
                        continue  # it was said, from the partial transcript
                    # the final heard the clause a little differently: say only what the
                    # spoken one did not cover (never the same words twice)
                    log.debug("first clause %r, spoken ahead as %r", piece, said)
                    piece = words_after(said, piece)
                    if not piece:
                        continue
                samples = 0
                if prefetched is not None and prefetched[0] == piece:
                    samples += await play(prefetched[1], rate)
                else:
                    # the first piece is the reply's latency; later ones have its length
                    priority = Priority.FIRST if not response.spoken else Priority.REPLY
                    speech = deps.hub.synthesize(piece, priority, config)
                    async with aclosing(speech) as chunks:
                        async for pcm, rate in chunks:
                            samples += await play(pcm, rate)
                prefetched = None
                response.spoken.append((piece, samples))
        if resampler is not None:
            await play_out(resampler.feed(np.zeros(0, np.int16), last=True))

    def _describe(self, response: _Response, status: str) -> dict[str, Any]:
        """The GA response object (``response.created``/``done``)."""
        spec = response.spec
        usage = response.usage
        body: dict[str, Any] = {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": [item.describe() for item in response.output],
            "output_modalities": list(response.modalities),
            "metadata": spec.metadata,
            "usage": None
            if usage is None
            else {
                "total_tokens": usage.total_tokens,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            },
        }
        if not response.in_conversation:
            body["conversation_id"] = None
        return body

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
        output = _Output(deps, response, None)
        message = response.message
        if message is not None:
            # The history keeps what the listener heard: all of a completed reply, the
            # played part of a cut one, so the next turn's context matches the conversation.
            if status != "completed" and response.speaks:
                message.text = spoken_prefix(response.spoken, playout.cursor_played)
                if status == "cancelled":
                    message.truncated_ms = response.truncated_ms or 0
            message.status = "completed" if status == "completed" else "incomplete"
            message.spoken = list(response.spoken)
            message.audio_ms = 1000 * response.queued // playout.sample_rate
            ids = {
                "item_id": message.id,
                "output_index": response.output.index(message),
                "content_index": 0,
            }
            if response.speaks:
                deps.events.emit("response.output_audio.done", response_id=response.id, **ids)
                deps.events.emit(
                    "response.output_audio_transcript.done",
                    response_id=response.id,
                    **ids,
                    transcript=response.text,
                )
            else:
                deps.events.emit(
                    "response.output_text.done", response_id=response.id, **ids, text=response.text
                )
            deps.events.emit(
                "response.content_part.done",
                response_id=response.id,
                **ids,
                part=output.part(response.text),
            )
            output.done(message)
        for call in response.calls.values():
            if call.status == "in_progress":  # cut short: never run, never sent
                call.status = "incomplete"
                output.done(call)
        body = self._describe(response, status)
        body.update(
            {
                "audio_ms": played_ms,
                # voxwire: the reply's audio as synthesized; a completed reply played it all
                "audio_queued_ms": 1000 * response.queued // playout.sample_rate,
                "latency": latency,
            }
        )
        if status == "cancelled":
            body["status_details"] = {"type": "cancelled", "reason": response.cancel_reason}
        elif status == "failed":
            body["status_details"] = {"type": "failed", "error": error}
        deps.events.emit("response.done", response=body)
        if response.queued and status != "cancelled":
            deps.events.emit("output_audio_buffer.stopped", response_id=response.id)
        if status == "cancelled" and message is not None and response.speaks:
            deps.events.emit(
                "conversation.item.truncated",
                item_id=message.id,
                content_index=0,
                audio_end_ms=response.truncated_ms or 0,
            )
