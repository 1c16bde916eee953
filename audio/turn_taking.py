"""Turn taking: one sans-IO state machine for a session's side of the conversation.

It holds the audio of the turn in progress (with a prefix ring for the padding before
speech was confirmed), runs the hysteresis endpointing of :class:`audio.turn.TurnDetector`,
and decides, counted in samples, never in wall time:

- when a turn starts and ends (``server_vad``: a silence window; ``semantic_vad``: at each
  short pause the shell is asked to check whether the user has finished, and the answer,
  from the audio and the words, commits the turn at once, extends the wait, or leaves the
  silence window to decide; push-to-talk: the client's commit);
- when a pause may be the end, so the shell starts a speculative final decode;
- what speech during a reply does: it pauses playout at once; it becomes a barge-in
  (cancel and truncate) once it is clearly a turn, and the reply resumes where it stopped
  when it was not (too short, no words, a backchannel).

The shell (a trio task) feeds it frames with their VAD probability, client commit/clear,
and the results of the work it asked for (transcripts, turn checks); it carries out the
returned events. Results carry the ``turn`` and ``pause`` they were asked for, so a stale
one (speech resumed meanwhile) is ignored here, not in the shell.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from audio.turn import SpeechStarted, SpeechStopped, TurnDetector, TurnState

Int16 = np.ndarray[Any, np.dtype[np.int16]]
TextVerdict = Literal["finished", "unfinished", "unknown"]
Eagerness = Literal["low", "medium", "high", "auto"]


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Patience:
    """How ``semantic_vad`` combines its two signals, for one eagerness.

    ``p`` is the audio model's P(turn complete) at the pause, the verdict comes from the
    words of the speculative transcript. Finished when the words end a sentence and the
    audio agrees (``p >= finished_p``), or the audio is near certain and the words do not
    object (``p >= audio_only_p``); likely finished when the words end a sentence but the
    audio doubts it (Smart Turn scores many finished questions and long flat sentences
    low): a short silence window (``likely_wait_ms``); unfinished when the words leave a
    clause open, or the audio is near certain the user goes on (``p < unfinished_p``) and
    the words do not end a sentence. Otherwise unsure: the session's silence window.
    """

    finished_p: float
    audio_only_p: float
    unfinished_p: float
    unsure_wait_ms: int | None  # None: the session's silence_duration_ms
    max_wait_ms: int  # a confident "unfinished" waits up to this
    likely_wait_ms: int  # finished words, doubtful audio: a shorter silence window


PATIENCE: dict[str, Patience] = {
    "high": Patience(0.3, 0.8, 0.05, 300, 800, 160),
    "medium": Patience(0.5, 0.9, 0.1, None, 2000, 250),
    "low": Patience(0.7, 0.97, 0.15, 800, 3000, 400),
}
PATIENCE["auto"] = PATIENCE["medium"]


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """Everything the machine needs; ``mode=None`` is push-to-talk."""

    mode: Literal["server_vad", "semantic_vad"] | None = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    eagerness: Eagerness = "auto"
    min_speech_ms: int = 250
    speculative_pause_ms: int = 64
    # semantic_vad: the first check, then each later one at a pause this many times longer
    check_pause_ms: int = 160
    recheck_factor: float = 2.5
    max_turn_ms: int = 30_000
    interrupt_response: bool = True
    # Speech during a reply this long is a barge-in whatever its words are.
    interrupt_confirm_ms: int = 700

    @property
    def patience(self) -> Patience:
        return PATIENCE[self.eagerness]


# -- events out -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnStarted:
    turn: int
    start_sample: int  # includes the prefix padding
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class PauseStarted:
    """A pause that may end the turn: decode ``[turn start, until_sample)`` now."""

    turn: int
    pause: int  # the sample where the pause began: the key of its results
    until_sample: int


@dataclass(frozen=True, slots=True)
class PauseEnded:
    """Speech resumed: work asked for that pause is stale."""

    turn: int
    pause: int


@dataclass(frozen=True, slots=True)
class CheckTurn:
    """``semantic_vad``: judge whether the user finished, from the audio up to ``until``."""

    turn: int
    pause: int
    until_sample: int


EndReason = Literal["silence", "semantic", "commit", "max_length"]


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The turn is committed: its audio is ``[start, end_sample)`` (plus a short tail)."""

    turn: int
    end_sample: int
    audio_end_ms: int
    reason: EndReason
    speech_ended: bool  # the end is where a pause began (False: cut while speaking)
    interrupting: bool  # still undecided barge-in: the final transcript decides


