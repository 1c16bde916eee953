"""Fuzzing the parsers and the HTTP surface: never a 5xx, always a typed 4xx.

Two layers:

- Pure property tests (many examples, no server): ``parse_pcm_format`` over arbitrary and
  near-valid Content-Types, ``PcmDecoder`` (big- and little-endian) plus the resampler at
  every supported rate under any chunk split, and the streaming WAV header read back by
  soundfile at every supported rate.
- HTTP fuzzing against the real app under hypercorn on loopback.

Why a server thread and a sync client: hypothesis's ``@given`` drives plain functions,
while pytest-trio runs each async test inside its own ``trio.run``; hypothesis has no
supported way to draw examples inside an already-running trio test (``.example()`` is for
interactive use only). So the HTTP fuzz tests are sync ``@given`` tests using a sync
``httpx.Client`` against one server per module, running in its own ``trio.run`` in a
background thread (:class:`ThreadedServer`, stopped through its trio token at teardown).
Starting the server once keeps 100+ examples per test fast; every example gets a fresh
session (deleted afterwards), so examples stay independent and shrink cleanly.

The server runs with models that fail to load at once (a missing VAD path) and the
``loopback`` responder by default: no CPU goes to loading models, and every session works
without them. The one 5xx accepted is therefore the documented ``503 models_unavailable``,
and only for a valid config that asks for another responder.

Invariants checked on every response: status < 500 (except that 503); a 4xx has the body
``{"type": "error", "error": {"type", "code", "message", "param"}}`` with string
``type``/``code``/``message``; afterwards ``/healthz`` answers and the example's session is
still usable (``active``, an upload of 640 bytes is 204) unless the example deleted it.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.http import parse_options_header

from app import ApiError, ServerConfig, create_app, serve
from app._config import SUPPORTED_RATES, SessionConfig, validate_session_config
from app._session import PcmFormat
from app.routes.audio import parse_pcm_format
from audio import WAV_HEADER_BYTES, PcmDecoder, StreamResampler, streaming_wav_header

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# ---------------------------------------------------------------------------------------
# A real server in a background thread (shared with tests/test_lifecycle.py)
# ---------------------------------------------------------------------------------------


class ThreadedServer:
    """``create_app`` + ``serve`` in their own ``trio.run`` on a daemon thread.

    ``call(fn, *args)`` runs a sync function inside that trio run (for reading the
    registry or counting tasks without racing the server). Leaving the ``with`` block
    cancels the server and re-raises anything that escaped its trio run.
    """

    def __init__(self, **overrides: Any) -> None:
        self.config = ServerConfig(host="127.0.0.1", port=0, **overrides)
        self.url = ""
        self.app: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._run, name="voxwire-fuzz", daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the server did not start within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._scope is not None and self._thread.is_alive():
            self.call(self._scope.cancel)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the server thread did not stop"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported from __exit__ (or __enter__)
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.app = create_app(self.config)
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            binds = await nursery.start(
                partial(serve, self.app, self.config, shutdown_trigger=None)
            )
            self.url = binds[0]
            self._ready.set()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._token is not None
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    @property
    def registry(self) -> Any:
        return self.app.config["VOXWIRE_REGISTRY"]

    def session_ids(self) -> set[str]:
        return self.call(lambda: {s.id for s in self.registry.sessions()})

    def open_requests(self) -> int:
        return self.call(lambda: sum(s.open_requests for s in self.registry.sessions()))


def wait_models_unavailable(client: httpx.Client) -> None:
    """Wait until the (deliberately broken) model load has failed: a stable 503."""
    deadline = time.monotonic() + 30
    while True:
        r = client.get("/readyz")
        if r.status_code == 503 and r.json()["error"]["code"] == "models_unavailable":
            return
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)


NO_MODELS = {
    "vad_model": "/nonexistent/fuzz-vad.onnx",
    "default_responder": "loopback",
    "model_load_wait_s": 0.0,
}


@dataclass
class Live:
    server: ThreadedServer
    client: httpx.Client
    known_session_failures: int = 0  # sessions a test killed on purpose (none since the fix)


def sessions_failed(client: httpx.Client) -> int:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("voxwire_sessions_failed_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no voxwire_sessions_failed_total")


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with (
        ThreadedServer(**NO_MODELS) as server,
        httpx.Client(base_url=server.url, timeout=15) as client,
    ):
        wait_models_unavailable(client)
        live = Live(server, client)
        yield live
        # Nothing an example did may have killed a session behind our back.
        assert sessions_failed(client) == live.known_session_failures


@dataclass
class Sess:
    id: str
    token: str
    config: dict[str, Any]
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def url(self) -> str:
        return f"/api/sessions/{self.id}"


@contextlib.contextmanager
def fresh_session(client: httpx.Client, **config: Any) -> Iterator[Sess]:
    r = client.post("/api/sessions", json={"responder": "loopback", **config})
    assert r.status_code == 201, r.text
    body = r.json()
    sess = Sess(body["id"], body["token"], body["config"])
    try:
        yield sess
    finally:
        if not sess.deleted:
            client.delete(sess.url, headers=sess.auth)


def assert_typed(r: httpx.Response, *, allow_models_unavailable: bool = False) -> None:
    """The invariant for every response: no 5xx, and every error is the typed JSON shape."""
    if r.status_code == 503 and allow_models_unavailable:
        assert r.json()["error"]["code"] == "models_unavailable", r.text
        assert r.headers.get("Retry-After")
    else:
        assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json"), r.headers
        body = r.json()
        assert set(body) == {"type", "error"}, body
        assert body["type"] == "error"
        err = body["error"]
        assert {"type", "code", "message", "param"} <= set(err), err
        for key in ("type", "code", "message"):
            assert isinstance(err[key], str), err
            assert err[key], err
        assert err["param"] is None or isinstance(err["param"], str), err


def assert_usable(client: httpx.Client, sess: Sess) -> dict[str, Any]:
    """The server is alive and the session still works; returns its stats."""
    assert client.get("/healthz").status_code == 200
    r = client.get(sess.url, headers=sess.auth)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "active"
    r = client.post(f"{sess.url}/upload_audio", content=bytes(640), headers=sess.auth)
    assert r.status_code == 204, r.text
    assert r.headers["X-Accepted-Bytes"] == "640"
    r = client.get(sess.url, headers=sess.auth)
    assert r.status_code == 200, r.text
    stats: dict[str, Any] = r.json()["stats"]
    return stats


HTTP_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------

# Any Unicode, lone surrogates included (json.dumps escapes them; the server must cope).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(any_text, children, max_size=5)
    ),
    max_leaves=20,
)


def header_value(text: str) -> bytes:
    """A header as sent: h11 refuses surrounding whitespace (receivers strip it anyway)."""
    return text.strip(" \t").encode("latin-1")


# Header values h11 lets through: visible latin-1, space and tab (no CR/LF/NUL/DEL).
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
    | st.sampled_from("\t;=\",' "),
    max_size=60,
).map(lambda s: s.strip(" \t"))

EVENT_TYPES = (
    "session.update",
    "input_audio_buffer.clear",
    "input_audio_buffer.commit",
    "response.cancel",
    "conversation.item.create",
    "response.create",
)
RATES_AND_JUNK = st.sampled_from([*SUPPORTED_RATES, 0, -16000, 16001, 96000, 10**9])


def config_values(key: str) -> st.SearchStrategy[Any]:
    """Plausible and implausible values for one session config key."""
    valid: dict[str, st.SearchStrategy[Any]] = {
        "instructions": st.text(max_size=30) | st.just("x" * 16001),
        "voice": st.sampled_from(["joe", "JOE", "alloy", ""]),
        "input_sample_rate": RATES_AND_JUNK | st.sampled_from([16000.0, 16000.5, "16000"]),
        "output_sample_rate": RATES_AND_JUNK | st.sampled_from([24000.0, True]),
        "turn_detection": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["server_vad", "semantic_vad", None]),
                "threshold": st.floats() | st.integers(-2, 2) | st.booleans(),
                "prefix_padding_ms": st.integers(-10, 6000) | st.floats(),
                "silence_duration_ms": st.integers(-10, 11000) | st.just(500.0),
                "create_response": st.booleans(),
            },
        ),
        "responder": st.sampled_from(["loopback", "loopback", "echo", "none", "llm", "x", None]),
        "temperature": st.floats() | st.integers(-3, 3) | st.booleans(),
        "max_response_output_tokens": st.sampled_from(["inf", "INF", 0, 1, 4096, 4097, 1.0, -1]),
    }
    return valid[key] | json_values


session_configs = st.fixed_dictionaries(
    {},
    optional={
        **{
            k: config_values(k)
            for k in (
                "instructions",
                "voice",
                "input_sample_rate",
                "output_sample_rate",
                "turn_detection",
                "responder",
                "temperature",
                "max_response_output_tokens",
            )
        },
        "modalities": st.just(["audio", "text"]),
    },
)

image_urls = st.sampled_from(
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "data:image/png;base64,!!notbase64!!",
        "data:image/bmp;base64,AAAA",
        "data:image/png,AAAA",
        "data:image/jpeg;base64,\u00e9\u00e9",
        "https://example.invalid/cat.png",
        "ftp://example.invalid/cat.png",
        "",
    ]
)
content_parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "text", "input_image", "input_audio"]) | json_values},
    optional={
        "text": any_text | json_values,
        "image_url": image_urls | st.fixed_dictionaries({"url": image_urls}) | json_values,
        "image": st.sampled_from(["AAAA", "%%%", ""]) | json_values,
        "mime_type": st.sampled_from(["image/png", "image/tiff", ""]) | json_values,
    },
)
items = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call"]) | json_values,
        "role": st.sampled_from(["user", "assistant", "system", "tool"]) | json_values,
        "content": st.lists(content_parts | json_values, max_size=3) | json_values,
    },
)


def _invalid_response_field(value: Any) -> bool:
    if value is None:
        return False
    return not isinstance(value, dict) or not (
        value.get("instructions") is None or isinstance(value.get("instructions"), str)
    )


# A valid response.create needs the models, which this server never loads (503, see
# test_response_create_without_models_keeps_the_loopback_session): only its invalid forms
# are fuzzed here, so the other invariants stay visible.
invalid_response_create = st.builds(
    lambda r: {"type": "response.create", "response": r},
    (json_values | st.fixed_dictionaries({"instructions": json_values})).filter(
        _invalid_response_field
    ),
)


def near_valid_event(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    if kind == "response.create":
        return invalid_response_create
    extra: dict[str, st.SearchStrategy[Any]] = {"event_id": any_text | json_values}
    if kind == "session.update":
        extra["session"] = session_configs | json_values
    elif kind == "conversation.item.create":
        extra["item"] = items | json_values
    return st.fixed_dictionaries({"type": st.just(kind)}, optional=extra)


client_events = (
    st.sampled_from(EVENT_TYPES).flatmap(near_valid_event)
    | st.fixed_dictionaries(
        {"type": st.sampled_from(["Session.Update", "session.update ", "", "response.created"])}
    )
    | st.fixed_dictionaries({}, optional={"type": json_values})
)


class Body:
    """A request body whose repr stays short in hypothesis's reports."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        text = repr(self.data)
        return text if len(text) <= 120 else f"{text[:100]}...<{len(self.data)} bytes>"


