"""The sans-IO turn machine on synthetic probabilities, exactly, in samples (no trio)."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from audio.turn_taking import (
    PATIENCE,
    CancelResponse,
    CheckTurn,
    CommitEmpty,
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
    judge,
)

N = 512  # 32 ms frames at 16 kHz
FRAME = np.ones(N, np.int16)
SEMANTIC = TurnSettings(mode="semantic_vad", min_speech_ms=96, prefix_padding_ms=96)
SERVER = TurnSettings(mode="server_vad", min_speech_ms=96, prefix_padding_ms=96)
FINISHED = Words("finished", has_words=True)
UNFINISHED = Words("unfinished", has_words=True)


def frames(m: TurnMachine, probs: list[float], replying: bool = False) -> list[TurnEvent]:
    out: list[TurnEvent] = []
    for p in probs:
        out += m.feed(FRAME, p, replying=replying)
    return out


def of(events: list[TurnEvent], kind: type) -> list[TurnEvent]:
    return [e for e in events if isinstance(e, kind)]


def ms_frames(ms: int) -> int:
    return -(-ms * 16 // N)


def test_server_vad_ends_after_the_silence_window_and_asks_for_a_speculative_decode() -> None:
    m = TurnMachine(SERVER)
    events = frames(m, [0.0] * 10 + [0.9] * 30)
    assert [type(e) for e in events] == [TurnStarted]
    start = events[0]
    assert isinstance(start, TurnStarted)
    assert start.start_sample == 10 * N - 96 * 16
    quiet = frames(m, [0.0] * 15)  # 480 ms
    assert [type(e) for e in quiet] == [PauseStarted]
    pause = quiet[0]
    assert isinstance(pause, PauseStarted)
    assert pause.pause == 40 * N
    assert pause.until_sample == 40 * N + 64 * 16
    end = frames(m, [0.0])  # 512 ms
    assert end == [TurnEnded(1, 40 * N, 40 * N * 1000 // 16000, "silence", True, False)]
    assert len(m.audio(40 * N)) == 40 * N - start.start_sample
    assert not of(frames(m, [0.0] * 10), CheckTurn)  # server_vad never checks


def test_speech_resuming_makes_the_pause_stale() -> None:
    m = TurnMachine(SERVER)
    frames(m, [0.9] * 20)
    pause = of(frames(m, [0.0] * 5), PauseStarted)[0]
    assert isinstance(pause, PauseStarted)
    resumed = frames(m, [0.9])
    assert resumed == [PauseEnded(1, pause.pause)]
    assert m.phase is Phase.SPEAKING
    # results for the old pause are ignored
    assert m.transcribed(1, pause.pause, FINISHED) == []


def test_semantic_finished_sentence_commits_at_the_first_check() -> None:
    m = TurnMachine(SEMANTIC)
    frames(m, [0.9] * 60)
    events = frames(m, [0.0] * ms_frames(160))
    checks = of(events, CheckTurn)
    assert len(checks) == 1
    check = checks[0]
    assert isinstance(check, CheckTurn)
    assert check.until_sample == m.position
    assert m.transcribed(1, check.pause, FINISHED) == []  # needs the audio's view too
    ended = m.checked(1, check.pause, 0.8)
    assert [type(e) for e in ended] == [TurnEnded]
    assert isinstance(ended[0], TurnEnded)
    assert ended[0].reason == "semantic"
    assert ended[0].end_sample == 60 * N  # where the pause began
    assert m.phase is Phase.IDLE


def test_semantic_hesitation_waits_past_the_silence_window_up_to_the_eagerness_limit() -> None:
    m = TurnMachine(SEMANTIC)
    frames(m, [0.9] * 60)
    check = of(frames(m, [0.0] * ms_frames(160)), CheckTurn)[0]
    assert isinstance(check, CheckTurn)
    assert m.transcribed(1, check.pause, UNFINISHED) == []
    assert m.checked(1, check.pause, 0.6) == []  # the words keep the turn open
    # a 1 s hesitation (twice the silence window) does not end it, and speech resumes
    events = frames(m, [0.0] * ms_frames(1000 - 160))
    assert not of(events, TurnEnded)
    for c in of(events, CheckTurn):
        assert isinstance(c, CheckTurn)
        m.checked(1, c.pause, 0.1)
    assert of(frames(m, [0.9]), PauseEnded)
    assert m.phase is Phase.SPEAKING
    # ... but an unfinished turn ends at the eagerness limit at the latest
    rest = frames(m, [0.0] * ms_frames(PATIENCE["auto"].max_wait_ms + 100))
    ends = of(rest, TurnEnded)
    assert len(ends) == 1
    assert isinstance(ends[0], TurnEnded)
    assert ends[0].reason == "silence"


def test_semantic_rechecks_wait_for_the_words() -> None:
    """The audio is rechecked as the pause grows, but not while the words (the decode)
    are still to come: the check would take CPU from that decode and decide nothing."""
    m = TurnMachine(SEMANTIC)
    frames(m, [0.9] * 60)
    check = of(frames(m, [0.0] * ms_frames(160)), CheckTurn)[0]
    assert isinstance(check, CheckTurn)
    assert m.checked(1, check.pause, 0.4) == []  # unsure audio, no words yet
    assert not of(frames(m, [0.0] * ms_frames(260)), CheckTurn)  # past the recheck (400 ms)
    # the words arrive, "unknown": the pause is undecided, so the recheck comes now
    assert m.transcribed(1, check.pause, Words("unknown", True, False, 5)) == []
    rechecks = of(frames(m, [0.0]), CheckTurn)
    assert len(rechecks) == 1
    assert isinstance(rechecks[0], CheckTurn)
    ended = m.checked(1, rechecks[0].pause, 0.99)  # near-certain audio decides it
    assert [type(e) for e in ended] == [TurnEnded]


def test_semantic_finished_words_with_doubtful_audio_wait_a_short_window() -> None:
    m = TurnMachine(SEMANTIC)
    frames(m, [0.9] * 60)
    check = of(frames(m, [0.0] * ms_frames(160)), CheckTurn)[0]
    assert isinstance(check, CheckTurn)
    m.transcribed(1, check.pause, FINISHED)
    assert m.checked(1, check.pause, 0.2) == []  # finished words, doubtful audio
    events: list[TurnEvent] = []
    for _ in range(ms_frames(400)):
        for e in frames(m, [0.0]):
            events.append(e)
            if isinstance(e, CheckTurn):
                events += m.checked(1, e.pause, 0.2)
        if of(events, TurnEnded):
            break
    ends = [e for e in events if isinstance(e, TurnEnded)]
    assert len(ends) == 1
    # ended where the short "likely" window (250 ms) ends
    assert abs(m.position - 60 * N - 250 * 16) <= N


def test_eagerness_sets_the_wait() -> None:
    for eagerness, limit in (("high", 800), ("medium", 2000), ("low", 3000)):
        s = dataclasses.replace(SEMANTIC, eagerness=eagerness)  # type: ignore[arg-type]
        m = TurnMachine(s)
        frames(m, [0.9] * 40)
        ended_at = None
        for i in range(ms_frames(4000)):
            for e in frames(m, [0.0]):
                if isinstance(e, CheckTurn):
                    m.transcribed(1, e.pause, UNFINISHED)
                    for r in m.checked(1, e.pause, 0.0):
                        assert isinstance(r, TurnEnded)
                        ended_at = i
                elif isinstance(e, TurnEnded):
                    ended_at = i
            if ended_at is not None:
                break
        assert ended_at is not None
        assert abs(ended_at * N / 16 - limit) <= 32 * 2, (eagerness, ended_at)


def test_judge_needs_both_signals() -> None:
    auto = PATIENCE["auto"]
    assert judge(0.95, "finished", auto) == "finished"
    assert judge(0.6, "finished", auto) == "finished"
    assert judge(0.2, "finished", auto) == "likely"  # long sentences with flat prosody
    assert judge(0.95, "unfinished", auto) == "unfinished"  # "... a table for"
    assert judge(0.05, "unknown", auto) == "unfinished"
    assert judge(0.5, "unknown", auto) == "unsure"
    assert judge(0.95, "unknown", auto) == "finished"


def test_a_cough_during_a_reply_pauses_then_resumes_it() -> None:
    m = TurnMachine(SERVER)
    events = frames(m, [0.0] * 5 + [0.9] * 2 + [0.0] * 3, replying=True)
    assert [type(e) for e in events] == [PausePlayout, ResumePlayout]
    resume = events[1]
    assert isinstance(resume, ResumePlayout)
    assert resume.reason == "too_short"
    assert m.phase is Phase.IDLE


def test_a_real_interruption_cancels_the_reply_once_it_is_long_enough() -> None:
    m = TurnMachine(SERVER)
    events = frames(m, [0.9] * 4, replying=True)
    assert [type(e) for e in events] == [PausePlayout, TurnStarted]
    more = frames(m, [0.9] * ms_frames(700), replying=True)
    assert [type(e) for e in more] == [CancelResponse]


def test_words_decide_a_pending_interruption_early() -> None:
    m = TurnMachine(SERVER)
    frames(m, [0.9] * 4, replying=True)
    assert m.heard(1, Words("unknown", has_words=True, backchannel=True, count=3)) == []
    assert m.heard(1, Words("unknown", has_words=True, count=1)) == []  # maybe invented
    assert m.heard(1, Words("unknown", has_words=True, count=3)) == [CancelResponse()]


def test_a_backchannel_during_a_reply_resumes_it() -> None:
    m = TurnMachine(SERVER)
    frames(m, [0.9] * 8, replying=True)  # "mm-hmm": 256 ms
    ended = of(frames(m, [0.0] * ms_frames(520), replying=True), TurnEnded)
    assert len(ended) == 1
    end = ended[0]
    assert isinstance(end, TurnEnded)
    assert end.interrupting
    events = m.final(end.turn, Words("finished", has_words=True, backchannel=True))
    assert events == [TurnDiscarded(end.turn, "not_a_turn"), ResumePlayout("backchannel")]
    assert m.final(end.turn, FINISHED) == []  # decided once


def test_a_short_turn_with_real_words_cancels_the_reply() -> None:
    m = TurnMachine(SERVER)
    frames(m, [0.9] * 8, replying=True)
    end = of(frames(m, [0.0] * ms_frames(520), replying=True), TurnEnded)[0]
    assert isinstance(end, TurnEnded)
    assert m.final(end.turn, Words("finished", has_words=True)) == [CancelResponse()]


def test_a_reply_that_begins_while_the_user_talks_is_held_then_cancelled() -> None:
    """Under load the last turn's reply can start after the next turn did: it must not
    talk over the user; the barge-in rule decides as usual."""
    m = TurnMachine(SERVER)
    started = frames(m, [0.9] * ms_frames(800))
    assert [type(e) for e in started] == [TurnStarted]
    assert [type(e) for e in frames(m, [0.9], replying=True)] == [PausePlayout, CancelResponse]
    assert frames(m, [0.9] * 5, replying=True) == []  # decided once


def test_a_reply_that_begins_during_a_candidate_resumes_when_it_was_noise() -> None:
    m = TurnMachine(SERVER)
    assert frames(m, [0.9]) == []  # a candidate: not yet speech
    events = frames(m, [0.0] * 3, replying=True)
    assert events == [PausePlayout(), ResumePlayout("too_short")]


def test_no_barge_in_when_interrupt_response_is_off() -> None:
    m = TurnMachine(dataclasses.replace(SERVER, interrupt_response=False))
    events = frames(m, [0.9] * 40 + [0.0] * 20, replying=True)
    assert [type(e) for e in events] == [TurnStarted, PauseStarted, TurnEnded]


def test_push_to_talk_records_until_commit() -> None:
    m = TurnMachine(TurnSettings(mode=None))
    assert m.commit() == [CommitEmpty()]
    assert frames(m, [0.0] * 10) == []  # probabilities do not matter
    assert m.phase is Phase.RECORDING
    events = m.commit(replying=True)
    assert events == [CancelResponse(), TurnEnded(1, 10 * N, 320, "commit", False, False)]
    assert len(m.audio()) == 10 * N
    assert m.commit() == [CommitEmpty()]


def test_clear_drops_the_turn_and_a_commit_ends_a_vad_turn() -> None:
    m = TurnMachine(SERVER)
    frames(m, [0.9] * 20)
    assert m.clear() == [TurnDiscarded(1, "cleared")]
    assert m.phase is Phase.IDLE
    assert m.commit() == [CommitEmpty()]
    frames(m, [0.9] * 20)
    ended = m.commit()
    assert [type(e) for e in ended] == [TurnEnded]
    assert isinstance(ended[0], TurnEnded)
    assert ended[0].reason == "commit"
    assert not ended[0].speech_ended


def test_settings_change_waits_for_the_turn_to_end() -> None:
    m = TurnMachine(SERVER)
    frames(m, [0.9] * 20)
    m.configure(dataclasses.replace(SERVER, silence_duration_ms=200))
    assert m.settings.silence_duration_ms == 500
    frames(m, [0.0] * 20)
    assert m.settings.silence_duration_ms == 200


def test_max_turn_length_cuts_the_turn() -> None:
    m = TurnMachine(dataclasses.replace(SERVER, max_turn_ms=2000))
    ends = of(frames(m, [0.9] * 100), TurnEnded)
    assert len(ends) == 1
    assert isinstance(ends[0], TurnEnded)
    assert ends[0].reason == "max_length"


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.floats(0, 1), st.booleans(), st.sampled_from(["f", "u", "n", "b"])),
        max_size=300,
    ),
    st.sampled_from(["server_vad", "semantic_vad"]),
)
def test_any_sequence_keeps_turns_well_formed(
    steps: list[tuple[float, bool, str]], mode: str
) -> None:
    """Turns start and end alternately, playout pause/resume pair up, and the machine never
    raises, whatever the probabilities and results."""
    m = TurnMachine(dataclasses.replace(SEMANTIC, mode=mode))  # type: ignore[arg-type]
    words = {
        "f": FINISHED,
        "u": UNFINISHED,
        "n": Words(),
        "b": Words("finished", True, True),
    }
    open_turn: int | None = None
    paused = False
    for prob, replying, w in steps:
        events = m.feed(FRAME, prob, replying=replying)
        i = 0
        while i < len(events):
            e = events[i]
            i += 1
            if isinstance(e, TurnStarted):
                assert open_turn is None
                open_turn = e.turn
            elif isinstance(e, TurnEnded):
                assert open_turn == e.turn
                open_turn = None
                if e.interrupting:
                    events += m.final(e.turn, words[w])
            elif isinstance(e, PausePlayout):
                assert not paused
                paused = True
            elif isinstance(e, ResumePlayout | CancelResponse):
                paused = False
            elif isinstance(e, CheckTurn):
                events += m.checked(e.turn, e.pause, prob)
            elif isinstance(e, PauseStarted):
                events += m.transcribed(e.turn, e.pause, words[w])
        assert (open_turn is not None) == (m.phase in (Phase.SPEAKING, Phase.PAUSED))
