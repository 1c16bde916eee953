"""One session's voice pipeline: VAD → STT → responder → TTS → playout.

Three tasks in the session's nursery, joined by bounded channels (each producer closes its
send side):

- ``vad``: Silero probabilities per frame into :class:`audio.turn.TurnDetector`; builds
  :class:`Utterance` objects (with prefix padding), starts barge-in, handles push-to-talk
  commit/clear (they arrive in-band, in order with the audio).
- ``stt``: partial transcripts while an utterance grows, a speculative final decode at the
  first pause (kept if the pause becomes the end of the turn), the final transcript.
- ``responder``: one response at a time in its own cancel scope: the responder's text is
  cut into sentences, Piper speaks each one, playout paces it out. Barge-in cancels the
  scope and flushes playout.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import trio

from app._conversation import Conversation, Item, spoken_prefix
from app._errors import ApiError
from audio import StreamResampler
from audio.turn import SpeechStarted, SpeechStopped, TurnDetector, TurnEvent
from models import ModelError, Responder, ResponseRequest, SentenceCutter, VadState

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy.typing as npt

    from app._config import ServerConfig, SessionConfig
    from app._events import EventLog
    from app._metrics import Metrics
    from app._models import ModelHub
    from app._playout import Playout

log = logging.getLogger(__name__)

PIPELINE_RATE = 16000  # VAD and STT run at 16 kHz
FRAME_SAMPLES = 512  # one Silero VAD frame (32 ms)
VAD_BATCH = 16  # frames scored per worker-thread call when a backlog has built up

Int16 = np.ndarray[Any, np.dtype[np.int16]]


@dataclass(frozen=True, slots=True)
class Frame:
    """512 samples at 16 kHz; ``start`` counts samples since the session's first one."""

    samples: Int16
    start: int
    arrived: float  # trio time the audio was taken from the upload


@dataclass(frozen=True, slots=True)
class Control:
    """Client buffer events, carried in-band so they apply after the audio sent before them."""

    kind: Literal["commit", "clear"]


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(12)


def new_item_id() -> str:
    return _new_id("item_")


class Utterance:
    """One user turn's audio as it grows: written by the VAD task, read by the STT task."""

    def __init__(self, item_id: str, start_sample: int, max_samples: int) -> None:
        self.item_id = item_id
        self.start_sample = start_sample
        self.max_samples = max_samples
        self._chunks: list[Int16] = []
        self.samples = 0
        self.pause_sample: int | None = None  # where a pause began that may still resume
        self.quiet = False  # the latest frame was below the release threshold
        self.end_sample: int | None = None
        self.speech_end_at = 0.0  # trio time the end of speech arrived
        self.stopped_at = 0.0  # trio time the turn was committed
        self.discarded = False
        self.sent = False  # handed to the STT task
        self.partial_scope: trio.CancelScope | None = None  # a partial decode in flight
        self._changed = trio.Event()

    @property
    def ended(self) -> bool:
        return self.end_sample is not None

    @property
    def full(self) -> bool:
        return self.samples >= self.max_samples

    def _poke(self) -> None:
        # A partial decode still running is stale now: drop it so the final can start.
        if self.partial_scope is not None:
            self.partial_scope.cancel()
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def append(self, samples: Int16) -> None:
        room = self.max_samples - self.samples
        if room > 0 and len(samples):
            self._chunks.append(samples[:room])
            self.samples += min(room, len(samples))

    def audio(self, until_sample: int | None = None) -> Int16:
        """The audio from the turn's start up to ``until_sample`` (absolute), as held now."""
        data = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        if len(self._chunks) > 1:
            self._chunks = [data]
        if until_sample is not None:
            data = data[: max(0, until_sample - self.start_sample)]
        return data

    def mark_pause(self, sample: int) -> None:
        self.pause_sample = sample
        self._poke()

    def mark_resume(self) -> None:
        self.pause_sample = None
        self._poke()

    def end(self, end_sample: int, speech_end_at: float) -> None:
        self.end_sample = end_sample
        self.speech_end_at = speech_end_at
        self.stopped_at = trio.current_time()
        self._poke()

    def discard(self) -> None:
        self.discarded = True
        self._poke()