def as_body(value: Any) -> Body:
    return Body(json_text(value))


# Raw bodies: JSON the server must parse, and text it must refuse cleanly.
raw_json_bodies = st.one_of(
    st.sampled_from(
        [
            b"NaN",
            b"Infinity",
            b'{"type": "session.update", "session": {"temperature": NaN}}',
            b'{"type": "session.update", "session": {"temperature": -Infinity}}',
            b'{"type": "session.update", "session": {"temperature": 1e999}}',
            b'{"type": "session.update", "session": {"max_response_output_tokens": '
            + b"9" * 5000
            + b"}}",
            b'{"type": "session.update", "session": {"temperature": 1' + b"0" * 300 + b"}}",
            b"[" * 100_000,
            b"[" * 500 + b"]" * 500,
            b'{"a":' * 3000 + b"1" + b"}" * 3000,
            b'{"type": "input_audio_buffer.clear", "type": "bogus"}',
            b'{"type": "input_audio_buffer.clear"}garbage',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{\x00}\x00",
            b'{"type": "\xc3\x28"}',
            b'"\\ud800"',
            b"   ",
            b"",
        ]
    ).map(Body),
    st.binary(max_size=200).map(Body),
    any_text.map(lambda s: Body(s.encode("utf-8", "surrogatepass"))),
)


