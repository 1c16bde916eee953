"""Turn detection: a sans-IO state machine over per-frame speech probabilities.

Counted in samples, never wall time, so it is exact and trivially testable. Feed it the VAD
probability of each frame; it returns speech started/stopped events with OpenAI Realtime
semantics (``audio_start_ms`` includes the prefix padding).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech confirmed; ``start_sample`` includes the prefix padding."""

    start_sample: int
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Speech ended at ``end_sample`` (where the closing silence began)."""

    end_sample: int
    audio_end_ms: int


TurnEvent = SpeechStarted | SpeechStopped


class TurnState(enum.Enum):
    SILENCE = "silence"
    MAYBE_SPEECH = "maybe_speech"  # above threshold, not yet min_speech long
    SPEECH = "speech"
    MAYBE_SILENCE = "maybe_silence"  # below the release threshold, not yet long enough


class TurnDetector:
    """Hysteresis endpointing: ``threshold`` to enter speech, ``threshold - 0.15`` to leave.

    A burst shorter than ``min_speech_ms`` never starts a turn (a cough does not barge in);
    speech ends after ``silence_duration_ms`` below the release threshold.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        *,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        min_speech_ms: int = 250,
    ) -> None:
        self.sample_rate = sample_rate
        self.threshold = threshold
        self.release = max(0.0, threshold - 0.15)
        self.prefix_samples = sample_rate * prefix_padding_ms // 1000
        self.silence_samples = sample_rate * silence_duration_ms // 1000
        self.min_speech_samples = sample_rate * min_speech_ms // 1000
        self.state = TurnState.SILENCE
        self.position = 0  # samples seen so far
        self._candidate_start = 0
        self._run = 0  # samples in the current MAYBE_* run
        self._silence_start = 0
        self._last_end = 0  # prefix padding never reaches back into the previous turn

    @property
    def speaking(self) -> bool:
        """Inside a confirmed turn (including a pause that may still resume)."""
        return self.state in (TurnState.SPEECH, TurnState.MAYBE_SILENCE)

    @property
    def pause(self) -> tuple[int, int] | None:
        """``(start_sample, length)`` of a pause inside a turn that may still resume."""
        if self.state is TurnState.MAYBE_SILENCE:
            return self._silence_start, self._run
        return None

    def _ms(self, sample: int) -> int:
        return 1000 * sample // self.sample_rate

    def feed(self, prob: float, n_samples: int) -> list[TurnEvent]:
        """Advance by one frame of ``n_samples`` whose speech probability is ``prob``."""
        start = self.position
        self.position += n_samples
        events: list[TurnEvent] = []
        match self.state:
            case TurnState.SILENCE:
                if prob >= self.threshold:
                    self.state = TurnState.MAYBE_SPEECH
                    self._candidate_start = start
                    self._run = n_samples
                    events += self._maybe_confirm()
            case TurnState.MAYBE_SPEECH:
                if prob >= self.release:
                    self._run += n_samples
                    events += self._maybe_confirm()
                else:
                    self.state = TurnState.SILENCE
            case TurnState.SPEECH:
                if prob < self.release:
                    self.state = TurnState.MAYBE_SILENCE
                    self._silence_start = start
                    self._run = n_samples
                    events += self._maybe_release()
            case TurnState.MAYBE_SILENCE:
                if prob >= self.threshold:
                    self.state = TurnState.SPEECH
                else:
                    self._run += n_samples
                    events += self._maybe_release()
        return events

    def _maybe_confirm(self) -> list[TurnEvent]:
        if self._run < self.min_speech_samples:
            return []
        self.state = TurnState.SPEECH
        begin = max(self._last_end, self._candidate_start - self.prefix_samples)
        return [SpeechStarted(begin, self._ms(begin))]

    def _maybe_release(self) -> list[TurnEvent]:
        if self._run < self.silence_samples:
            return []
        self.state = TurnState.SILENCE
        self._last_end = self._silence_start
        return [SpeechStopped(self._silence_start, self._ms(self._silence_start))]

    def force_stop(self) -> list[TurnEvent]:
        """End speech now (push-to-talk commit, end of input); no-op when not speaking."""
        if self.state in (TurnState.SPEECH, TurnState.MAYBE_SILENCE):
            end = self._silence_start if self.state is TurnState.MAYBE_SILENCE else self.position
            self.state = TurnState.SILENCE
            self._last_end = end
            return [SpeechStopped(end, self._ms(end))]
        self.state = TurnState.SILENCE
        return []
