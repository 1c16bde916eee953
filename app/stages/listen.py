"""The listen stage: turn taking and transcription, one owner task.

The task owns the session's :class:`audio.turn_taking.TurnMachine` (the turn's audio, the
turn decisions) and carries out what it returns: it emits the input events, starts the
work the machine asks for (partial, speculative and final decodes, turn checks, the echo's
first clause) as child tasks, and feeds their results back in. Results come back on the
task's own input channel, in order with the frames, so nothing here is shared between
tasks: a worker gets a copy of the audio and sends one frozen result.

Decodes are keyed by the turn and the pause they were asked for; the machine ignores a
stale one (speech resumed, the turn was cleared), and a stale worker is cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import trio

from app._conversation import Item
from app._scheduler import Priority, Stale
from app.stages.messages import PIPELINE_RATE, Control, Int16, Scored, UserTurn, new_item_id
from app.stages.respond import cutter, first_clause
from audio.turn_taking import (
    CancelResponse,
    CheckTurn,
    CommitEmpty,
    Interruption,
    PauseEnded,
    PausePlayout,
    PauseStarted,
    Phase,
    ResumePlayout,
    TurnDiscarded,
    TurnEnded,
    TurnEvent,
    TurnMachine,
    TurnSettings,
    TurnStarted,
    Words,
)
from models import ModelError
from models.sentences import norm_word, same_words
from models.turn_text import TextTurn, has_words, is_backchannel, text_turn

if TYPE_CHECKING:
    from app._config import SessionConfig
    from app.stages.deps import Deps
    from app.stages.respond import Responses

log = logging.getLogger(__name__)

ARRIVALS_KEPT = 1024  # frames (32 s) whose arrival time can be looked up
# A partial decodes at most the last this many samples of the turn: its cost stays that of
# a short window however long the turn grows, so the CPU is free for the speculative final
# when the pause comes. The words are lined up with those already sent.
PARTIAL_WINDOW = 3 * PIPELINE_RATE
MAX_PARTIAL_STRETCH = 8  # partials at most 8x further apart under load, then none
# semantic_vad with echo: the words' verdict at a pause also comes from a decode of its
# last seconds only (~3x cheaper than the whole turn's, and on the turn decisions' lane),
# so the turn can be committed, and its reply begun from the first clause of the partial
# transcript, before the full decode is in.
TAIL_WINDOW = 2 * PIPELINE_RATE
TAIL_MIN = TAIL_WINDOW + PIPELINE_RATE // 2  # a shorter turn's full decode is as quick


@dataclass(frozen=True, slots=True)
class _Decoded:
    kind: Literal["partial", "speculative", "final", "tail"]
    turn: int
    key: int  # the pause (speculative), the end (final), the position (partial)
    text: str | None  # None: the decode failed
    error: ModelError | None = None


@dataclass(frozen=True, slots=True)
class _Checked:
    turn: int
    pause: int
    until: int
    p: float | None  # None: the check failed


@dataclass(frozen=True, slots=True)
class _Prefetched:
    turn: int
    pause: int
    clause: str
    pcm: Int16 | None  # None: synthesis failed


@dataclass(frozen=True, slots=True)
class _UpstreamEnded:
    """The VAD stage closed its channel (private: the pump's last word)."""


_Input = Scored | Control | _Decoded | _Checked | _Prefetched | _UpstreamEnded


@dataclass(slots=True)
class _Final:
    """A committed turn on its way to its final transcript (results arrive in order)."""

    turn: int
    item: Item  # in the conversation from the commit on, its transcript to come
    end_sample: int
    audio_s: float
    speech_end_at: float
    stopped_at: float
    interrupting: bool
    text: str | None = None
    failed: ModelError | None = None
    prefetched: tuple[str, Int16] | None = None
    # the first clause is being synthesized: waiting for it is sooner than starting over
    prefetch_pending: bool = False
    # echo: the first clause of the partial transcript, spoken while the user still talked
    early_clause: str | None = None
    early: tuple[str, Int16] | None = None
    early_pending: bool = False
    # it may go to the responder before its transcript, speaking ``early`` meanwhile
    ahead: bool = False
    later: trio.MemorySendChannel[tuple[str, float]] | None = None  # handed over: its text
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    announced: bool = False  # its transcript event went out
    transcript_at: float = 0.0


def words_of(text: str) -> Words:
    verdict = text_turn(text)
    name: Literal["finished", "unfinished", "unknown"] = (
        "finished"
        if verdict is TextTurn.FINISHED
        else "unfinished"
        if verdict is TextTurn.UNFINISHED
        else "unknown"
    )
    return Words(
        name,
        has_words=has_words(text),
        backchannel=is_backchannel(text),
        count=len(text.split()),
    )


def new_partial_words(emitted: list[str], hypothesis: str) -> list[str]:
    """Words of ``hypothesis`` past those already emitted, if it agrees with them.

    Partial deltas cannot be taken back: when a re-decode revises words already sent, no
    delta is emitted until the final transcript (which is authoritative).
    """
    words = hypothesis.removesuffix("...").split()
    n = len(emitted)
    if len(words) <= n or [norm_word(w) for w in words[:n]] != [norm_word(w) for w in emitted]:
        return []
    return words[n:]


EARLY_TRIES = 3  # first-clause syntheses per turn from partials, at most
EARLY = -1  # the "pause" key of the first clause spoken from the partial transcript


def windowed_partial_words(emitted: list[str], hypothesis: str, overlap: int = 2) -> list[str]:
    """Words of ``hypothesis`` (a decode of the turn's last seconds only) past those already
    emitted: the last ``overlap`` emitted words must appear in it, and what follows them is
    new. Without such an anchor nothing is emitted (the final transcript is authoritative).
    """
    words = hypothesis.removesuffix("...").split()
    if not emitted:
        return words
    k = min(overlap, len(emitted))
    anchor = [norm_word(w) for w in emitted[-k:]]
    normed = [norm_word(w) for w in words]
    for j in range(len(normed) - k, -1, -1):  # the latest match: the window's end is newest
        if normed[j : j + k] == anchor:
            return words[j + k :]
    return []


def turn_settings(config: SessionConfig, deps: Deps) -> TurnSettings:
    server = deps.server
    td = config.turn_detection
    common = {
        "min_speech_ms": server.vad_min_speech_ms,
        "speculative_pause_ms": server.speculative_pause_ms,
        "check_pause_ms": server.turn_check_pause_ms,
        "max_turn_ms": int(server.max_turn_s * 1000),
        "interrupt_confirm_ms": server.interrupt_confirm_ms,
    }
    if td is None:
        return TurnSettings(mode=None, **common)  # type: ignore[arg-type]
    return TurnSettings(
        mode=td.type,  # type: ignore[arg-type]
        threshold=td.threshold,
        prefix_padding_ms=td.prefix_padding_ms,
        silence_duration_ms=td.silence_duration_ms,
        eagerness=td.eagerness,  # type: ignore[arg-type]
        interrupt_response=td.interrupt_response,
        **common,
    )


async def run(
    frames: trio.MemoryReceiveChannel[Scored | Control],
    turns: trio.MemorySendChannel[UserTurn],
    responses: Responses,
    deps: Deps,
) -> None:
    """Take turns from ``frames`` and send each transcribed one to ``turns``.

    Ends when ``frames`` ends; its workers are cancelled then.
    """
    send, receive = trio.open_memory_channel[_Input](deps.server.frame_queue_frames)
    async with turns, trio.open_nursery() as nursery:
        nursery.start_soon(_pump, frames, send.clone())
        listener = _Listener(deps, responses, turns, send, nursery)
        try:
            async with send, receive:
                async for message in receive:
                    if isinstance(message, _UpstreamEnded):
                        break
                    await listener.handle(message)
        finally:
            listener.close()
        nursery.cancel_scope.cancel()


async def _pump(
    frames: trio.MemoryReceiveChannel[Scored | Control], out: trio.MemorySendChannel[_Input]
) -> None:
    async with frames, out:
        async for item in frames:
            await out.send(item)
        await out.send(_UpstreamEnded())


class _Listener:
    """The owner task's state; only :func:`run`'s task calls it."""

    def __init__(
        self,
        deps: Deps,
        responses: Responses,
        turns: trio.MemorySendChannel[UserTurn],
        results: trio.MemorySendChannel[_Input],
        nursery: trio.Nursery,
    ) -> None:
        self._deps = deps
        self._responses = responses
        self._turns = turns
        self._results = results
        self._nursery = nursery
        self._config = deps.config()
        self._machine = TurnMachine(turn_settings(self._config, deps), PIPELINE_RATE)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)
        self._item_id: str | None = None
        self._finals: deque[_Final] = deque()
        # work for the turn in progress, by pause
        self._spec: dict[int, str] = {}
        self._prefetch: dict[int, tuple[str, Int16]] = {}
        self._scopes: dict[tuple[str, int], trio.CancelScope] = {}
        # partial transcripts of the turn in progress
        self._partial_scope: trio.CancelScope | None = None
        self._partial_windowed = False
        self._early_scope: trio.CancelScope | None = None
        self._early: tuple[str, Int16] | None = None
        self._early_clause: str | None = None
        self._early_tries = 0
        self._emitted: list[str] = []
        self._next_partial = 0
        self._tail = PIPELINE_RATE * deps.server.speculative_pause_ms // 1000
        self._partial_interval = PIPELINE_RATE * deps.server.partial_interval_ms // 1000

    def close(self) -> None:
        """The stage ends: replies waiting for a transcript get none."""
        for final in self._finals:
            self._tell_later(final, None)

    # -- input ------------------------------------------------------------------------

    async def handle(self, message: _Input) -> None:
        m = self._machine
        config = self._deps.config()
        if config is not self._config:
            self._config = config
            await self._carry_out(m.configure(turn_settings(config, self._deps)))
        replying = self._responses.statistics().active
        events: list[TurnEvent]
        if isinstance(message, Scored):
            frame = message.frame
            self._arrivals.append((frame.start, frame.arrived))
            events = m.feed(frame.samples, message.prob, replying=replying)
            await self._carry_out(events)
            self._maybe_partial()
        elif isinstance(message, Control):
            events = m.commit(replying=replying) if message.kind == "commit" else m.clear()
            await self._carry_out(events)
        elif isinstance(message, _Decoded):
            await self._decoded(message)
        elif isinstance(message, _Checked):
            self._scopes.pop(("check", message.until), None)
            log.debug("turn check %s at %d: p=%s", message.turn, message.until, message.p)
            if message.p is not None:
                await self._carry_out(m.checked(message.turn, message.pause, message.p))
        elif isinstance(message, _Prefetched):
            done = None if message.pcm is None else (message.clause, message.pcm)
            if message.pause == EARLY:
                if message.turn == m.turn and message.clause == self._early_clause:
                    self._early_scope, self._early = None, done
                for final in self._finals:
                    if final.turn == message.turn and message.clause == final.early_clause:
                        final.early, final.early_pending = done, False
            else:
                self._scopes.pop(("prefetch", message.pause), None)
                if message.turn == m.turn and done is not None:
                    self._prefetch[message.pause] = done
                waiting = self._final_at(message.turn, message.pause)
                if waiting is not None:
                    waiting.prefetched = done
                    waiting.prefetch_pending = False
            await self._flush_finals()

    async def _carry_out(self, events: list[TurnEvent]) -> None:
        deps = self._deps
        for event in events:
            log.debug("turn event %s", event)
            match event:
                case TurnStarted():
                    self._new_turn()
                    assert self._item_id is not None
                    deps.events.emit(
                        "input_audio_buffer.speech_started",
                        item_id=self._item_id,
                        audio_start_ms=event.audio_start_ms,
                    )
                case PauseStarted():
                    # (a partial in flight keeps its thread either way: let it report)
                    audio = self._machine.audio(event.until_sample)
                    self._start("speculative", event.turn, event.pause, audio)
                    # (only while a first clause is ready or on its way: without one the
                    # reply waits for the final anyway, and the tail would only slow it)
                    if (
                        len(audio) >= TAIL_MIN
                        and self._speaks_ahead()
                        and self._machine.interruption is Interruption.NONE
                        and (self._early is not None or self._early_scope is not None)
                        # (a decode on the turn decisions' lane: not while the scheduler
                        # falls behind, where it would delay other sessions' finals)
                        and self._deps.hub.scheduler.partial_stretch() < 2.0
                    ):
                        self._start("tail", event.turn, event.pause, audio[-TAIL_WINDOW:])
                case PauseEnded():
                    # only this pause's work can be in flight: earlier ones ended too
                    for scope in self._scopes.values():
                        scope.cancel()
                    self._scopes.clear()
                    self._spec.pop(event.pause, None)
                    self._prefetch.pop(event.pause, None)
                case CheckTurn():
                    self._check(event)
                case TurnEnded():
                    await self._ended(event)
                case TurnDiscarded():
                    self._cancel_turn_work()
                    self._item_id = None
                case CommitEmpty():
                    deps.error(
                        "input_audio_buffer_commit_empty",
                        "input_audio_buffer.commit: no audio has been received since the last turn",
                        error_type="invalid_request_error",
                    )
                case PausePlayout():
                    self._responses.pause()
                case ResumePlayout():
                    self._responses.resume(event.reason)
                case CancelResponse():
                    self._responses.cancel("turn_detected")

    # -- the turn in progress ---------------------------------------------------------

    def _new_turn(self) -> None:
        self._cancel_turn_work()
        self._item_id = new_item_id()
        self._emitted = []
        self._next_partial = self._machine.position  # the first partial at once

    def _cancel_turn_work(self) -> None:
        self._cancel_partial()
        if self._early_scope is not None:
            self._early_scope.cancel()
        self._early_scope, self._early, self._early_clause = None, None, None
        self._early_tries = 0
        for scope in self._scopes.values():
            scope.cancel()
        self._scopes.clear()
        self._spec.clear()
        self._prefetch.clear()

    def _cancel_partial(self) -> None:
        if self._partial_scope is not None:
            self._partial_scope.cancel()
            self._partial_scope = None

    def _schedule_partial(self) -> None:
        # Until the first words appear, look again sooner.
        interval = self._partial_interval if self._emitted else self._partial_interval // 2
        # Under load partials thin out first (then stop: see _maybe_partial), so finals
        # and first replies keep their latency.
        stretch = self._deps.hub.scheduler.partial_stretch()
        if stretch != math.inf:
            interval = int(interval * min(stretch, MAX_PARTIAL_STRETCH))
        self._next_partial = self._machine.position + interval

    def _maybe_partial(self) -> None:
        m = self._machine
        if (
            self._partial_interval <= 0
            or self._deps.hub.partials_off()
            or self._partial_scope is not None
            or m.phase is not Phase.SPEAKING
            or m.position < self._next_partial
        ):
            return
        self._schedule_partial()
        if self._deps.hub.scheduler.partial_stretch() == math.inf:
            self._deps.metrics.partials_skipped.inc()
            return
        self._partial_scope = trio.CancelScope()
        audio = m.audio()
        self._partial_windowed = len(audio) > PARTIAL_WINDOW
        self._nursery.start_soon(
            self._decode,
            "partial",
            m.turn,
            m.position,
            audio[-PARTIAL_WINDOW:],
            self._partial_scope,
        )

    def _speaks_ahead(self) -> bool:
        """semantic_vad with the embedded echo: a reply can begin before the transcript
        (its first clause is known from the partials)."""
        config = self._deps.config()
        hub = self._deps.hub
        td = config.turn_detection
        return (
            td is not None
            and td.type == "semantic_vad"
            and td.create_response
            and config.responder == "echo"
            and config.speaks
            and config.speed == 1.0
            and not hub.remote_stt
            and not hub.remote_tts
        )

    def _start(
        self, kind: Literal["speculative", "tail"], turn: int, key: int, audio: Int16
    ) -> None:
        scope = trio.CancelScope()
        self._scopes[(kind, key)] = scope
        self._nursery.start_soon(self._decode, kind, turn, key, audio, scope)

    def _check(self, event: CheckTurn) -> None:
        model = self._deps.hub.models.turn
        audio = self._machine.audio(event.until_sample)[-model.window_samples :]
        scope = trio.CancelScope()
        self._scopes[("check", event.until_sample)] = scope
        self._nursery.start_soon(
            self._turn_check, event.turn, event.pause, event.until_sample, audio, scope
        )

    # -- workers (child tasks: a copy of the audio in, one result out) ---------------

    async def _decode(
        self,
        kind: Literal["partial", "speculative", "final", "tail"],
        turn: int,
        key: int,
        audio: Int16,
        scope: trio.CancelScope,
    ) -> None:
        hub = self._deps.hub
        with scope:
            try:
                # the sized window for all (bench/wer.py: no worse than the 30 s one on
                # conversational speech, +0.8 points on short commands, 2.5-4x faster)
                partial = kind == "partial"
                text = await hub.transcribe(
                    kind,
                    audio,
                    self._deps.config(),
                    # a newer partial of this session replaces a queued one
                    key=(self, "partial") if partial else None,
                )
            except Stale:  # (one partial in flight per session: not expected)
                await self._results.send(_Decoded(kind, turn, key, ""))
                return
            except ModelError as exc:
                await self._results.send(_Decoded(kind, turn, key, None, exc))
                return
            await self._results.send(_Decoded(kind, turn, key, text))

    async def _turn_check(
        self, turn: int, pause: int, until: int, audio: Int16, scope: trio.CancelScope
    ) -> None:
        hub = self._deps.hub
        with scope:
            try:
                p: float | None = await hub.infer(
                    "turn", Priority.TURN, hub.models.turn.predict, audio
                )
            except ModelError as exc:
                log.warning("turn check failed: %s", exc)
                p = None
            await self._results.send(_Checked(turn, pause, until, p))

    async def _synthesize_first(
        self, turn: int, pause: int, clause: str, scope: trio.CancelScope
    ) -> None:
        """With ``echo`` the reply is known once the speculative transcript is: speak its
        first clause now, while the pause is still being judged."""
        hub = self._deps.hub
        with scope:
            try:
                speed = self._deps.config().speed
                pcm = await hub.infer(
                    "tts", Priority.FIRST, hub.models.tts.synthesize, clause, speed
                )
            except ModelError as exc:
                log.warning("speculative synthesis failed: %s", exc)
                await self._results.send(_Prefetched(turn, pause, clause, None))
                return
            await self._results.send(_Prefetched(turn, pause, clause, pcm))

    # -- results ----------------------------------------------------------------------

    async def _decoded(self, result: _Decoded) -> None:
        m = self._machine
        if result.kind == "partial":
            log.debug("partial %s at %d: %r", result.turn, result.key, result.text)
            if self._partial_scope is not None and result.turn == m.turn:
                self._partial_scope = None
                # the next one counted from the end of this decode: the CPU stays partly
                # free for the speculative final, whenever the pause comes
                self._schedule_partial()
            if result.text and result.turn == m.turn and self._item_id is not None:
                self._emit_partial(result.text)
                # (a decode of the turn's last seconds: the words sent so far begin the turn)
                heard = " ".join(self._emitted) if self._partial_windowed else result.text
                self._speak_early(heard)
                await self._carry_out(m.heard(result.turn, words_of(result.text)))
            elif result.error is not None:
                log.warning("partial decode failed: %s", result.error)
        elif result.kind == "speculative":
            self._scopes.pop(("speculative", result.key), None)
            if result.text is None:
                log.warning("speculative decode failed: %s", result.error)
                words = Words()  # unknown: the silence window decides
                final = self._final_at(result.turn, result.key)
                if final is not None:  # the turn ended on it: it was the final one
                    final.failed = result.error or ModelError("stt", "no transcript")
            else:
                words = words_of(result.text)
                self._spec_ready(result.turn, result.key, result.text)
            log.debug("speculative %s at %d: %r %s", result.turn, result.key, result.text, words)
            await self._carry_out(m.transcribed(result.turn, result.key, words))
        elif result.kind == "tail":
            self._scopes.pop(("tail", result.key), None)
            # only until the whole pause's words are in (a failed tail: they will be)
            if result.text is not None and result.turn == m.turn and result.key not in self._spec:
                words = words_of(result.text)
                log.debug("tail %s at %d: %r %s", result.turn, result.key, result.text, words)
                await self._carry_out(m.transcribed(result.turn, result.key, words))
        else:
            final = self._final_at(result.turn, result.key)
            if final is not None:
                final.text = result.text
                final.failed = result.error
        await self._flush_finals()

    def _emit_partial(self, hypothesis: str) -> None:
        if self._partial_windowed:
            new = windowed_partial_words(self._emitted, hypothesis)
        else:
            new = new_partial_words(self._emitted, hypothesis)
        if not new:
            return
        delta = " ".join(new)
        self._deps.events.emit(
            "conversation.item.input_audio_transcription.delta",
            item_id=self._item_id,
            content_index=0,
            delta=(" " + delta) if self._emitted else delta,
        )
        self._emitted += new

    def _speak_early(self, hypothesis: str) -> None:
        """Echo: the first clause of the reply is that of the user's words, complete once
        something follows it in a partial: speak it now, again if a later partial differs."""
        if (
            self._deps.config().responder != "echo"
            or self._early_tries >= EARLY_TRIES
            or self._deps.hub.remote_tts  # (a service's voice: spoken when the reply is due)
        ):
            return
        pieces = cutter().feed(hypothesis)
        if not pieces or same_words(pieces[0], self._early_clause or ""):
            return
        if self._early_scope is not None:
            self._early_scope.cancel()
        self._early_tries += 1
        self._early_clause, self._early = pieces[0], None
        self._early_scope = trio.CancelScope()
        self._nursery.start_soon(
            self._synthesize_first, self._machine.turn, EARLY, pieces[0], self._early_scope
        )

    def _spec_ready(self, turn: int, pause: int, text: str) -> None:
        if turn == self._machine.turn:
            self._spec[pause] = text
        final = self._final_at(turn, pause)
        if final is not None and final.text is None:  # the turn ended while it ran
            final.text = text
            final.scope.cancel()
            return  # the reply is due now: its own synthesis is as soon
        if self._deps.config().responder == "echo" and not self._deps.hub.remote_tts:
            clause = first_clause(text)
            if clause:
                scope = trio.CancelScope()
                self._scopes[("prefetch", pause)] = scope
                self._nursery.start_soon(self._synthesize_first, turn, pause, clause, scope)

    # -- the end of a turn ------------------------------------------------------------

    def _final_at(self, turn: int, end: int) -> _Final | None:
        """The committed ``turn`` ending at sample ``end``, while it waits in line."""
        return next((f for f in self._finals if f.turn == turn and f.end_sample == end), None)

    def _pop_final(self, text: str | None) -> _Final:
        """The first committed turn is done; a reply handed it ahead gets ``text``."""
        final = self._finals.popleft()
        self._tell_later(final, text)
        return final

    def _arrived(self, sample: int) -> float:
        """When the frame holding ``sample`` was taken from the upload."""
        at = trio.current_time()
        for start, arrived in reversed(self._arrivals):
            at = arrived
            if start <= sample:
                break
        return at

    async def _ended(self, event: TurnEnded) -> None:
        deps = self._deps
        self._cancel_partial()
        if self._item_id is None:  # push-to-talk: the turn shows itself at the commit
            self._item_id = new_item_id()
        now = trio.current_time()
        item = Item(self._item_id, "user", audio=True, status="in_progress")
        final = _Final(
            event.turn,
            item,
            event.end_sample,
            max(0, event.end_sample - self._machine.turn_start) / PIPELINE_RATE,
            speech_end_at=self._arrived(event.end_sample) if event.speech_ended else now,
            stopped_at=now,
            interrupting=event.interrupting,
            ahead=self._speaks_ahead() and not event.interrupting,
        )
        if event.reason != "commit" or self._machine.settings.mode is not None:
            deps.events.emit(
                "input_audio_buffer.speech_stopped",
                item_id=item.id,
                audio_end_ms=event.audio_end_ms,
                # voxwire: what ended the turn (silence, semantic, commit, max_length)
                reason=event.reason,
            )
        previous = deps.conversation.add(item)
        deps.events.emit("input_audio_buffer.committed", item_id=item.id, previous_item_id=previous)
        deps.events.emit("conversation.item.added", item=item.describe(), previous_item_id=previous)
        deps.metrics.turns.inc()
        deps.on_turn()
        spec = self._spec.get(event.end_sample)
        # the pause's speculative decode, still running, is of this very audio: it is the
        # final one (starting over would pay for the decode twice, and under load wait twice)
        running = self._scopes.pop(("speculative", event.end_sample), None)
        if spec is not None:
            final.text = spec
            final.prefetched = self._prefetch.get(event.end_sample)
        elif running is not None:
            final.scope = running
        else:
            until = event.end_sample + self._tail if event.speech_ended else None
            audio = self._machine.audio(until)
            self._nursery.start_soon(
                self._decode, "final", event.turn, event.end_sample, audio, final.scope
            )
        # what is in flight for this turn's pauses is now stale, except the first clause
        prefetch = self._scopes.pop(("prefetch", event.end_sample), None)
        final.early_clause, final.early = self._early_clause, self._early
        final.early_pending = self._early_scope is not None and not event.interrupting
        self._early_scope = None  # (the final's now)
        self._cancel_turn_work()
        if prefetch is not None:  # (owned by the final now: a new turn must not cancel it)
            # (a pending barge-in is decided by its words first: no waiting on speech)
            final.prefetch_pending = final.prefetched is None and not final.interrupting
        self._item_id = None
        self._machine.release_turn()
        self._finals.append(final)
        await self._flush_finals()

    def _drop_item(self, item: Item) -> None:
        """A committed turn that holds no words (or was not a turn) leaves the history."""
        if self._deps.conversation.delete(item.id):
            self._deps.events.emit("conversation.item.deleted", item_id=item.id)

    async def _flush_finals(self) -> None:
        """Finish committed turns in order: announce each transcript as soon as it is in,
        hand the turn to the responder once its first clause is (or will not be) spoken."""
        deps = self._deps
        while self._finals:
            final = self._finals[0]
            if not final.announced:
                if final.failed is None and final.text is None:
                    if final.ahead and final.later is None and final.early is not None:
                        await self._hand_ahead(final)
                    return  # its decode is still running
                if final.failed is not None or final.text is None:
                    self._pop_final(None)
                    exc = final.failed or ModelError("stt", "no transcript")
                    deps.metrics.responses.labels("failed").inc()
                    deps.events.emit(
                        "conversation.item.input_audio_transcription.failed",
                        item_id=final.item.id,
                        content_index=0,
                        error=deps.model_error("stt", exc),
                    )
                    self._drop_item(final.item)
                    if final.interrupting:
                        await self._carry_out(self._machine.final(final.turn, Words()))
                    continue
                final.announced = True
                final.transcript_at = trio.current_time()
                deps.metrics.turn_latency.labels("transcript").observe(
                    final.transcript_at - final.speech_end_at
                )
                deps.events.emit(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=final.item.id,
                    content_index=0,
                    transcript=final.text,
                    usage={"type": "duration", "seconds": round(final.audio_s, 3)},
                )
                if final.interrupting:
                    decided = self._machine.final(final.turn, words_of(final.text))
                    await self._carry_out(decided)
                    if any(isinstance(e, TurnDiscarded) for e in decided):
                        self._pop_final(None)
                        self._drop_item(final.item)
                        continue  # not a turn: the reply plays on
                if not final.text:
                    self._pop_final(None)
                    self._drop_item(final.item)
                    continue
                frame = deps.take_frame()
                final.item.text, final.item.status = final.text, "completed"
                final.item.images = [frame] if frame else []
                deps.events.emit("conversation.item.done", item=final.item.describe())
            assert final.text is not None
            if final.later is not None:  # its reply is under way: this is what it waits for
                self._pop_final(final.text)
                continue
            first = first_clause(final.text)
            ready = [c for c in (final.early, final.prefetched) if c and same_words(c[0], first)]
            if not ready and (
                final.prefetch_pending
                or (final.early_pending and same_words(final.early_clause or "", first))
            ):
                return
            self._finals.popleft()
            log.debug(
                "turn %s to the responder: first clause %r, early %r (%s), at pause %s",
                final.turn,
                first,
                final.early_clause,
                "ready" if final.early else "pending" if final.early_pending else "none",
                "ready" if final.prefetched else "none",
            )
            prefetched = (first, ready[0][1]) if ready else None
            await self._turns.send(
                UserTurn(
                    final.item.id,
                    final.text,
                    final.speech_end_at,
                    final.stopped_at,
                    final.transcript_at,
                    prefetched,
                )
            )

    async def _hand_ahead(self, final: _Final) -> None:
        """The turn goes to the responder now, its transcript to follow on a channel."""
        assert final.early is not None
        send, receive = trio.open_memory_channel[tuple[str, float]](1)
        final.later = send
        log.debug("turn %s to the responder ahead: %r", final.turn, final.early[0])
        await self._turns.send(
            UserTurn(
                final.item.id,
                "",
                final.speech_end_at,
                final.stopped_at,
                None,
                final.early,
                later=receive,
            )
        )

    def _tell_later(self, final: _Final, text: str | None) -> None:
        """Give a reply under way its transcript (``None``: there is none)."""
        if final.later is None:
            return
        with final.later:
            # (a reply cut meanwhile closed its side: nothing to tell)
            with contextlib.suppress(trio.BrokenResourceError):
                if text is not None:
                    final.later.send_nowait((text, final.transcript_at))