def _events_body() -> st.SearchStrategy[Body]:
    structured = (client_events | st.lists(client_events, max_size=4) | json_values).map(as_body)
    return structured | raw_json_bodies


# ---------------------------------------------------------------------------------------
# Pure property tests
# ---------------------------------------------------------------------------------------


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn``'s result, or the :class:`ApiError` it raised (any other exception escapes)."""
    try:
        return fn(*args, **kwargs)
    except ApiError as error:
        return error


def _check_format(content_type: str | None, session_rate: int) -> PcmFormat | None:
    """parse_pcm_format's contract: a supported format, or the typed 415, nothing else."""
    fmt = outcome(parse_pcm_format, content_type, session_rate)
    if isinstance(fmt, ApiError):
        assert (fmt.status, fmt.code, fmt.param) == (415, "unsupported_media_type", "Content-Type")
        return None
    assert isinstance(fmt, PcmFormat)
    assert fmt.sample_rate in SUPPORTED_RATES
    return fmt


@settings(max_examples=600, deadline=None)
@given(
    content_type=st.none() | st.text() | header_text, session_rate=st.sampled_from(SUPPORTED_RATES)
)
def test_parse_pcm_format_any_string_is_a_format_or_415(
    content_type: str | None, session_rate: int
) -> None:
    _check_format(content_type, session_rate)