@dataclass(frozen=True, slots=True)
class TurnDiscarded:
    turn: int
    reason: Literal["cleared", "not_a_turn", "mode_changed"]


@dataclass(frozen=True, slots=True)
class CommitEmpty:
    """A commit with no audio since the last turn."""


@dataclass(frozen=True, slots=True)
class PausePlayout:
    """Speech during a reply: silence the stream now, keep what is queued."""


@dataclass(frozen=True, slots=True)
class ResumePlayout:
    reason: Literal["too_short", "no_words", "backchannel"]


@dataclass(frozen=True, slots=True)
class CancelResponse:
    """A barge-in: cancel the reply and truncate it to what was heard."""


TurnEvent = (
    TurnStarted
    | PauseStarted
    | PauseEnded
    | CheckTurn
    | TurnEnded
    | TurnDiscarded
    | CommitEmpty
    | PausePlayout
    | ResumePlayout
    | CancelResponse
)


# -- inputs from the shell's work -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Words:
    """What the shell read in a transcript (it owns the text rules)."""

    verdict: TextVerdict = "unknown"
    has_words: bool = False
    backchannel: bool = False
    count: int = 0  # words in it


# A partial decides a pending barge-in early only with this many words: a decode of the
# first half second of speech may invent a word or two.
BARGE_IN_PARTIAL_WORDS = 3


# -- the machine ------------------------------------------------------------------------


class Phase(enum.Enum):
    IDLE = "idle"  # no turn
    CANDIDATE = "candidate"  # above threshold, not yet long enough to be speech
    SPEAKING = "speaking"
    PAUSED = "paused"  # inside a turn, below the release threshold
    RECORDING = "recording"  # push-to-talk: everything is the turn until commit


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.CANDIDATE, Phase.SPEAKING, Phase.RECORDING}),
    Phase.CANDIDATE: frozenset({Phase.IDLE, Phase.SPEAKING}),
    Phase.SPEAKING: frozenset({Phase.PAUSED, Phase.IDLE}),
    Phase.PAUSED: frozenset({Phase.SPEAKING, Phase.IDLE}),
    Phase.RECORDING: frozenset({Phase.IDLE}),
}


class Interruption(enum.Enum):
    NONE = "none"
    PAUSED = "paused"  # speech candidate during a reply: playout paused
    PENDING = "pending"  # a turn started during the reply; not yet known to be a barge-in


@dataclass(slots=True)
class _Pause:
    start: int
    asked_decode: bool = False
    words: Words | None = None
    p: float | None = None
    next_check: int = 0  # pause length (samples) of the next check
    checks_in_flight: int = 0
    wait: int = 0  # pause length that ends the turn
    decided: bool = False  # both signals are in (or the silence window rules)


