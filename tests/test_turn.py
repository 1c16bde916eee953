"""The sans-IO turn detector, exactly, in samples."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from audio.turn import SpeechStarted, SpeechStopped, TurnDetector, TurnState

N = 512  # 32 ms frames at 16 kHz


def run(probs: list[float], **kw: int | float) -> list[object]:
    det = TurnDetector(**kw)  # type: ignore[arg-type]
    out: list[object] = []
    for p in probs:
        out += det.feed(p, N)
    return out


def test_speech_start_includes_prefix_padding_and_stop_marks_silence_start() -> None:
    # 20 silent frames, 20 speech frames, 20 silent frames
    events = run(
        [0.0] * 20 + [0.9] * 20 + [0.0] * 20,
        prefix_padding_ms=96,
        silence_duration_ms=320,
        min_speech_ms=96,
    )
    start = 20 * N - 1536  # 96 ms of prefix padding
    assert events == [SpeechStarted(start, start * 1000 // 16000), SpeechStopped(40 * N, 1280)]


def test_short_noise_never_starts_a_turn() -> None:
    assert run([0.0] * 5 + [0.95] * 3 + [0.0] * 30, min_speech_ms=250) == []


def test_brief_dips_do_not_end_speech() -> None:
    probs = [0.9] * 20 + ([0.1] * 5 + [0.9] * 5) * 4 + [0.0] * 30
    events = run(probs, silence_duration_ms=500, min_speech_ms=64)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert isinstance(events[1], SpeechStopped)
    assert events[1].end_sample == 60 * N


def test_hysteresis_keeps_speech_between_thresholds() -> None:
    det = TurnDetector(threshold=0.5, min_speech_ms=32, silence_duration_ms=64)
    assert det.feed(0.6, N)
    assert det.state is TurnState.SPEECH
    for _ in range(10):
        assert det.feed(0.4, N) == []  # above the 0.35 release threshold
    assert det.state is TurnState.SPEECH


def test_force_stop_ends_speech_now() -> None:
    det = TurnDetector(min_speech_ms=32)
    det.feed(0.9, N)
    assert det.force_stop() == [SpeechStopped(N, 32)]
    assert det.force_stop() == []


@given(st.lists(st.floats(min_value=0, max_value=1), max_size=300))
def test_events_alternate_and_move_forward(probs: list[float]) -> None:
    events = run(probs, min_speech_ms=64, silence_duration_ms=160)
    for i, event in enumerate(events):
        assert isinstance(event, SpeechStarted if i % 2 == 0 else SpeechStopped)
    positions = [e.start_sample if isinstance(e, SpeechStarted) else e.end_sample for e in events]
    assert positions == sorted(positions)
    assert all(0 <= p <= len(probs) * N for p in positions)


def test_pause_reports_a_pause_that_may_still_resume() -> None:
    det = TurnDetector(silence_duration_ms=320, min_speech_ms=64)
    for _ in range(10):
        det.feed(0.9, N)
    assert det.speaking
    assert det.pause is None
    det.feed(0.0, N)
    det.feed(0.0, N)
    assert det.pause == (10 * N, 2 * N)
    det.feed(0.9, N)  # speech resumes: no longer a pause
    assert det.speaking
    assert det.pause is None


def test_min_speech_counts_frames_between_the_two_thresholds() -> None:
    # 0.4 is above the release threshold (0.35): it keeps a candidate turn alive
    events = run([0.0] * 3 + [0.6] + [0.4] * 8 + [0.0] * 20, min_speech_ms=250)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert run([0.0] * 3 + [0.6] + [0.2] + [0.6] * 5 + [0.0] * 20, min_speech_ms=250) == []