def _case(s: str, flips: list[bool]) -> str:
    return "".join(c.swapcase() if f else c for c, f in zip(s, itertools.cycle(flips)))


@st.composite
def near_valid_content_types(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    """``audio/L16;rate=N;channels=C`` and friends, with odd casing, spacing and quotes.

    Returns the header, its base type and the rate texts it mentions.
    """
    base = draw(st.sampled_from(["audio/L16", "audio/pcm", "application/octet-stream"]))
    flips = draw(st.lists(st.booleans(), min_size=1, max_size=5))
    params: list[tuple[str, str]] = []
    rates: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["rate", "channels", "endianness", "charset", "rate*"]))
        if name.startswith("rate"):
            value = draw(
                st.sampled_from([str(r) for r in SUPPORTED_RATES])
                | st.sampled_from(["0", "-8000", "16000.0", "16_000", "0x3e80", "", "1e4"])
                | st.integers(-(10**6), 10**6).map(str)
            )
            rates.append(value)
        elif name == "channels":
            value = draw(st.sampled_from(["1", "2", "01", "one", ""]))
        else:
            value = draw(st.sampled_from(["big", "utf-8", "x"]))
        params.append((_case(name, flips), value))
    pieces = [_case(base, flips)]
    for name, value in params:
        quote = draw(st.sampled_from(["", '"']))
        sp1, sp2 = draw(st.sampled_from(["", " ", "  ", "\t"])), draw(st.sampled_from(["", " "]))
        pieces.append(f"{sp1}{name}={quote}{value}{quote}{sp2}")
    sep = draw(st.sampled_from([";", "; ", " ;", ";;"]))
    return sep.join(pieces), base.lower(), rates


def _int_or_none(text: str) -> int | None:
    """The server's reading of a number in a header: plain ASCII digits only."""
    text = text.strip(" \t")
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else None


@settings(max_examples=800, deadline=None)
@given(ct=near_valid_content_types(), session_rate=st.sampled_from(SUPPORTED_RATES))
def test_parse_pcm_format_near_valid_content_types(
    ct: tuple[str, str, list[str]], session_rate: int
) -> None:
    header, base, rates = ct
    fmt = _check_format(header, session_rate)
    if fmt is None:
        assert base != "application/octet-stream", header
        return
    if base == "application/octet-stream":
        assert fmt == PcmFormat(session_rate)
        return
    # Never a rate nobody asked for, and the byte order follows the type.
    assert fmt.big_endian == (base == "audio/l16"), header
    # ("16_000", "+16000" and "-0" are not numbers here: plain digits only)
    mentioned = {v for v in map(_int_or_none, rates) if v is not None}
    if base == "audio/pcm":
        mentioned.add(session_rate)
    assert fmt.sample_rate in mentioned, header


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_parse_pcm_format_exact_forms(rate: int) -> None:
    assert parse_pcm_format(f"audio/L16;rate={rate}", 16000) == PcmFormat(rate, True)
    assert parse_pcm_format(f'AUDIO/l16; Rate="{rate}"; channels=1', 16000) == PcmFormat(rate, True)
    assert parse_pcm_format(f"audio/pcm;rate={rate}", 8000) == PcmFormat(rate)
    assert parse_pcm_format("audio/pcm", rate) == PcmFormat(rate)
    assert parse_pcm_format(None, rate) == PcmFormat(rate)
    assert parse_pcm_format("application/octet-stream", rate) == PcmFormat(rate)
    for bad in ("audio/L16", f"audio/L16;rate={rate};channels=2", "audio/wav", "text/plain"):
        assert _check_format(bad, rate) is None


