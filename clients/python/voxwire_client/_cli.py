"""``voxwire talk``: speak a WAV file (or the microphone) to a server, save what comes back.

Exit status: 0 done, 1 server or connection error, 2 usage error (bad arguments, an
unusable input file, no microphone), 130 interrupted (Ctrl-C while talking from a file).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx
import trio

from voxwire_client._async import VoxwireClient
from voxwire_client._audio import AudioFileError, WavFile, WavSink
from voxwire_client._core import ALLOWED_RATES, DEFAULT_RATE, VoxwireError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Iterator, Sequence

    from voxwire_client._async import AudioStream, EventStream, Session
    from voxwire_client._core import Event

#: How long the conversation must have been quiet before ``talk`` stops.
QUIET_S = 1.5
CHUNK_MS = 100
#: Microphone blocks held while the upload lags (50 x 100 ms): then new ones are dropped.
MIC_QUEUE = 50


class UsageError(Exception):
    """Bad invocation or unusable local input: exit status 2."""


# -- the conversation --------------------------------------------------------------------


@dataclass
class IdleTracker:
    """Decides from the server events when the conversation has gone quiet.

    Quiet means: the input has ended, no speech in progress, every committed turn has its
    final transcript, every reply due has been played (``response.done``), and nothing
    happened for ``quiet_s``.
    """

    replies: bool  # whether the responder answers spoken turns
    quiet_s: float = QUIET_S
    speaking: bool = False
    responding: bool = False
    awaiting_transcripts: int = 0
    awaiting_replies: int = 0
    last_activity: float = -math.inf
    input_done_at: float | None = None

    def observe(self, event: Event, now: float) -> None:
        kind = event.type
        if kind == "input_audio_buffer.speech_started":
            self.speaking = True
        elif kind in ("input_audio_buffer.speech_stopped", "input_audio_buffer.cleared"):
            self.speaking = False
        elif kind == "input_audio_buffer.committed":
            self.speaking = False
            self.awaiting_transcripts += 1
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.awaiting_transcripts = max(0, self.awaiting_transcripts - 1)
            # The server replies to every turn with a non-empty transcript.
            if self.replies and event.get("transcript"):
                self.awaiting_replies += 1
        elif kind == "conversation.item.input_audio_transcription.failed":
            self.awaiting_transcripts = max(0, self.awaiting_transcripts - 1)
        elif kind == "response.created":
            self.responding = True
            self.awaiting_replies = max(0, self.awaiting_replies - 1)
        elif kind == "response.done":
            self.responding = False
        else:
            return
        self.last_activity = now

    def input_done(self, now: float) -> None:
        self.input_done_at = now

    def idle(self, now: float) -> bool:
        if self.input_done_at is None or self.speaking or self.responding:
            return False
        if self.awaiting_transcripts or self.awaiting_replies:
            return False
        return now - max(self.last_activity, self.input_done_at) >= self.quiet_s


class Printer:
    """The transcript on ``out`` (``you: ...``, ``assistant: ...`` as it is produced)."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self._assistant_line = False

    def end_line(self) -> None:
        if self._assistant_line:
            self.out.write("\n")
            self._assistant_line = False

    def show(self, event: Event) -> None:
        kind = event.type
        if kind == "conversation.item.input_audio_transcription.completed":
            self.end_line()
            self.out.write(f"you: {event.get('transcript', '')}\n")
        elif kind in ("response.output_audio_transcript.delta", "response.output_text.delta"):
            # the reply's words: the transcript of its audio, or a text-only reply's text
            if not self._assistant_line:
                self.out.write("assistant: ")
                self._assistant_line = True
            self.out.write(str(event.get("delta", "")))
        elif kind == "response.done":
            status = (event.get("response") or {}).get("status")
            if self._assistant_line and status not in (None, "completed"):
                self.out.write(f" [{status}]")
            self.end_line()
        elif kind == "error":
            error = event.get("error") or {}
            self.end_line()
            self.out.flush()
            cause = f" (event {error['event_id']})" if error.get("event_id") else ""
            print(
                f"voxwire: server error {error.get('code')}: {error.get('message')}{cause}",
                file=self.err,
                flush=True,
            )
        elif kind == "conversation.item.input_audio_transcription.failed":
            error = event.get("error") or {}
            print(f"voxwire: transcription failed: {error.get('message')}", file=self.err)
        self.out.flush()


