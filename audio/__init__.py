"""Pure, sans-IO audio code: PCM decoding, WAV headers, resampling, framing, playout.

Nothing here imports trio or any HTTP library; every class is a synchronous state machine
fed with bytes or samples, so it can be tested exhaustively and driven by any I/O shell.
"""

from audio.fade import EdgeFade
from audio.framing import Framer
from audio.pcm import AudioChunk, PcmDecoder, Samples, pcm16_bytes
from audio.playout import Pacer, PlayoutBuffer
from audio.resample import StreamResampler
from audio.wav import WAV_HEADER_BYTES, streaming_wav_header

__all__ = [
    "WAV_HEADER_BYTES",
    "AudioChunk",
    "EdgeFade",
    "Framer",
    "Pacer",
    "PcmDecoder",
    "PlayoutBuffer",
    "Samples",
    "StreamResampler",
    "pcm16_bytes",
    "streaming_wav_header",
]