@dataclass(slots=True)
class UserTurn:
    """A committed, transcribed user turn, on its way to the responder."""

    item_id: str
    transcript: str
    speech_end_at: float
    stopped_at: float
    transcript_at: float
    prefetched: tuple[str, Int16] | None = None  # (first sentence, its speech) for echo
    instructions: str | None = None  # response.create's per-response instructions


@dataclass(slots=True)
class ActiveResponse:
    id: str
    item_id: str
    turn: UserTurn
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    text: str = ""
    first_token_at: float | None = None
    first_audio_queued_at: float | None = None
    truncated_ms: int | None = None
    cancel_reason: str | None = None
    spoken: list[tuple[str, int]] = field(default_factory=list)  # (sentence, out samples)


def new_partial_words(emitted: list[str], hypothesis: str) -> list[str]:
    """Words of ``hypothesis`` past those already emitted, if it agrees with them.

    Partial deltas cannot be taken back: when a re-decode revises words already sent, no
    delta is emitted until the final transcript (which is authoritative).
    """
    words = hypothesis.removesuffix("...").split()

    def norm(word: str) -> str:
        return word.lower().strip(".,!?;:\"'…")

    n = len(emitted)
    if len(words) <= n or [norm(w) for w in words[:n]] != [norm(w) for w in emitted]:
        return []
    return words[n:]


def first_sentence(text: str) -> str:
    """The first sentence the response side will cut from ``text`` (echo prefetch)."""
    cutter = SentenceCutter()
    parts = cutter.feed(text) + cutter.flush()
    return parts[0] if parts else ""


