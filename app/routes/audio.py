"""upload_audio, stream_audio, stop_stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from quart import Blueprint, Response, jsonify, request
from werkzeug.http import parse_options_header

from app._config import SUPPORTED_RATES
from app._errors import ApiError
from app._session import PcmFormat
from app.routes._common import (
    LIVE_STREAM_HEADERS,
    authorised_session,
    metrics,
    refuse_if_draining,
    whole_number,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from app._metrics import Metrics
    from app._playout import Reader, StreamStart
    from app._session import Session, UploadBody, UploadResult

bp = Blueprint("audio", __name__)


def _unsupported(message: str) -> ApiError:
    return ApiError(415, "unsupported_media_type", message, param="Content-Type")


def parse_pcm_format(content_type: str | None, session_rate: int) -> PcmFormat:
    """Map an upload's Content-Type to a PCM format (see docs/api.md, "upload_audio").

    - none or ``application/octet-stream``: PCM16 little-endian at the session's rate;
    - ``audio/L16;rate=N`` (RFC 2586): PCM16 **big-endian** at N Hz;
    - ``audio/pcm;rate=N``: PCM16 little-endian at N Hz (N defaults to the session's).
    """
    if not content_type or not content_type.strip():
        return PcmFormat(session_rate)
    mimetype, options = parse_options_header(content_type)
    mimetype = mimetype.lower()
    options = {k.lower(): v for k, v in options.items()}
    if mimetype == "application/octet-stream":
        return PcmFormat(session_rate)
    if mimetype not in ("audio/l16", "audio/pcm"):
        raise _unsupported(
            f"unsupported Content-Type {mimetype!r}: send application/octet-stream "
            "(PCM16 LE at the session rate) or audio/L16;rate=N"
        )
    if options.get("channels", "1") != "1":
        raise _unsupported("only mono audio (channels=1) is accepted")
    rate_text = options.get("rate")
    if rate_text is None:
        if mimetype == "audio/l16":
            raise _unsupported("audio/L16 needs a rate parameter, e.g. audio/L16;rate=16000")
        rate = session_rate
    else:
        parsed = whole_number(rate_text)
        if parsed is None:
            raise _unsupported(f"rate must be an integer, got {rate_text!r}")
        rate = parsed
    if rate not in SUPPORTED_RATES:
        raise _unsupported(f"rate {rate} is not one of {', '.join(map(str, SUPPORTED_RATES))}")
    return PcmFormat(rate, big_endian=mimetype == "audio/l16")


def parse_sequence(raw: str | None) -> int | None:
    """The ``X-Sequence`` header: absent, or a whole number (400 otherwise)."""
    if raw is None:
        return None
    value = whole_number(raw)
    if value is None:
        raise ApiError(
            400, "invalid_sequence", "X-Sequence must be an integer >= 0", param="X-Sequence"
        )
    return value


class UploadRequest:
    """One upload_audio request after authorisation, from the raw header values: the
    common core of the Quart route and of app/_connection.py's own h11 path. ``async
    with`` yields the :class:`UploadBody` the caller feeds, in the same task; the session
    counts as busy meanwhile.

    (A class, not ``asynccontextmanager``: it runs on every upload, and a generator
    context costs several times more.)

    Raises:
        ApiError: 415 format, 400 sequence, and whatever :meth:`Session.open_upload` or
            the body raises (all counted as rejected uploads by status).
    """

    __slots__ = ("_body", "_content_length", "_content_type", "_metrics", "_sequence", "_session")

    def __init__(
        self,
        session: Session,
        *,
        content_type: str | None,
        sequence: str | None,
        content_length: int | None,
        metrics: Metrics,
    ) -> None:
        self._session = session
        self._content_type = content_type
        self._sequence = sequence
        self._content_length = content_length
        self._metrics = metrics
        self._body: UploadBody | None = None

    async def __aenter__(self) -> UploadBody:
        session = self._session
        session.begin_request()
        try:
            # Decided from the headers alone, before any of the body is read.
            fmt = parse_pcm_format(self._content_type, session.config.input_sample_rate)
            self._body = await session.open_upload(
                fmt, sequence=parse_sequence(self._sequence), content_length=self._content_length
            )
        except BaseException as error:
            self._exit(error)
            raise
        return self._body

    async def __aexit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        self._exit(error)

    def _exit(self, error: BaseException | None) -> None:
        if self._body is not None:
            self._body.close()
        self._session.end_request()
        if isinstance(error, ApiError):
            self._metrics.upload_rejected.labels(str(error.status)).inc()


def upload_reply_headers(result: UploadResult) -> dict[str, str]:
    """The headers of upload_audio's 204, after Quart's own (both paths)."""
    headers = {"X-Accepted-Bytes": str(result.accepted_bytes)}
    if result.acked_sequence is not None:
        headers["X-Acked-Sequence"] = str(result.acked_sequence)
    return headers


@bp.route("/api/sessions/<session_id>/upload_audio", methods=["POST", "PUT"])
async def upload_audio(session_id: str) -> Response:
    # app/_connection.py serves POST and PUT here without hypercorn's streams or Quart;
    # this route is what it must match (tests/test_fast_paths.py compares the two), and
    # serves when that path is off (and over HTTP/2).
    session = authorised_session(session_id)
    async with UploadRequest(
        session,
        content_type=request.headers.get("Content-Type"),
        sequence=request.headers.get("X-Sequence"),
        content_length=request.content_length,
        metrics=metrics(),
    ) as body:
        result = await body.consume(request.body)
    response = Response("", status=204)
    for name, value in upload_reply_headers(result).items():
        response.headers[name] = value
    return response


def parse_from_ms(raw: str | None) -> int | None:
    """``stream_audio?from_ms=``: absent, or a whole number of ms (400 otherwise)."""
    if raw is None:
        return None
    if whole_number(raw) is None:
        raise ApiError(
            400, "invalid_from_ms", "from_ms must be a whole number of ms", param="from_ms"
        )
    return int(raw)


def stream_reply_headers(start: StreamStart) -> dict[str, str]:
    """stream_audio's headers (before Content-Type)."""
    return LIVE_STREAM_HEADERS | {
        # Where this response sits on the session's stream timeline, so a client that
        # loses the connection can ask for the rest with ?from_ms= (docs/clients.md).
        "X-Stream-Position-Ms": str(start.position_ms),
        "X-Stream-Padding-Bytes": str(start.padding_bytes),
        "X-Stream-Resumed": "true" if start.resumed else "false",
    }


# A reader that lagged catches up in one write, not one per queued write.
MAX_JOINED_WRITES = 16


async def next_write(reader: Reader) -> bytes | None:
    """The stream's next socket write: what ``reader`` holds (a few writes, joined), or
    ``None`` once the stream has ended.

    Cancellation: safe; nothing is taken from the reader when cancelled.
    """
    try:
        first = await reader.receive.receive()
    except trio.EndOfChannel:
        return None
    writes = [first]
    while len(writes) < MAX_JOINED_WRITES:
        try:
            writes.append(reader.receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return b"".join(writes)


@bp.get("/api/sessions/<session_id>/stream_audio")
async def stream_audio(session_id: str) -> Response:
    session = authorised_session(session_id, allow_query_token=True)
    refuse_if_draining()
    start = session.open_stream(parse_from_ms(request.args.get("from_ms")))
    prelude, reader = start.prelude, start.reader

    async def body() -> AsyncIterator[bytes]:
        with session.request():
            try:
                yield prelude
                session.note_bytes_out(len(prelude))
                while (data := await next_write(reader)) is not None:
                    yield data
                    session.note_bytes_out(len(data))
            finally:
                session.playout.detach(reader)

    headers = stream_reply_headers(start)
    response = Response(body(), status=200, content_type="audio/wav", headers=headers)
    response.timeout = None  # Quart's RESPONSE_TIMEOUT would cut the stream at 60 s.
    return response


@bp.post("/api/sessions/<session_id>/stop_stream")
async def stop_stream(session_id: str) -> Response:
    session = authorised_session(session_id)
    with session.request():
        stopped = session.playout.stop()
        return jsonify({"stopped": stopped})
