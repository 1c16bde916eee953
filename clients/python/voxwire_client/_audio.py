"""Local audio for the CLI: PCM16 WAV files in and out, downmix, linear resampling."""

from __future__ import annotations

import wave
from typing import TYPE_CHECKING

import numpy as np

from voxwire_client._core import ALLOWED_RATES, DEFAULT_RATE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class AudioFileError(Exception):
    """The input file cannot be used (missing, not a WAV, not 16-bit PCM)."""


class LinearResampler:
    """Streaming linear interpolation from ``src`` Hz to ``dst`` Hz (int16 mono).

    Good enough for speech going to a 16 kHz recogniser; the server resamples properly
    (soxr) whenever the rate is one it accepts, so this only handles odd file rates.
    """

    def __init__(self, src: int, dst: int) -> None:
        self.step = src / dst
        self._next = 0.0  # the next output position, in input samples from ``_tail[0]``
        self._tail = np.zeros(0, np.float64)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._tail, samples.astype(np.float64)])
        if len(buf) < 2:
            self._tail = buf
            return np.zeros(0, np.int16)
        last = len(buf) - 1
        n = int(np.floor((last - self._next) / self.step)) + 1 if self._next <= last else 0
        at = self._next + self.step * np.arange(n)
        out = np.interp(at, np.arange(len(buf)), buf)
        # Keep the last input sample: the next output may fall between it and the next.
        self._next = self._next + self.step * n - last
        self._tail = buf[last:]
        result: np.ndarray = np.clip(np.round(out), -32768, 32767).astype(np.int16)
        return result


class WavFile:
    """A PCM16 WAV file read lazily as mono blocks at a rate the server accepts.

    The file's own rate is kept when the server accepts it (it resamples better);
    anything else is resampled here to 16 kHz. Stereo is averaged to mono.

    Raises:
        AudioFileError: on opening, with a message fit for the user.
    """

    def __init__(self, path: Path) -> None:
        try:
            self._wav = wave.open(str(path), "rb")
        except FileNotFoundError:
            raise AudioFileError(f"{path}: no such file") from None
        except (wave.Error, EOFError) as exc:
            raise AudioFileError(f"{path} is not a PCM WAV file ({exc})") from None
        except OSError as exc:
            raise AudioFileError(f"{path}: {exc.strerror or exc}") from None
        width = self._wav.getsampwidth()
        if width != 2:
            self._wav.close()
            raise AudioFileError(f"{path} is {8 * width}-bit PCM; only 16-bit PCM WAV is supported")
        self.channels = self._wav.getnchannels()
        self.file_rate = self._wav.getframerate()
        self.duration_s = self._wav.getnframes() / self.file_rate
        self.rate = self.file_rate if self.file_rate in ALLOWED_RATES else DEFAULT_RATE
        self._resampler = (
            None if self.rate == self.file_rate else LinearResampler(self.file_rate, self.rate)
        )

    def blocks(self, ms: int = 100) -> Iterator[bytes]:
        """The audio as mono PCM16 at :attr:`rate`, about ``ms`` of it at a time."""
        frames = max(1, self.file_rate * ms // 1000)
        while data := self._wav.readframes(frames):
            x = np.frombuffer(data, "<i2")
            x = x[: len(x) // self.channels * self.channels]
            if self.channels > 1:
                x = x.reshape(-1, self.channels).astype(np.int32).mean(axis=1).astype(np.int16)
            if self._resampler is not None:
                x = self._resampler.feed(x)
            yield x.astype("<i2").tobytes()

    def close(self) -> None:
        self._wav.close()


class WavSink:
    """A PCM16 mono WAV file written as audio arrives; opened at the first write.

    :meth:`take` hands out what is buffered (to write from a worker thread), and
    :meth:`close` writes the rest, so an interrupted run still leaves a valid file.
    """

    FLUSH_BYTES = 64 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rate: int | None = None
        self._wav: wave.Wave_write | None = None
        self._pending = bytearray()
        self.bytes_written = 0

    def append(self, pcm: bytes) -> bool:
        """Buffer ``pcm``; whether enough is buffered to be written out now."""
        self._pending += pcm
        return len(self._pending) >= self.FLUSH_BYTES

    def take(self) -> bytes:
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def write(self, pcm: bytes) -> None:
        """Blocking: write ``pcm`` to the file (opening it first)."""
        if self._wav is None:
            if self.rate is None:
                raise RuntimeError("WavSink.rate must be set before writing")
            self._wav = wave.open(str(self.path), "wb")
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(self.rate)
        self._wav.writeframes(pcm)
        self.bytes_written += len(pcm)

    def close(self) -> None:
        """Write what is buffered and finish the header (no file if the stream never opened)."""
        if self.rate is not None and (self._pending or self._wav is None):
            self.write(self.take())
        if self._wav is not None:
            self._wav.close()
            self._wav = None