# -- inputs ------------------------------------------------------------------------------


class Microphone:
    """The default input device via sounddevice (imported only for ``--mic``).

    Raises:
        UsageError: sounddevice or PortAudio is missing, or there is no input device.
    """

    def __init__(self) -> None:
        why = "--mic needs a sound input device"
        try:
            import sounddevice  # optional: only --mic needs it
        except ImportError:
            raise UsageError(
                f"{why}: sounddevice is not installed (pip install 'voxwire-client[mic]')"
            ) from None
        except OSError as exc:  # sounddevice raises this when PortAudio is missing
            raise UsageError(f"{why}: PortAudio is not available ({exc})") from None
        try:
            device = sounddevice.query_devices(kind="input")
        except (sounddevice.PortAudioError, ValueError) as exc:
            raise UsageError(f"{why}: no input device ({exc})") from None
        self._sd: Any = sounddevice
        native = int(device["default_samplerate"])
        # PortAudio converts rates where the device cannot; the server takes these as-is.
        self.rate = native if native in ALLOWED_RATES else DEFAULT_RATE

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """PCM16 blocks of ``CHUNK_MS`` as they are captured (until cancelled)."""
        send, receive = trio.open_memory_channel[bytes](MIC_QUEUE)
        token = trio.lowlevel.current_trio_token()
        dropped = 0

        def push(data: bytes) -> None:
            nonlocal dropped
            try:
                send.send_nowait(data)
            except trio.WouldBlock:  # the upload lags: drop rather than grow
                dropped += 1

        def callback(indata: Any, frames: int, time: Any, status: Any) -> None:
            # PortAudio's thread: hand the block to trio without blocking.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(push, bytes(indata))

        with self._sd.RawInputStream(
            samplerate=self.rate,
            channels=1,
            dtype="int16",
            blocksize=self.rate * CHUNK_MS // 1000,
            callback=callback,
        ):
            async with receive:
                async for data in receive:
                    yield data


# -- the talk ----------------------------------------------------------------------------


