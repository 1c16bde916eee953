"""Write the spoken WAV the Swift integration tests upload (clients/swift/Tests/...).

    .venv/bin/python -m tests.make_swift_fixture

The bundled Piper voice (tests/speech.py) says ``SENTENCE``, 16 kHz PCM16 mono with a short
lead of silence; the file is committed (about 100 KB), so the Swift tests need no Python of
their own beyond the server. Run this again only to change the sentence.
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from tests.speech import synthesize

SENTENCE = "Please turn on the kitchen lights and close the garage door."
FIXTURE = (
    Path(__file__).resolve().parent.parent
    / "clients/swift/Tests/VoxwireIntegrationTests/Fixtures/kitchen_lights.wav"
)


def main() -> None:
    speech = synthesize((SENTENCE,), gap_s=0.0, lead_s=0.3)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    sf.write(FIXTURE, speech.samples, 16000, subtype="PCM_16")
    print(f"{FIXTURE}: {len(speech.samples) / 16000:.2f} s, {FIXTURE.stat().st_size} bytes")


if __name__ == "__main__":
    main()