class Pipeline:
    """The voice tasks of one session; :meth:`run` lives in the session's nursery."""

    def __init__(
        self,
        *,
        events: EventLog,
        playout: Playout,
        hub: ModelHub,
        server: ServerConfig,
        metrics: Metrics,
        config: Callable[[], SessionConfig],
        on_turn: Callable[[], None],
        conversation: Conversation,
        responders: Callable[[str], Responder],
        take_frame: Callable[[], str | None],
    ) -> None:
        self._events = events
        self._playout = playout
        self._hub = hub
        self._server = server
        self._metrics = metrics
        self._config = config
        self._on_turn = on_turn
        self.conversation = conversation
        self._responders = responders
        self._take_frame = take_frame
        self._vad_state = VadState()
        self._detector: TurnDetector | None = None
        self._detector_key: object = None
        self._ring: deque[Frame] = deque()
        self._current: Utterance | None = None
        self._pause_arrived = 0.0
        self._loopback: StreamResampler | None = None
        self.response: ActiveResponse | None = None
        self._max_turn_samples = int(server.max_turn_s * PIPELINE_RATE)
        self._spec_samples = PIPELINE_RATE * server.speculative_pause_ms // 1000

    async def run(self, frames: trio.MemoryReceiveChannel[Frame | Control]) -> None:
        """Run the pipeline until ``frames`` ends or the session is cancelled."""
        utterances_send, utterances_recv = trio.open_memory_channel[Utterance](
            self._server.utterance_queue
        )
        turns_send, turns_recv = trio.open_memory_channel[UserTurn](self._server.turn_queue)
        self._requests = turns_send.clone()  # response.create
        async with self._requests, trio.open_nursery() as nursery:
            nursery.start_soon(self._vad_task, frames, utterances_send)
            nursery.start_soon(self._stt_task, utterances_recv, turns_send)
            nursery.start_soon(self._responder_task, turns_recv)

    # -- vad -------------------------------------------------------------------------

    async def _vad_task(
        self,
        frames: trio.MemoryReceiveChannel[Frame | Control],
        utterances: trio.MemorySendChannel[Utterance],
    ) -> None:
        async with frames, utterances:
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
                await self._vad_batch(batch, utterances)

    async def _vad_batch(
        self, batch: list[Frame | Control], utterances: trio.MemorySendChannel[Utterance]
    ) -> None:
        config = self._config()
        if config.responder == "loopback":
            for item in batch:
                if isinstance(item, Frame):
                    await self._loop_back(item, config.output_sample_rate)
            return
        vad_mode = config.turn_detection is not None
        scored = [
            f
            for f in batch
            if vad_mode and isinstance(f, Frame) and len(f.samples) == FRAME_SAMPLES
        ]
        probs: list[float] = []
        if scored:
            try:
                probs = await self._hub.infer(
                    "vad", self._score, scored, limiter=self._hub.vad_limiter
                )
            except ModelError as exc:
                self._model_error("vad", exc)
                probs = [0.0] * len(scored)
        prob_of = dict(zip(map(id, scored), probs, strict=True))
        for item in batch:
            if isinstance(item, Control):
                await self._control(item, utterances)
            elif id(item) in prob_of:
                await self._vad_frame(item, prob_of[id(item)], utterances)
            else:
                self._ptt_frame(item)

    def _score(self, frames: list[Frame]) -> list[float]:
        vad = self._hub.models.vad
        return [vad.prob(self._vad_state, f.samples) for f in frames]

    async def _loop_back(self, frame: Frame, rate: int) -> None:
        if self._loopback is None or self._loopback.out_rate != rate:
            self._loopback = StreamResampler(PIPELINE_RATE, rate)
        await self._playout.put(self._loopback.feed(frame.samples))

    def _detector_for(self, position: int) -> TurnDetector:
        """The turn detector for the current settings (rebuilt between turns on update)."""
        td = self._config().turn_detection
        assert td is not None
        if self._detector is None or (self._detector_key != td and not self._detector.speaking):
            self._detector = TurnDetector(
                PIPELINE_RATE,
                threshold=td.threshold,
                prefix_padding_ms=td.prefix_padding_ms,
                silence_duration_ms=td.silence_duration_ms,
                min_speech_ms=self._server.vad_min_speech_ms,
            )
            self._detector.position = position
            self._detector_key = td
            keep_ms = td.prefix_padding_ms + self._server.vad_min_speech_ms + 200
            self._ring = deque(self._ring, maxlen=math.ceil(keep_ms * 16 / FRAME_SAMPLES))
        return self._detector

    async def _vad_frame(
        self, frame: Frame, prob: float, utterances: trio.MemorySendChannel[Utterance]
    ) -> None:
        detector = self._detector_for(frame.start)
        self._ring.append(frame)
        utterance = self._current
        if utterance is not None:
            utterance.append(frame.samples)
        events = detector.feed(prob, len(frame.samples))
        pause = detector.pause
        if pause is not None and pause[1] == len(frame.samples):
            self._pause_arrived = frame.arrived  # the first silent frame: speech ended here
        if utterance is not None:
            utterance.quiet = pause is not None
            if pause is not None and pause[1] >= self._spec_samples:
                if utterance.pause_sample != pause[0]:
                    utterance.mark_pause(pause[0])
            elif pause is None and utterance.pause_sample is not None:
                utterance.mark_resume()
            if utterance.full and not events:
                events = detector.force_stop()
        await self._turn_events(events, frame, utterances)

    async def _turn_events(
        self, events: list[TurnEvent], frame: Frame, utterances: trio.MemorySendChannel[Utterance]
    ) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                await self._speech_started(event, utterances)
            elif isinstance(event, SpeechStopped):
                ended_at = self._pause_arrived if event.end_sample < frame.start else frame.arrived
                self._speech_stopped(event.end_sample, ended_at, event.audio_end_ms)

    async def _speech_started(
        self, event: SpeechStarted, utterances: trio.MemorySendChannel[Utterance]
    ) -> None:
        if self.response is not None:
            self.cancel_response("turn_detected")
        utterance = Utterance(_new_id("item_"), event.start_sample, self._max_turn_samples)
        for f in self._ring:
            if f.start + len(f.samples) > event.start_sample:
                utterance.append(f.samples[max(0, event.start_sample - f.start) :])
        if self._current is not None:  # push-to-talk audio, then VAD switched on
            self._current.discard()
        self._current = utterance
        self._events.emit(
            "input_audio_buffer.speech_started",
            item_id=utterance.item_id,
            audio_start_ms=event.audio_start_ms,
        )
        utterance.sent = True
        await utterances.send(utterance)

    def _speech_stopped(self, end_sample: int, ended_at: float, audio_end_ms: int) -> None:
        utterance = self._current
        if utterance is None:
            return
        self._current = None
        utterance.end(end_sample, ended_at)
        self._events.emit(
            "input_audio_buffer.speech_stopped",
            item_id=utterance.item_id,
            audio_end_ms=audio_end_ms,
        )
        self._committed(utterance)

    def _committed(self, utterance: Utterance) -> None:
        self._events.emit(
            "input_audio_buffer.committed", item_id=utterance.item_id, previous_item_id=None
        )
        self._metrics.turns.inc()
        self._on_turn()

    def _ptt_frame(self, frame: Frame) -> None:
        """Push-to-talk (and the short tail of a commit): everything is part of the turn."""
        if self._config().turn_detection is not None:
            if self._current is not None:
                self._current.append(frame.samples)
            return
        if self._current is None:
            self._current = Utterance(_new_id("item_"), frame.start, self._max_turn_samples)
        self._current.append(frame.samples)

    async def _control(
        self, control: Control, utterances: trio.MemorySendChannel[Utterance]
    ) -> None:
        if control.kind == "clear":
            if self._current is not None:
                self._current.discard()
                self._current = None
            self._detector = None  # back to silence; a new detector starts at the next frame
            self._ring.clear()
            return
        utterance = self._current
        if utterance is None or utterance.samples == 0:
            self._error(
                "input_audio_buffer_commit_empty",
                "input_audio_buffer.commit: no audio has been received since the last turn",
                error_type="invalid_request_error",
            )
            return
        end = utterance.start_sample + utterance.samples
        now = trio.current_time()
        if self._config().turn_detection is not None and self._detector is not None:
            stops = [e for e in self._detector.force_stop() if isinstance(e, SpeechStopped)]
            if stops:
                end = stops[0].end_sample
            ended_at = self._pause_arrived if utterance.pause_sample is not None else now
            self._speech_stopped(end, ended_at, 1000 * end // PIPELINE_RATE)
            return
        # push-to-talk: the user stopped talking when they committed
        if self.response is not None:
            self.cancel_response("turn_detected")
        self._current = None
        utterance.end(end, now)
        self._committed(utterance)
        if not utterance.sent:  # (a VAD turn when VAD was switched off mid-turn already is)
            utterance.sent = True
            await utterances.send(utterance)

    # -- stt -------------------------------------------------------------------------

    async def _stt_task(
        self,
        utterances: trio.MemoryReceiveChannel[Utterance],
        turns: trio.MemorySendChannel[UserTurn],
    ) -> None:
        async with utterances, turns:
            async for utterance in utterances:
                turn = await self._transcribe(utterance)
                if turn is not None and turn.transcript:
                    frame = self._take_frame()
                    self.add_item(
                        Item(turn.item_id, "user", turn.transcript, [frame] if frame else [])
                    )
                    await turns.send(turn)

    async def _decode(self, audio: Int16, *, abandon_on_cancel: bool = False) -> str:
        stt = self._hub.models.stt
        return await self._hub.infer(
            "stt",
            stt.transcribe,
            audio,
            limiter=self._hub.limiter,
            abandon_on_cancel=abandon_on_cancel,
        )

    async def _transcribe(self, u: Utterance) -> UserTurn | None:
        interval = self._server.partial_interval_ms / 1000
        tail = self._spec_samples
        speculative: tuple[int, str] | None = None
        prefetched: tuple[str, Int16] | None = None
        emitted: list[str] = []
        next_partial = trio.current_time()
        while not u.ended and not u.discarded:
            pause = u.pause_sample
            if pause is not None and (speculative is None or speculative[0] != pause):
                # A pause may be the end of the turn: decode now, inside the silence window.
                try:
                    speculative = (pause, await self._decode(u.audio(pause + tail)))
                except ModelError as exc:
                    log.warning("speculative decode failed: %s", exc)
                    speculative = None
                    break
                if not u.ended:  # else the reply's own TTS is just as soon
                    prefetched = await self._prefetch(speculative[1])
                continue
            partials_due = interval > 0 and pause is None
            # No partial while the speaker may be pausing: a decode in flight when the
            # pause is confirmed would delay the speculative final.
            if partials_due and not u.quiet and trio.current_time() >= next_partial:
                hypothesis = ""
                try:
                    with trio.CancelScope() as u.partial_scope:
                        hypothesis = await self._decode(u.audio(), abandon_on_cancel=True)
                except ModelError as exc:
                    log.warning("partial decode failed: %s", exc)
                finally:
                    u.partial_scope = None
                    # Counted from the end of the decode: the CPU stays free part of
                    # the time for the speculative final and other sessions. Until the
                    # first words appear, look again sooner.
                    wait = interval if emitted else interval / 2
                    next_partial = trio.current_time() + wait
                if hypothesis and not u.discarded:
                    new = new_partial_words(emitted, hypothesis)
                    if new:
                        delta = " ".join(new)
                        self._events.emit(
                            "conversation.item.input_audio_transcription.delta",
                            item_id=u.item_id,
                            content_index=0,
                            delta=(" " + delta) if emitted else delta,
                        )
                        emitted += new
                continue
            deadline = math.inf
            if partials_due:
                # while quiet, look again after a frame (quiet is not signalled)
                frame_s = FRAME_SAMPLES / PIPELINE_RATE
                deadline = (
                    max(next_partial, trio.current_time() + frame_s) if u.quiet else next_partial
                )
            with trio.move_on_at(deadline):
                await u.wait_changed()
        while not u.ended and not u.discarded:  # only after a failed speculative decode
            await u.wait_changed()
        if u.discarded:
            return None
        assert u.end_sample is not None
        if speculative is not None and speculative[0] == u.end_sample:
            transcript = speculative[1]
        else:
            try:
                transcript = await self._decode(u.audio(u.end_sample + tail))
            except ModelError as exc:
                self._metrics.responses.labels("failed").inc()
                self._events.emit(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=u.item_id,
                    content_index=0,
                    error=self._model_error("stt", exc),
                )
                return None
        now = trio.current_time()
        self._metrics.turn_latency.labels("transcript").observe(now - u.speech_end_at)
        self._events.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=u.item_id,
            content_index=0,
            transcript=transcript,
        )
        if prefetched is not None and prefetched[0] != first_sentence(transcript):
            prefetched = None
        return UserTurn(u.item_id, transcript, u.speech_end_at, u.stopped_at, now, prefetched)

    async def _prefetch(self, text: str) -> tuple[str, Int16] | None:
        """With ``echo`` the reply is known once the speculative transcript is: speak its
        first sentence now, while the silence window is still closing."""
        if self._config().responder != "echo":
            return None
        sentence = first_sentence(text)
        if not sentence:
            return None
        tts = self._hub.models.tts
        try:
            pcm = await self._hub.infer("tts", tts.synthesize, sentence, limiter=self._hub.limiter)
        except ModelError as exc:
            log.warning("speculative synthesis failed: %s", exc)
            return None
        return sentence, pcm

    # -- responder + tts -------------------------------------------------------------

    def add_item(self, item: Item) -> None:
        """Add to the conversation; emits ``conversation.item.created``."""
        self.conversation.add(item)
        self._events.emit("conversation.item.created", item=item.describe())

    def response_room(self) -> int:
        """How many more response.create requests the queue takes now."""
        stats = self._requests.statistics()
        return int(stats.max_buffer_size - stats.current_buffer_used)

    def request_response(self, instructions: str | None) -> None:
        """response.create: a reply to the conversation as it stands.

        Raises:
            trio.WouldBlock: too many responses are queued already.
        """
        now = trio.current_time()
        self._requests.send_nowait(
            UserTurn("", self.conversation.last_user_text(), now, now, now, None, instructions)
        )

    async def _responder_task(self, turns: trio.MemoryReceiveChannel[UserTurn]) -> None:
        async with turns:
            async for turn in turns:
                # A voice turn under "none" is transcribed only; response.create always
                # gets an answer.
                if turn.item_id and self._config().responder in ("none", "loopback"):
                    continue
                await self._respond(turn)

    def cancel_response(self, reason: str) -> bool:
        """Stop the current response now (barge-in, ``response.cancel``).

        The playout buffer is flushed at once, so the client falls silent within the
        stream's lead; the response task then reports what was played.
        """
        response = self.response
        if response is None or response.scope.cancel_called:
            return False
        rate = self._playout.sample_rate
        response.truncated_ms = 1000 * self._playout.cursor_played // rate
        response.cancel_reason = reason
        self._playout.flush()
        response.scope.cancel()
        if reason == "turn_detected":
            self._metrics.barge_ins.inc()
        return True

    async def _respond(self, turn: UserTurn) -> None:
        response = ActiveResponse(_new_id("resp_"), _new_id("item_"), turn)
        config = self._config()
        self._playout.mark()
        self.response = response
        self._events.emit(
            "response.created",
            response={"id": response.id, "object": "realtime.response", "status": "in_progress"},
        )
        status = "completed"
        error: dict[str, Any] | None = None
        try:
            with response.scope:
                try:
                    async with trio.open_nursery() as nursery:
                        send, recv = trio.open_memory_channel[str](self._server.sentence_queue)
                        instructions = config.instructions
                        if turn.instructions is not None:
                            instructions = turn.instructions
                        request = ResponseRequest(
                            transcript=turn.transcript,
                            messages=self.conversation.messages(instructions),
                            temperature=config.temperature,
                            max_output_tokens=config.max_response_output_tokens,
                        )
                        nursery.start_soon(self._produce_text, response, request, send)
                        nursery.start_soon(self._speak, response, recv, config.output_sample_rate)
                except* ModelError as group:
                    status = "failed"
                    exc = group.exceptions[0]
                    assert isinstance(exc, ModelError)
                    error = self._model_error(exc.model, exc)
                # Completed (or failed part-way): the response lasts until its audio played.
                await self._playout.drained()
        finally:
            self.response = None
        if response.scope.cancel_called:
            status = "cancelled"
        self._finish(response, status, error)

    async def _produce_text(
        self,
        response: ActiveResponse,
        request: ResponseRequest,
        sentences: trio.MemorySendChannel[str],
    ) -> None:
        cutter = SentenceCutter()

        async def emit(delta: str) -> None:
            if not delta:
                return
            if response.first_token_at is None:
                response.first_token_at = trio.current_time()
            response.text += delta
            self._events.emit(
                "response.audio_transcript.delta",
                response_id=response.id,
                item_id=response.item_id,
                output_index=0,
                content_index=0,
                delta=delta,
            )
            for sentence in cutter.feed(delta):
                await sentences.send(sentence)

        async with sentences:
            responder = self._responders(self._config().responder)
            await responder.respond(request, emit)
            for sentence in cutter.flush():
                await sentences.send(sentence)

    async def _speak(
        self, response: ActiveResponse, sentences: trio.MemoryReceiveChannel[str], rate: int
    ) -> None:
        tts = self._hub.models.tts
        # One resampler for the whole response: sentence joins stay continuous.
        resampler = StreamResampler(tts.sample_rate, rate)
        async with sentences:
            async for sentence in sentences:
                pcm: npt.NDArray[np.int16]
                pre = response.turn.prefetched
                if pre is not None and pre[0] == sentence:
                    pcm = pre[1]
                    response.turn.prefetched = None
                else:
                    pcm = await self._hub.infer(
                        "tts", tts.synthesize, sentence, limiter=self._hub.limiter
                    )
                out = resampler.feed(pcm)
                if len(out) and response.first_audio_queued_at is None:
                    response.first_audio_queued_at = trio.current_time()
                await self._playout.put(out)
                response.spoken.append((sentence, len(out)))
        tail = resampler.feed(np.zeros(0, np.int16), last=True)
        if len(tail):
            await self._playout.put(tail)

    def _finish(self, response: ActiveResponse, status: str, error: dict[str, Any] | None) -> None:
        turn = response.turn
        played_ms = 1000 * self._playout.cursor_played // self._playout.sample_rate

        def since_end(t: float | None) -> int | None:
            return None if t is None else round(1000 * (t - turn.speech_end_at))

        latency = {
            "turn_detected_ms": since_end(turn.stopped_at),
            "transcript_ms": since_end(turn.transcript_at),
            "first_token_ms": since_end(response.first_token_at),
            "first_audio_queued_ms": since_end(response.first_audio_queued_at),
            "first_audio_byte_ms": since_end(self._playout.cursor_first_at),
        }
        for stage, t in (
            ("first_token", response.first_token_at),
            ("first_audio_queued", response.first_audio_queued_at),
            ("first_audio_byte", self._playout.cursor_first_at),
        ):
            if t is not None:
                self._metrics.turn_latency.labels(stage).observe(t - turn.speech_end_at)
        self._metrics.responses.labels(status).inc()
        # The history keeps what the listener heard: all of a completed reply, the played
        # part of a cut one, so the next turn's context matches the conversation.
        heard = response.text
        if status != "completed":
            heard = spoken_prefix(response.spoken, self._playout.cursor_played)
        if heard:
            self.conversation.add(Item(response.item_id, "assistant", heard))
        ids = {"response_id": response.id, "item_id": response.item_id}
        self._events.emit(
            "response.audio_transcript.done",
            **ids,
            output_index=0,
            content_index=0,
            transcript=response.text,
        )
        self._events.emit("response.audio.done", **ids, output_index=0, content_index=0)
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
            "latency": latency,
        }
        if status == "cancelled":
            body["status_details"] = {"type": "cancelled", "reason": response.cancel_reason}
        elif status == "failed":
            body["status_details"] = {"type": "failed", "error": error}
        self._events.emit("response.done", response=body)
        if status == "cancelled":
            self._events.emit(
                "conversation.item.truncated",
                item_id=response.item_id,
                content_index=0,
                audio_end_ms=response.truncated_ms or 0,
            )

    # -- errors ----------------------------------------------------------------------

    def _error(
        self, code: str, message: str, *, error_type: str = "server_error"
    ) -> dict[str, Any]:
        status = 400 if error_type == "invalid_request_error" else 500
        error = ApiError(status, code, message, error_type=error_type).error_object()
        self._events.emit("error", error=error)
        return error

    def _model_error(self, model: str, exc: ModelError) -> dict[str, Any]:
        log.warning("model error (%s): %s", model, exc)
        return self._error("model_error", f"{model} failed: {exc.message}")