_VALUES = (np.random.default_rng(11).standard_normal(6000) * 6000).astype(np.int16)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(
    big_endian=st.booleans(),
    cuts=st.lists(st.integers(min_value=0), max_size=60),
    n=st.integers(0, len(_VALUES)),
)
def test_decoder_any_split_any_byte_order_gives_the_samples(
    big_endian: bool, cuts: list[int], n: int
) -> None:
    values = _VALUES[:n]
    data = values.astype(">i2" if big_endian else "<i2").tobytes()
    dec = PcmDecoder(big_endian=big_endian)
    out = [dec.feed(c) for c in _split(data, cuts)]
    got = np.concatenate(out) if out else np.zeros(0, np.int16)
    assert got.dtype == np.int16
    assert np.array_equal(got, values)
    assert dec.pending_bytes == 0
    # An odd tail is held back, never decoded half.
    assert len(dec.feed(b"\x01")) == 0
    assert dec.pending_bytes == 1


@settings(max_examples=150, deadline=None)
@given(
    big_endian=st.booleans(),
    rate=st.sampled_from(SUPPORTED_RATES),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_decode_and_resample_any_split_at_any_rate(
    big_endian: bool, rate: int, cuts: list[int]
) -> None:
    data = _VALUES.astype(">i2" if big_endian else "<i2").tobytes()

    def run(chunks: list[bytes]) -> np.ndarray:
        dec, res = PcmDecoder(big_endian=big_endian), StreamResampler(rate, 16000)
        parts = [res.feed(dec.feed(c)) for c in chunks]
        parts.append(res.feed(np.zeros(0, np.int16), last=True))
        return np.concatenate(parts)

    whole = run([data])
    split = run(_split(data, cuts))
    assert abs(len(whole) - round(len(_VALUES) * 16000 / rate)) <= 2
    assert np.array_equal(whole, split)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from(SUPPORTED_RATES),
    samples=st.lists(st.integers(-32768, 32767), max_size=400),
)
def test_wav_header_round_trips_through_soundfile(rate: int, samples: list[int]) -> None:
    header = streaming_wav_header(rate)
    assert len(header) == WAV_HEADER_BYTES
    pcm = np.array(samples, dtype="<i2")
    data, got_rate = sf.read(io.BytesIO(header + pcm.tobytes()), dtype="int16")
    assert got_rate == rate
    assert data.tolist() == samples
    info = sf.info(io.BytesIO(header + pcm.tobytes()))
    assert (info.channels, info.subtype, info.format) == (1, "PCM_16", "WAV")


# ---------------------------------------------------------------------------------------
# HTTP fuzzing
# ---------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """What a JSON body is, read as docs/api.md describes it."""

    ok: bool  # parses (Python's json, which also takes NaN/Infinity literals)
    value: Any = None
    # NaN/Infinity literals: "malformed JSON" (400) or a non-finite number (422); the docs
    # allow either reading, so only "a 4xx" is asserted for such bodies.
    nonfinite: bool = False


def decode_json(body: bytes) -> Decoded:
    seen: list[str] = []

    def constant(name: str) -> float:
        seen.append(name)
        return float(name)

    try:
        value = json.loads(body, parse_constant=constant)
    except (ValueError, RecursionError):
        return Decoded(False)
    return Decoded(True, value, bool(seen))


def json_text(value: Any) -> bytes:
    """JSON as ``json.dumps`` writes it: NaN/Infinity as literals (httpx's json= refuses)."""
    return json.dumps(value).encode()


@HTTP_SETTINGS
@given(body=_events_body())
def test_post_client_events_fuzz(live: Live, body: Body) -> None:
    client, data = live.client, body.data
    with fresh_session(client) as sess:
        r = client.post(
            f"{sess.url}/events",
            content=data,
            headers=sess.auth | {"Content-Type": "application/json"},
        )
        assert_typed(r, allow_models_unavailable=b"responder" in data)
        decoded = decode_json(data)
        if not data.strip():
            assert (r.status_code, r.json()["error"]["code"]) == (400, "empty_body")
        elif not decoded.ok:
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "invalid_json"
        if r.status_code == 200:
            # Accepted means every item was a supported client event.
            value = decoded.value
            events = value if isinstance(value, list) else [value]
            assert r.json() == {"accepted": len(events)}
            for event in events:
                assert isinstance(event, dict)
                assert event.get("type") in EVENT_TYPES
        assert_usable(client, sess)