class TurnMachine:
    """Feed frames and results; carry out the returned events (see the module doc)."""

    def __init__(self, settings: TurnSettings, sample_rate: int = 16000) -> None:
        self.rate = sample_rate
        self.position = 0  # samples fed so far
        self.phase = Phase.IDLE
        self.interruption = Interruption.NONE
        self.turn = 0  # id of the current (or last) turn
        self._settings = settings
        self._pending_settings: TurnSettings | None = None
        self._chunks: list[Int16] = []
        self._start = 0  # absolute sample of the turn's first held sample
        self._voice_start = 0  # where the turn's speech began (after the padding)
        self._held = 0
        self._ring: list[tuple[int, Int16]] = []
        self._pause: _Pause | None = None
        self._was_replying = False
        self._detector = self._new_detector(settings)

    # -- settings ---------------------------------------------------------------------

    @property
    def settings(self) -> TurnSettings:
        return self._settings

    def _samples(self, ms: int) -> int:
        return self.rate * ms // 1000

    def _ms(self, sample: int) -> int:
        return 1000 * sample // self.rate

    def _new_detector(self, s: TurnSettings) -> TurnDetector:
        silence_ms = s.silence_duration_ms
        if s.mode == "semantic_vad":
            # The machine ends semantic turns itself; the detector only bounds the wait.
            silence_ms = max(silence_ms, s.patience.max_wait_ms)
        detector = TurnDetector(
            self.rate,
            threshold=s.threshold,
            prefix_padding_ms=s.prefix_padding_ms,
            silence_duration_ms=silence_ms,
            min_speech_ms=s.min_speech_ms,
        )
        detector.position = self.position
        return detector

    def configure(self, settings: TurnSettings) -> list[TurnEvent]:
        """New settings: now when no VAD turn is in progress, else when it ends."""
        if settings == self._settings and self._pending_settings is None:
            return []
        if self.phase in (Phase.SPEAKING, Phase.PAUSED):
            self._pending_settings = settings
            return []
        return self._apply(settings)

    def _apply(self, settings: TurnSettings) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        old = self._settings
        self._settings = settings
        self._pending_settings = None
        self._detector = self._new_detector(settings)
        if self.phase is Phase.RECORDING and settings.mode is not None:
            events.append(TurnDiscarded(self.turn, "mode_changed"))
            self._reset_turn()
        elif self.phase is Phase.CANDIDATE:
            self._go(Phase.IDLE)
            events += self._candidate_failed()
        if old.prefix_padding_ms != settings.prefix_padding_ms:
            self._trim_ring()
        return events

    # -- audio held -------------------------------------------------------------------

    def _ring_samples(self) -> int:
        s = self._settings
        return self._samples(s.prefix_padding_ms + s.min_speech_ms + 200)

    def _trim_ring(self) -> None:
        keep = self._ring_samples()
        while self._ring and self._ring[0][0] + len(self._ring[0][1]) < self.position - keep:
            self._ring.pop(0)

    def _hold(self, samples: Int16) -> None:
        room = self._samples(self._settings.max_turn_ms) - self._held
        if room > 0 and len(samples):
            part = samples[:room]
            self._chunks.append(part)
            self._held += len(part)

    @property
    def turn_full(self) -> bool:
        return self._held >= self._samples(self._settings.max_turn_ms)

    @property
    def turn_samples(self) -> int:
        """Samples held for the turn in progress (0 when there is none)."""
        return self._held

    @property
    def turn_start(self) -> int:
        """The first sample of the current (or last) turn's audio."""
        return self._start

    def audio(self, until_sample: int | None = None) -> Int16:
        """A copy of the turn's audio from its start up to ``until_sample`` (absolute)."""
        data = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        if len(self._chunks) > 1:
            self._chunks = [data]
        if until_sample is not None:
            data = data[: max(0, until_sample - self._start)]
        return data.copy()

    def _begin_turn(self, start: int) -> None:
        self.turn += 1
        self._start = start
        self._chunks = []
        self._held = 0
        for at, samples in self._ring:
            if at + len(samples) > start:
                self._hold(samples[max(0, start - at) :])

    def _reset_turn(self) -> None:
        self._go(Phase.IDLE)
        self._chunks = []
        self._held = 0
        self._pause = None

    def _go(self, phase: Phase) -> None:
        if phase is not self.phase and phase not in TRANSITIONS[self.phase]:
            raise RuntimeError(f"turn machine: {self.phase.name} -> {phase.name}")
        self.phase = phase

    # -- feeding ----------------------------------------------------------------------

    def feed(
        self, samples: Int16, prob: float | None, *, replying: bool = False
    ) -> list[TurnEvent]:
        """One frame of audio and its speech probability (``None`` under push-to-talk).

        ``replying``: a response is in progress (its audio may be playing).
        """
        start = self.position
        self.position += len(samples)
        self._ring.append((start, samples))
        self._trim_ring()
        if self._settings.mode is None:
            return self._feed_recording(samples)
        if self.phase in (Phase.SPEAKING, Phase.PAUSED):
            self._hold(samples)
        if prob is None:  # a short last frame (commit): audio, no speech decision
            return []
        events: list[TurnEvent] = []
        for event in self._detector.feed(prob, len(samples)):
            if isinstance(event, SpeechStarted):
                events += self._started(event, replying)
            elif isinstance(event, SpeechStopped):
                events += self._ended(event.end_sample, "silence", speech_ended=True)
        events += self._reply_began(replying)
        events += self._follow_detector(replying)
        if self.phase in (Phase.SPEAKING, Phase.PAUSED) and self.turn_full:
            events += self._force_end("max_length")
        return events

    def _feed_recording(self, samples: Int16) -> list[TurnEvent]:
        if self.phase is Phase.IDLE:
            self._go(Phase.RECORDING)
            self.turn += 1
            self._start = self.position - len(samples)
            self._chunks, self._held = [], 0
        if self.phase is Phase.RECORDING:
            self._hold(samples)
        return []

    def _reply_began(self, replying: bool) -> list[TurnEvent]:
        """A reply that starts while the user talks is held, as if they had cut in.

        Under load the previous turn's reply can begin only after the next turn's speech
        did; it must not talk over the user. The same confirmation as a barge-in decides.
        """
        began = replying and not self._was_replying
        self._was_replying = replying
        if (
            not began
            or not self._settings.interrupt_response
            or self.interruption is not Interruption.NONE
        ):
            return []
        if self.phase is Phase.CANDIDATE:
            self.interruption = Interruption.PAUSED
        elif self.phase in (Phase.SPEAKING, Phase.PAUSED):
            self.interruption = Interruption.PENDING
        else:
            return []
        return [PausePlayout()]

    def _follow_detector(self, replying: bool) -> list[TurnEvent]:
        """Track the detector's candidate/pause states; pauses drive decodes and checks."""
        events: list[TurnEvent] = []
        detector = self._detector
        s = self._settings
        if self.phase is Phase.IDLE and detector.state is TurnState.MAYBE_SPEECH:
            self._go(Phase.CANDIDATE)
            if replying and s.interrupt_response and self.interruption is Interruption.NONE:
                self.interruption = Interruption.PAUSED
                events.append(PausePlayout())
        elif self.phase is Phase.CANDIDATE and detector.state is TurnState.SILENCE:
            self._go(Phase.IDLE)
            events += self._candidate_failed()
        if self.phase is Phase.IDLE and not replying and self.interruption is Interruption.PAUSED:
            self.interruption = Interruption.NONE  # the reply ended on its own
        pause = detector.pause
        if self.phase is Phase.SPEAKING and pause is not None:
            self._go(Phase.PAUSED)
            self._pause = _Pause(pause[0], next_check=self._samples(s.check_pause_ms))
            self._pause.wait = self._samples(s.silence_duration_ms)
        elif self.phase is Phase.PAUSED and pause is None:
            self._go(Phase.SPEAKING)
            assert self._pause is not None
            if self._pause.asked_decode:
                events.append(PauseEnded(self.turn, self._pause.start))
            self._pause = None
        if self.phase is Phase.PAUSED and self._pause is not None:
            events += self._pause_grew()
        if (
            self.interruption is Interruption.PENDING
            and self.phase is Phase.SPEAKING  # a pause does not make it longer
            and self.position - self._voice_start >= self._samples(s.interrupt_confirm_ms)
        ):
            events += self._barge_in()
        return events

    def _candidate_failed(self) -> list[TurnEvent]:
        if self.interruption is Interruption.PAUSED:
            self.interruption = Interruption.NONE
            return [ResumePlayout("too_short")]
        return []

    def _started(self, event: SpeechStarted, replying: bool) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        if self.phase is Phase.RECORDING:
            events.append(TurnDiscarded(self.turn, "mode_changed"))
            self._reset_turn()
        if self.phase is Phase.IDLE:  # straight from silence (min speech of one frame)
            self._go(Phase.CANDIDATE)
            if replying and self._settings.interrupt_response:
                self.interruption = Interruption.PAUSED
                events.append(PausePlayout())
        self._go(Phase.SPEAKING)
        self._begin_turn(event.start_sample)
        self._voice_start = event.start_sample + self._samples(self._settings.prefix_padding_ms)
        if self.interruption is Interruption.PAUSED:
            self.interruption = Interruption.PENDING
        elif replying and self._settings.interrupt_response:
            # the reply began after the candidate did, or a pending barge-in goes on
            self.interruption = Interruption.NONE
            events.append(CancelResponse())
        events.insert(0, TurnStarted(self.turn, event.start_sample, event.audio_start_ms))
        return events

    def _pause_grew(self) -> list[TurnEvent]:
        s = self._settings
        pause = self._pause
        assert pause is not None
        length = self.position - pause.start
        events: list[TurnEvent] = []
        if not pause.asked_decode and length >= self._samples(s.speculative_pause_ms):
            pause.asked_decode = True
            until = pause.start + self._samples(s.speculative_pause_ms)
            events.append(PauseStarted(self.turn, pause.start, until))
        if s.mode == "semantic_vad":
            # A recheck before the words are in would only compete for the CPU with the
            # decode they wait on, and could not decide anything alone: it comes once they
            # are, if the pause is still undecided.
            waiting = pause.p is not None and pause.words is None
            if length >= pause.next_check and not waiting:
                pause.checks_in_flight += 1
                pause.next_check = int(pause.next_check * s.recheck_factor)
                events.append(CheckTurn(self.turn, pause.start, self.position))
            # the silence window ends the turn only once both signals have been heard
            if length >= pause.wait and pause.decided:
                events += self._force_end("silence")
            elif length >= self._samples(s.patience.max_wait_ms):
                events += self._force_end("silence")
        return events

    # -- results from the shell -------------------------------------------------------

    def _current_pause(self, turn: int, pause: int) -> _Pause | None:
        p = self._pause
        if turn != self.turn or p is None or p.start != pause or self.phase is not Phase.PAUSED:
            return None
        return p

    def transcribed(self, turn: int, pause: int, words: Words) -> list[TurnEvent]:
        """The speculative transcript of a pause (``PauseStarted``) is ready."""
        p = self._current_pause(turn, pause)
        if p is None:
            return []
        p.words = words
        events = self._interruption_words(words)
        return events + self._decide(p)

    def checked(self, turn: int, pause: int, p_complete: float) -> list[TurnEvent]:
        """A ``CheckTurn`` came back with the audio model's P(turn complete)."""
        p = self._current_pause(turn, pause)
        if p is None:
            return []
        p.checks_in_flight = max(0, p.checks_in_flight - 1)
        p.p = p_complete
        return self._decide(p)

    def heard(self, turn: int, words: Words) -> list[TurnEvent]:
        """A partial transcript of the turn in progress (decides a pending barge-in early)."""
        if turn != self.turn or self.phase not in (Phase.SPEAKING, Phase.PAUSED):
            return []
        if words.count < BARGE_IN_PARTIAL_WORDS:
            return []
        return self._interruption_words(words)

    def final(self, turn: int, words: Words) -> list[TurnEvent]:
        """The final transcript of a turn ended while it was a pending barge-in."""
        if turn != self.turn or self.interruption is not Interruption.PENDING:
            return []
        self.interruption = Interruption.NONE
        if not words.has_words:
            return [TurnDiscarded(turn, "not_a_turn"), ResumePlayout("no_words")]
        if words.backchannel:
            return [TurnDiscarded(turn, "not_a_turn"), ResumePlayout("backchannel")]
        return [CancelResponse()]

    def _interruption_words(self, words: Words) -> list[TurnEvent]:
        if self.interruption is Interruption.PENDING and words.has_words and not words.backchannel:
            return self._barge_in()
        return []

    def _barge_in(self) -> list[TurnEvent]:
        self.interruption = Interruption.NONE
        return [CancelResponse()]

    def _decide(self, pause: _Pause) -> list[TurnEvent]:
        """semantic_vad: combine the audio and the words once both are in."""
        s = self._settings
        if s.mode != "semantic_vad" or pause.p is None or pause.words is None:
            return []
        verdict = judge(pause.p, pause.words.verdict, s.patience)
        pause.decided = True
        if verdict == "finished":
            return self._force_end("semantic")
        if verdict == "unfinished":
            pause.wait = self._samples(s.patience.max_wait_ms)
        elif verdict == "likely":
            pause.wait = self._samples(s.patience.likely_wait_ms)
        else:
            unsure = s.patience.unsure_wait_ms
            pause.wait = self._samples(s.silence_duration_ms if unsure is None else unsure)
        if self.position - pause.start >= pause.wait:
            return self._force_end("silence")
        return []

    # -- ending -----------------------------------------------------------------------

    def _force_end(self, reason: EndReason) -> list[TurnEvent]:
        speech_ended = self.phase is Phase.PAUSED
        stops = [e for e in self._detector.force_stop() if isinstance(e, SpeechStopped)]
        end = stops[0].end_sample if stops else self.position
        return self._ended(end, reason, speech_ended=speech_ended)

    def _ended(self, end: int, reason: EndReason, *, speech_ended: bool) -> list[TurnEvent]:
        interrupting = self.interruption is Interruption.PENDING
        event = TurnEnded(self.turn, end, self._ms(end), reason, speech_ended, interrupting)
        self._go(Phase.IDLE)
        self._pause = None
        events: list[TurnEvent] = [event]
        if self._pending_settings is not None:
            events += self._apply(self._pending_settings)
        return events

    def release_turn(self) -> None:
        """The shell has taken the ended turn's audio: drop it."""
        if self.phase is Phase.IDLE:
            self._chunks = []
            self._held = 0

    def commit(self, *, replying: bool = False) -> list[TurnEvent]:
        """``input_audio_buffer.commit``: end the turn now."""
        if self.phase is Phase.RECORDING:
            if self._held == 0:
                return [CommitEmpty()]
            events: list[TurnEvent] = []
            if replying:
                events.append(CancelResponse())
            self._go(Phase.IDLE)
            end = self._start + self._held
            events.append(TurnEnded(self.turn, end, self._ms(end), "commit", False, False))
            return events
        if self.phase in (Phase.SPEAKING, Phase.PAUSED) and self._held > 0:
            return self._force_end("commit")
        return [CommitEmpty()]

    def clear(self) -> list[TurnEvent]:
        """``input_audio_buffer.clear``: drop the turn in progress, back to silence."""
        events: list[TurnEvent] = []
        if self.phase in (Phase.SPEAKING, Phase.PAUSED, Phase.RECORDING):
            events.append(TurnDiscarded(self.turn, "cleared"))
        if self.interruption is not Interruption.NONE:
            self.interruption = Interruption.NONE
            events.append(ResumePlayout("no_words"))
        self.phase = Phase.IDLE  # from any phase: the client said so
        self._chunks, self._held, self._pause = [], 0, None
        self._ring = []
        self._detector = self._new_detector(self._settings)
        return events


def judge(p: float, verdict: TextVerdict, patience: Patience) -> str:
    """``finished``, ``likely``, ``unfinished`` or ``unsure`` (see :class:`Patience`)."""
    if verdict == "unfinished":
        return "unfinished"
    if verdict == "finished" and p >= patience.finished_p:
        return "finished"
    if p >= patience.audio_only_p:
        return "finished"
    if verdict == "finished":
        return "likely"
    if p < patience.unfinished_p:
        return "unfinished"
    return "unsure"
