"""Sans-IO audio: PCM decoding, framing, resampling, WAV headers, playout buffer."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from audio import (
    WAV_HEADER_BYTES,
    Framer,
    Pacer,
    PcmDecoder,
    PlayoutBuffer,
    StreamResampler,
    streaming_wav_header,
)


def test_decoder_carries_odd_byte() -> None:
    data = np.array([1, -2, 300, -32768, 32767], dtype="<i2").tobytes()
    dec = PcmDecoder()
    first = dec.feed(data[:3])
    assert first.tolist() == [1]
    assert dec.pending_bytes == 1
    rest = dec.feed(data[3:])
    assert rest.tolist() == [-2, 300, -32768, 32767]
    assert dec.pending_bytes == 0


def test_decoder_big_endian_matches_little_endian() -> None:
    values = np.array([1, -2, 300, -32768, 32767], dtype=np.int16)
    be = PcmDecoder(big_endian=True).feed(values.astype(">i2").tobytes())
    le = PcmDecoder().feed(values.astype("<i2").tobytes())
    assert be.tolist() == le.tolist() == values.tolist()


def test_empty_feed_is_noop() -> None:
    dec = PcmDecoder()
    assert len(dec.feed(b"")) == 0
    assert Framer(512).feed(np.zeros(0, dtype=np.int16)) == []


def _pipeline(chunks: list[bytes], rate: int) -> np.ndarray:
    dec = PcmDecoder()
    res = StreamResampler(rate, 16000)
    framer = Framer(512)
    frames: list[np.ndarray] = []
    for c in chunks:
        frames.extend(framer.feed(res.feed(dec.feed(c))))
    return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)


_SIGNAL = (np.random.default_rng(7).standard_normal(9000) * 4000).astype("<i2").tobytes()


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=len(_SIGNAL)), max_size=40),
    rate=st.sampled_from([16000, 48000, 8000]),
)
def test_any_chunk_split_yields_identical_frames(cuts: list[int], rate: int) -> None:
    bounds = [0, *sorted(cuts), len(_SIGNAL)]
    chunks = [_SIGNAL[a:b] for a, b in itertools.pairwise(bounds)]
    whole = _pipeline([_SIGNAL], rate)
    split = _pipeline(chunks, rate)
    assert len(whole) > 0
    assert np.array_equal(whole, split)


def test_identity_resampler_and_framer_keep_samples_exactly() -> None:
    x = np.arange(2000, dtype=np.int16)
    out = _pipeline([x.astype("<i2").tobytes()], 16000)
    assert np.array_equal(out, x[: 3 * 512])


def test_resampler_keeps_a_tone() -> None:
    rate = 48000
    t = np.arange(rate) / rate
    x = (10000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    y = StreamResampler(rate, 16000).feed(x, last=True)
    assert abs(len(y) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(y[2000:14000].astype(float)))
    peak_hz = np.argmax(spectrum) * 16000 / 12000
    assert abs(peak_hz - 440) < 3


def test_streaming_wav_header_is_readable() -> None:
    header = streaming_wav_header(24000)
    assert len(header) == WAV_HEADER_BYTES
    assert header[:4] == b"RIFF"
    assert header[8:16] == b"WAVEfmt "
    assert header[4:8] == b"\xff\xff\xff\xff"
    assert header[40:44] == b"\xff\xff\xff\xff"
    pcm = np.arange(-500, 500, dtype="<i2")
    data, rate = sf.read(io.BytesIO(header + pcm.tobytes()), dtype="int16")
    assert rate == 24000
    assert data.tolist() == pcm.tolist()


def test_playout_buffer_pads_and_flushes() -> None:
    buf = PlayoutBuffer(1000)
    buf.push(np.full(300, 5, dtype=np.int16))
    frame, real = buf.pull(200)
    assert real == 200
    assert set(frame.tolist()) == {5}
    frame, real = buf.pull(200)
    assert real == 100
    assert frame[:100].tolist() == [5] * 100
    assert frame[100:].tolist() == [0] * 100
    buf.push(np.ones(900, dtype=np.int16))
    with pytest.raises(OverflowError):
        buf.push(np.ones(101, dtype=np.int16))
    assert buf.flush() == 900
    assert buf.queued == 0
    assert buf.space == 1000


def test_pacer_schedule() -> None:
    p = Pacer(start=10.0, frame_s=0.02, lead_s=0.1)
    assert p.next_due() == pytest.approx(9.9)
    p.sent()
    assert p.next_due() == pytest.approx(9.92)
    assert p.late_by(9.90) == 0.0
    assert p.late_by(10.05) == pytest.approx(0.13)


@given(
    n=st.integers(0, 600),
    cuts=st.lists(st.integers(0, 600), max_size=12),
    rate=st.sampled_from([16000, 24000]),
)
@settings(max_examples=200, deadline=None)
def test_edge_fade_is_the_same_however_the_stream_is_cut(
    n: int, cuts: list[int], rate: int
) -> None:
    """A streamed clause gets the same fades at both ends as the embedded voice's,
    whatever the chunking (a service sends its body in arbitrary pieces)."""
    from audio import EdgeFade
    from models.tts import fade_edges

    samples = (np.arange(n, dtype=np.int32) * 37 % 20000 - 10000).astype(np.int16)
    fade = EdgeFade(rate)
    out = [fade.feed(part) for part in np.split(samples, sorted(c % (n + 1) for c in cuts))]
    out.append(fade.end())
    got = np.concatenate(out)
    assert len(got) == n
    if n >= 2 * fade.n:  # long enough for both ramps: exactly the embedded voice's fades
        np.testing.assert_array_equal(got, fade_edges(samples, rate))
    assert np.all(np.abs(got.astype(np.int32)) <= np.abs(samples.astype(np.int32)))
    if n:
        assert got[0] == 0