@HTTP_SETTINGS
@given(patch=session_configs | json_values)
def test_patch_session_config_fuzz(live: Live, patch: Any) -> None:
    client = live.client
    with fresh_session(client) as sess:
        base = validate_session_config(sess.config)
        body = json_text(patch)
        r = client.patch(
            sess.url, content=body, headers=sess.auth | {"Content-Type": "application/json"}
        )
        assert_typed(r, allow_models_unavailable=True)
        expected: SessionConfig | ApiError = outcome(
            validate_session_config, patch, base, update=True
        )
        if decode_json(body).nonfinite and r.status_code == 400:
            assert r.json()["error"]["code"] == "invalid_json"
            after = base
        elif isinstance(expected, ApiError):
            err = r.json()["error"]
            assert (r.status_code, err["code"], err["param"]) == (
                expected.status,
                expected.code,
                expected.param,
            )
            after = base
        elif expected.responder != "loopback":
            assert r.status_code == 503, r.text
            after = base
        else:
            assert r.status_code == 200, r.text
            assert r.json()["config"] == expected.to_json()
            after = expected
        # A refused PATCH changes nothing; an accepted one changes exactly that.
        got = client.get(sess.url, headers=sess.auth).json()["config"]
        assert got == after.to_json()
        assert_usable(client, sess)


@HTTP_SETTINGS
@given(raw=raw_json_bodies)
def test_patch_session_raw_bodies(live: Live, raw: Body) -> None:
    client = live.client
    with fresh_session(client) as sess:
        r = client.patch(
            sess.url, content=raw.data, headers=sess.auth | {"Content-Type": "application/json"}
        )
        assert_typed(r)
        assert r.status_code in (200, 400, 413, 422), r.text
        if len(raw.data) > 64 * 1024:
            assert r.json()["error"]["code"] == "body_too_large"
        assert_usable(client, sess)


json_content_types = (
    st.none()
    | st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/json;charset=latin-1",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "application/merge-patch+json",
            "json",
            ";",
        ]
    )
    | header_text
)


@HTTP_SETTINGS
@given(
    content_type=json_content_types,
    body=(session_configs | json_values).map(as_body) | raw_json_bodies,
)
def test_create_session_fuzz(live: Live, content_type: str | None, body: Body) -> None:
    client, data = live.client, body.data
    headers = {} if content_type is None else {"Content-Type": header_value(content_type)}
    r = client.post("/api/sessions", content=data, headers=headers)
    created = r.json() if r.status_code == 201 else None
    try:
        assert_typed(r, allow_models_unavailable=True)
        mimetype = parse_options_header((content_type or "").strip(" \t"))[0].lower()
        decoded = decode_json(data)
        config = outcome(
            validate_session_config,
            decoded.value,
            validate_session_config({"responder": "loopback"}),
        )
        if len(data) > 64 * 1024:  # both are decided from the headers; either may win
            assert r.status_code in (413, 415), r.text
        elif mimetype and mimetype != "application/json":
            assert r.status_code == 415, r.text
        elif not decoded.ok and data.strip():
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "invalid_json"
        elif decoded.nonfinite:
            assert r.status_code in (400, 422), r.text
        elif isinstance(config, ApiError):
            assert (r.status_code, r.json()["error"]["code"]) == (config.status, config.code)
        elif config.responder == "loopback":
            assert r.status_code == 201, r.text
            assert created is not None
            assert created["config"] == config.to_json()
        else:
            assert r.status_code == 503, r.text
        assert client.get("/healthz").status_code == 200
    finally:
        if created is not None:
            sess = Sess(created["id"], created["token"], created["config"])
            assert_usable(client, sess)
            assert client.delete(sess.url, headers=sess.auth).status_code == 204


upload_content_types = (
    st.none()
    | near_valid_content_types().map(lambda t: t[0])
    | header_text
    | st.sampled_from(["audio/wav", "audio/L16;rate=16000;channels=2", "audio/L24;rate=16000"])
)