@dataclass
class Talk:
    url: str
    api_key: str | None
    responder: str | None
    instructions: str | None
    output_rate: int | None
    wait_s: float
    file: WavFile | None
    mic: Microphone | None
    sink: WavSink | None
    out: TextIO
    err: TextIO

    @property
    def rate(self) -> int:
        if self.file is not None:
            return self.file.rate
        assert self.mic is not None
        return self.mic.rate

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"input_sample_rate": self.rate}
        if self.responder is not None:
            config["responder"] = self.responder
        if self.instructions is not None:
            config["instructions"] = self.instructions
        if self.output_rate is not None:
            config["output_sample_rate"] = self.output_rate
        return config

    async def run(self) -> None:
        async with (
            VoxwireClient(self.url, api_key=self.api_key) as client,
            client.session(**self.config()) as session,
            # Both streams are open before the first byte of speech goes up.
            session.audio() as audio,
            session.events() as events,
            trio.open_nursery() as nursery,
        ):
            replies = session.config.get("responder") not in ("none", "loopback")
            tracker = IdleTracker(replies=replies)
            nursery.start_soon(self._save, audio)
            nursery.start_soon(self._follow, events, tracker)
            await self._speak(session, tracker)
            nursery.cancel_scope.cancel()

    async def _speak(self, session: Session, tracker: IdleTracker) -> None:
        if self.mic is not None:
            async with contextlib.aclosing(self.mic.chunks()) as chunks:
                await session.stream_pcm(chunks, realtime=False, chunk_ms=CHUNK_MS)
            return
        assert self.file is not None
        silence = bytes(2 * self.rate * CHUNK_MS // 1000)

        def silence_until_quiet() -> Iterator[bytes]:
            # Keep the line live (real time) so the server's VAD can close the turn.
            now = trio.current_time()
            tracker.input_done(now)
            deadline = now + self.wait_s
            while not tracker.idle(now):
                if now >= deadline:
                    print(
                        f"voxwire: stopped after --wait {self.wait_s:g} s; the conversation "
                        "had not gone quiet",
                        file=self.err,
                    )
                    return
                yield silence
                now = trio.current_time()

        await session.stream_pcm(
            itertools.chain(self.file.blocks(CHUNK_MS), silence_until_quiet()),
            chunk_ms=CHUNK_MS,
        )

    async def _save(self, audio: AudioStream) -> None:
        sink = self.sink
        if sink is not None:
            sink.rate = audio.sample_rate
        async for pcm in audio:
            if sink is not None and sink.append(pcm):
                # Not cancellable mid-write (to_thread waits for the thread by default).
                await trio.to_thread.run_sync(sink.write, sink.take())

    async def _follow(self, events: EventStream, tracker: IdleTracker) -> None:
        printer = Printer(self.out, self.err)
        try:
            async for event in events:
                tracker.observe(event, trio.current_time())
                printer.show(event)
        finally:
            printer.end_line()  # a reply cut off by --wait or Ctrl-C
            self.out.flush()


# -- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxwire", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    talk = commands.add_parser(
        "talk",
        help="speak a WAV file (or the microphone) to the server and save the reply audio",
        description="Stream FILE (16-bit PCM WAV) or the microphone in real time; print the "
        "transcripts and the assistant's text; save the returned audio.",
    )
    talk.add_argument("file", nargs="?", type=Path, metavar="FILE", help="16-bit PCM WAV")
    talk.add_argument(
        "--mic", action="store_true", help="capture the default input device until Ctrl-C"
    )
    talk.add_argument("--save", type=Path, metavar="OUT.wav", help="write the returned audio")
    talk.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
    talk.add_argument(
        "--responder", choices=("echo", "llm", "none"), help="default: the server's (echo)"
    )
    talk.add_argument("--instructions", help="the assistant's system instructions")
    talk.add_argument(
        "--api-key", default=os.environ.get("VOXWIRE_API_KEY"), help="or env VOXWIRE_API_KEY"
    )
    talk.add_argument(
        "--output-rate", type=int, choices=sorted(ALLOWED_RATES), help="reply audio rate"
    )
    talk.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after the file, wait at most this long for the conversation to go quiet (default 30)",
    )
    return parser


def _prepare(args: argparse.Namespace) -> Talk:
    if (args.file is None) == (not args.mic):
        raise UsageError("talk needs a FILE or --mic (not both)")
    if not args.wait > 0:
        raise UsageError("--wait must be positive")
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must be an http(s) URL, not {args.url!r}")
    if args.save is not None and not args.save.parent.is_dir():
        raise UsageError(f"--save: no such directory: {args.save.parent}")
    mic = Microphone() if args.mic else None
    try:
        file = WavFile(args.file) if args.file is not None else None
    except AudioFileError as exc:
        raise UsageError(str(exc)) from None
    return Talk(
        url=args.url,
        api_key=args.api_key or None,
        responder=args.responder,
        instructions=args.instructions,
        output_rate=args.output_rate,
        wait_s=args.wait,
        file=file,
        mic=mic,
        sink=WavSink(args.save) if args.save is not None else None,
        out=sys.stdout,
        err=sys.stderr,
    )


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException, url: str) -> str:
    if isinstance(exc, VoxwireError):
        return f"server said {exc}"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot connect to {url}: {exc}"
    return f"connection to {url} failed: {type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)  # exits 2 on bad arguments
    try:
        talk = _prepare(args)
    except UsageError as exc:
        print(f"voxwire: {exc}", file=sys.stderr)
        return 2
    failure: BaseException | None = None
    interrupted = False
    try:
        trio.run(talk.run)
    except* (VoxwireError, httpx.HTTPError) as group:
        failure = _first(group)
    except* KeyboardInterrupt:
        interrupted = True
    finally:
        if talk.file is not None:
            talk.file.close()
        if talk.sink is not None:
            talk.sink.close()
    if failure is not None:
        print(f"voxwire: {_describe(failure, talk.url)}", file=sys.stderr)
        return 1
    if interrupted:
        # With --mic, Ctrl-C is how a talk ends.
        if talk.mic is not None:
            return 0
        print("voxwire: interrupted", file=sys.stderr)
        return 130
    return 0