@HTTP_SETTINGS
@given(content_type=upload_content_types, body=st.binary(max_size=3000))
def test_upload_audio_content_type_and_body_fuzz(
    live: Live, content_type: str | None, body: bytes
) -> None:
    client = live.client
    with fresh_session(client) as sess:
        headers = dict(sess.auth)
        if content_type is not None:
            headers["Content-Type"] = header_value(content_type)
        r = client.post(f"{sess.url}/upload_audio", content=body, headers=headers)
        assert_typed(r)
        rate = sess.config["input_sample_rate"]
        fmt = _check_format(None if content_type is None else content_type.strip(" \t"), rate)
        if fmt is None:
            assert r.status_code == 415, r.text
            accepted = 0
        else:
            assert r.status_code == 204, r.text
            accepted = len(body) // 2 * 2
            assert r.headers["X-Accepted-Bytes"] == str(accepted)
        stats = assert_usable(client, sess)
        assert stats["bytes_in"] == accepted + 640


sequence_values = (
    header_text
    | st.integers(-5, 5).map(str)
    | st.sampled_from(
        [
            "0",
            " 0 ",
            "+0",
            "00",
            "0x0",
            "0.0",
            "1e0",
            "0_0",
            "-0",
            str(2**62),
            str(2**62 + 1),
            str(2**64),
            "9" * 5000,
            "",
        ]
    )
)


@HTTP_SETTINGS
@given(value=sequence_values, body=st.binary(max_size=700))
def test_x_sequence_header_fuzz(live: Live, value: str, body: bytes) -> None:
    client = live.client
    with fresh_session(client) as sess:
        r = client.post(
            f"{sess.url}/upload_audio",
            content=body,
            headers=sess.auth | {"X-Sequence": header_value(value)},
        )
        assert_typed(r)
        assert r.status_code in (204, 400, 409), r.text
        number = _int_or_none(value)
        if number is None or number > 2**62:
            assert r.json()["error"]["code"] == "invalid_sequence", r.text
        elif number == 0:
            assert r.status_code == 204, r.text
        else:
            assert r.json()["error"]["code"] == "sequence_gap", r.text
        if r.status_code == 204:
            assert r.headers["X-Acked-Sequence"] == "0"
            accepted = len(body)
            in_bytes = len(body) // 2 * 2
        else:
            assert r.json()["error"]["code"] in ("invalid_sequence", "sequence_gap")
            accepted = in_bytes = 0
        assert r.headers.get("X-Accepted-Bytes", "0") == str(accepted)
        stats = assert_usable(client, sess)
        # an odd sequenced body leaves its byte carried; the even 640 that follow keep it
        assert stats["bytes_in"] == in_bytes + 640
        assert stats["next_sequence"] == (1 if r.status_code == 204 else 0)


last_event_ids = (
    header_text
    | st.integers(-3, 10**30).map(str)
    | st.sampled_from(["", " 1", "1 ", "+1", "1.0", "0x1", "1_0", "-0", "9" * 5000])
)


@HTTP_SETTINGS
@given(value=last_event_ids, in_query=st.booleans())
def test_last_event_id_fuzz(live: Live, value: str, in_query: bool) -> None:
    client = live.client
    with fresh_session(client) as sess:
        url = f"{sess.url}/events"
        headers = dict(sess.auth)
        params = {}
        if in_query:
            params["last_event_id"] = value
        else:
            headers["Last-Event-ID"] = header_value(value)
        with client.stream("GET", url, headers=headers, params=params) as r:
            if r.status_code == 200:
                assert r.headers["content-type"].startswith("text/event-stream")
                first = next(r.iter_raw())
                assert first.startswith(b"retry: 1000\n\n")
            else:
                r.read()
        assert_typed(r)
        assert r.status_code in (200, 400), r.text
        sent = value if in_query else value.strip(" \t")
        number = _int_or_none(sent)
        if sent == "" or (number is not None and number <= 2**62):
            assert r.status_code == 200
        else:
            assert r.status_code == 400
        if r.status_code == 400:
            assert r.json()["error"]["code"] == "invalid_last_event_id"
        assert_usable(client, sess)
        # the stream's end is noticed: the session is not held busy
        deadline = time.monotonic() + 5
        while live.server.open_requests():
            assert time.monotonic() < deadline, "events stream still open after close"
            time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# Bugs the fuzzing found (fixed; kept as regression tests)
# ---------------------------------------------------------------------------------------


def test_response_create_without_models_keeps_the_loopback_session(live: Live) -> None:
    client = live.client
    failed_before = sessions_failed(client)
    try:
        with fresh_session(client) as sess:
            r = client.post(
                f"{sess.url}/events", json={"type": "response.create"}, headers=sess.auth
            )
            # Refused up front (a reply needs the voice), not accepted and then fatal.
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "models_unavailable"
            time.sleep(0.3)
            assert_usable(client, sess)
    finally:
        live.known_session_failures += sessions_failed(client) - failed_before


@HTTP_SETTINGS
@given(
    first=st.sampled_from(
        [
            {"type": "session.update", "session": {"temperature": 1.25}},
            {"type": "session.update", "session": {"instructions": "changed"}},
            {"type": "input_audio_buffer.clear"},
        ]
    ),
    bad=st.sampled_from(
        [{"bogus": 1}, {"temperature": 7}, {"input_sample_rate": 8000}, {"voice": "alloy"}]
    ),
)
def test_a_refused_list_of_client_events_applies_none(
    live: Live, first: dict[str, Any], bad: dict[str, Any]
) -> None:
    client = live.client
    with fresh_session(client) as sess:
        events_before = _read_event_types(client, sess)
        before = client.get(sess.url, headers=sess.auth).json()["config"]
        body = [first, {"type": "session.update", "session": bad}]
        r = client.post(f"{sess.url}/events", json=body, headers=sess.auth)
        assert_typed(r)
        assert r.status_code == 422, r.text
        assert client.get(sess.url, headers=sess.auth).json()["config"] == before
        # only the refusal is reported: no session.updated / input_audio_buffer.cleared
        new = _read_event_types(client, sess)[len(events_before) : -1]
        assert new == ["error"], new


def _read_event_types(client: httpx.Client, sess: Sess) -> list[str]:
    """Every event type held for the session, read with a marker PATCH at the end."""
    marker = f"marker-{time.monotonic_ns()}"
    r = client.patch(sess.url, json={"instructions": marker}, headers=sess.auth)
    assert r.status_code == 200, r.text
    kinds: list[str] = []
    with client.stream("GET", f"{sess.url}/events", headers=sess.auth) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            kinds.append(event["type"])
            if event["type"] == "session.updated":
                if event["session"]["config"]["instructions"] == marker:
                    break
    return kinds


def test_huge_numbers_and_nonfinite_floats_never_reach_the_config(live: Live) -> None:
    """Regression corpus: big or non-finite numbers in every numeric config field."""
    client = live.client
    with fresh_session(client) as sess:
        for key in ("temperature", "max_response_output_tokens", "input_sample_rate"):
            for literal in (b"1e999", b"-1e999", b"1" + b"0" * 300, b"NaN", b"-Infinity"):
                raw = b'{"' + key.encode() + b'": ' + literal + b"}"
                r = client.patch(
                    sess.url, content=raw, headers=sess.auth | {"Content-Type": "application/json"}
                )
                assert_typed(r)
                assert r.status_code in (400, 422), (raw, r.text)
        config = client.get(sess.url, headers=sess.auth).json()["config"]
        assert all(not isinstance(v, float) or math.isfinite(v) for v in config.values()), config
        assert_usable(client, sess)
        big = b"1" + b"0" * 400  # an integer field takes any size of integer (422)
        for key in ("max_response_output_tokens", "input_sample_rate"):
            raw = b'{"' + key.encode() + b'": ' + big + b"}"
            r = client.patch(
                sess.url, content=raw, headers=sess.auth | {"Content-Type": "application/json"}
            )
            assert_typed(r)
            assert r.status_code == 422, (raw, r.text)


def test_huge_integer_in_a_float_field_is_422_not_500(live: Live) -> None:
    client = live.client
    big = "1" + "0" * 400
    failures = []
    with fresh_session(client) as sess:
        for field, where in itertools.product(
            ('{"temperature": %s}', '{"turn_detection": {"threshold": %s}}'),
            ("create", "patch", "event"),
        ):
            config = (field % big).encode()
            headers = {"Content-Type": "application/json"}
            if where == "create":
                r = client.post("/api/sessions", content=config, headers=headers)
            elif where == "patch":
                r = client.patch(sess.url, content=config, headers=headers | sess.auth)
            else:
                body = b'{"type": "session.update", "session": ' + config + b"}"
                r = client.post(f"{sess.url}/events", content=body, headers=headers | sess.auth)
            if r.status_code != 422:
                failures.append((where, field % "1e400", r.status_code))
        assert_usable(client, sess)
    assert not failures, failures
