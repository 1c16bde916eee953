"""docs/openapi.yaml against the code and against the running server (schemathesis).

- The document is valid OpenAPI 3.1 (schemathesis validates it against the meta-schema), it
  lists exactly the routes the app has (``app.url_map``), and ``GET /openapi.yaml`` serves it.
- Property tests: schemathesis generates requests from the document (its examples, its
  coverage cases and fuzzed ones, valid and invalid) and sends them to the real app under
  hypercorn on loopback; every response must have a documented status, content type,
  headers and body, and no 5xx but the documented ``503 models_unavailable``.

The server and the sync client work as in tests/test_fuzz.py (see its docstring): one
:class:`ThreadedServer` per module, with models that fail to load at once and the
``loopback`` responder, so sessions work without any model and the only 503 is
``models_unavailable``. A per-session operation gets a fresh session for every example: the
generated ``session_id`` and ``Authorization`` are replaced by a real id and its token (a
random id is only ever the one 404, tested separately), and the session is checked to be
still usable afterwards, then deleted.

The two streaming GETs (``stream_audio``, ``events``) never end, so schemathesis, which
reads a whole response before checking it, is not pointed at them; their status, content
type and headers are checked from the first chunk instead, and their error answers
(bad ``from_ms``/``Last-Event-ID``, unknown id) through schemathesis cases built by hand.
"""

from __future__ import annotations

import functools
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from app import ServerConfig, create_app
from app._config import SUPPORTED_RATES
from tests.test_fuzz import NO_MODELS, ThreadedServer, sessions_failed, wait_models_unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"

# GET stream_audio and GET events never end: schemathesis reads a whole body before it
# checks anything, so it would wait forever. They are left out of the generated runs and
# checked from their first chunk (test_streaming_gets_*) and through their errors.
STREAMING = ("streamAudio", "streamEvents")


def load_schema(**generation: Any) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            # no .schemathesis cache directory in the work tree
            "cache": {"enabled": False},
            "generation": generation,
            # schemathesis' own 5xx check allows none; ours allows the one documented 503
            "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}},
        }
    )
    return schemathesis.openapi.from_path(SPEC_PATH, config=config)


schema = load_schema()
# Session-less calls: a path parameter outside its pattern (a "/" in it, say) reaches
# another route, so the unknown-id test uses valid-looking ids only.
positive_schema = load_schema(mode="positive")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    # undeclared methods are 405 with Allow; OPTIONS lists the documented ones
    unsupported_method,
    allow_header_conformance,
]
HEADER_CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance]

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


@schemathesis.serializer("audio/L16", "audio/pcm")
def _pcm(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """Raw PCM bodies are bytes as generated (schemathesis knows octet-stream only)."""
    return value if isinstance(value, bytes) else str(value).encode()


# ---------------------------------------------------------------------------------------
# The document itself
# ---------------------------------------------------------------------------------------


@functools.cache
def spec() -> dict[str, Any]:
    """The document as parsed YAML (read once: do not modify it)."""
    data: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return data


METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def spec_operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation object) for every operation in the document."""
    for path, item in spec()["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


def documented_operations() -> set[tuple[str, str]]:
    return {(method, path) for method, path, _ in spec_operations()}


def app_routes() -> set[tuple[str, str]]:
    app = create_app(ServerConfig())
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):  # added by Quart to every route
                routes.add((method, path))
    return routes


def test_the_document_is_valid_openapi_3_1() -> None:
    assert spec()["openapi"].startswith("3.1.")
    schema.validate()  # the OpenAPI 3.1 meta-schema; raises on any violation
    labels = {op.ok().label for op in schema.get_all_operations()}
    assert labels == {f"{m} {p}" for m, p in documented_operations()}


def test_the_document_lists_exactly_the_apps_routes() -> None:
    routes = app_routes()
    assert any(path.startswith("/api/") for _, path in routes)
    assert {"/healthz", "/readyz", "/metrics"} <= {path for _, path in routes}
    documented = documented_operations()
    assert routes - documented == set(), "routes missing from docs/openapi.yaml"
    assert documented - routes == set(), "docs/openapi.yaml lists routes the app lacks"


def test_every_operation_has_a_unique_id_and_every_error_uses_the_shared_schema() -> None:
    ids = [op["operationId"] for _, _, op in spec_operations()]
    assert len(ids) == len(set(ids))
    responses = spec()["components"]["responses"]

    def resolve(response: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in response:
            response = responses[response["$ref"].rsplit("/", 1)[1]]
        return response

    for method, path, op in spec_operations():
        for status, response in op["responses"].items():
            if int(status) >= 400:
                where = f"{method} {path} {status}"
                schema = resolve(response)["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, where
                # the codes, in backticks, that assert_documented_error holds the server to
                assert re.search(r"`[a-z0-9_]+`", resolve(response)["description"]), where


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------


@dataclass
class Api:
    server: ThreadedServer
    client: httpx.Client  # set-up and checks
    http: requests.Session  # schemathesis' transport
    shared: tuple[str, str] | None = None  # (id, token) of the generated cases' session

    def session(self) -> tuple[str, str]:
        """The session the generated cases share, a new one after a case ended it.

        Sharing it (thousands of cases, most for ``POST .../events``) leaves out a create
        and a delete per case, and lets each case meet the state earlier ones left.
        """
        if self.shared is None:
            self.shared = self.new_session()
        return self.shared

    def new_session(self) -> tuple[str, str]:
        r = self.client.post("/api/sessions", json={"responder": "loopback"})
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["token"]

    def delete(self, session_id: str, token: str) -> None:
        r = self.client.delete(f"/api/sessions/{session_id}", headers=bearer(token))
        assert r.status_code in (204, 404), r.text


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    with (
        ThreadedServer(**NO_MODELS) as server,
        httpx.Client(base_url=server.url, timeout=15) as client,
        requests.Session() as http,
    ):
        wait_models_unavailable(client)
        api = Api(server, client, http)
        yield api
        if api.shared is not None:
            api.delete(*api.shared)
        # Nothing a generated request did may have killed a session, or left one behind.
        assert sessions_failed(client) == 0
        assert server.session_ids() == set()


def send(api: Api, case: schemathesis.Case) -> schemathesis.Response:
    return case.call(base_url=api.server.url, session=api.http, timeout=15)


def documented_codes(case: schemathesis.Case, status: int) -> set[str]:
    """The error codes the document names (in backticks) for this operation and status."""
    doc = spec()
    op = doc["paths"][case.operation.path][case.operation.method.lower()]
    response = op["responses"][str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return set(re.findall(r"`([a-z0-9_]+)`", response["description"]))


def assert_documented_error(case: schemathesis.Case, response: schemathesis.Response) -> None:
    """A documented status carries one of the error codes documented for it."""
    if response.status_code >= 400 and case.method.upper() == case.operation.method.upper():
        code = response.json()["error"]["code"]
        assert code in documented_codes(case, response.status_code), (
            f"{case.operation.label} {response.status_code}: code {code!r} is not documented"
        )


def assert_no_5xx_but_models_unavailable(response: schemathesis.Response) -> None:
    if response.status_code >= 500:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "models_unavailable", response.text


def with_auth(case: schemathesis.Case, token: str) -> dict[str, Any]:
    """The case's headers with its (generated) Authorization replaced by ``token``."""
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    return headers | bearer(token)


def _prepare(case: schemathesis.Case, session_id: str, token: str) -> None:
    """A real session and its token in place of the generated ones."""
    case.path_parameters = {**(case.path_parameters or {}), "session_id": session_id}
    case.headers = with_auth(case, token)
    if case.media_type == "audio/L16" and not any(
        name.lower() == "content-type" for name in case.headers
    ):
        # RFC 2586 needs the rate; pick one from the body so examples vary.
        body = case.body if isinstance(case.body, bytes) else b""
        rate = SUPPORTED_RATES[len(body) % len(SUPPORTED_RATES)]
        case.headers["Content-Type"] = f"audio/L16;rate={rate}"


@SETTINGS
@schema.exclude(operation_id=list(STREAMING)).parametrize()
def test_api_conforms_to_the_document(api: Api, case: schemathesis.Case) -> None:
    session: tuple[str, str] | None = None
    if "{session_id}" in case.path:
        session = api.session()
        _prepare(case, *session)
    ended = True  # unless shown otherwise, the next case gets a new session
    try:
        response = send(api, case)
        assert_no_5xx_but_models_unavailable(response)
        case.validate_response(response, checks=CHECKS)
        assert_documented_error(case, response)
        if case.operation.label == "POST /api/sessions" and response.status_code == 201:
            api.delete(response.json()["id"], response.json()["token"])
        if session is None:
            assert api.client.get("/healthz").status_code == 200
        elif not (case.method == "DELETE" and response.status_code == 204):
            # the session (and so the server) survived whatever was sent to it
            r = api.client.get(f"/api/sessions/{session[0]}", headers=bearer(session[1]))
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "active"
            ended = False
    finally:
        if session is not None and ended:
            api.delete(*session)
            api.shared = None


@settings(SETTINGS, max_examples=5)
@positive_schema.include(path_regex=r"\{session_id\}").parametrize()
def test_an_unknown_session_is_the_documented_404(api: Api, case: schemathesis.Case) -> None:
    # Also for the streaming GETs: the 404 comes before any stream starts.
    case.headers = with_auth(case, secrets.token_urlsafe(32))
    case.query = {k: v for k, v in (case.query or {}).items() if k != "token"}
    response = send(api, case)
    case.validate_response(response, checks=CHECKS)
    assert_documented_error(case, response)
    if case.method.upper() == case.operation.method.upper():  # not a 405 probe
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "session_not_found"


def _operation(path: str, method: str) -> Any:
    return schema[path][method]


@pytest.mark.parametrize(
    ("path", "query", "headers", "code"),
    [
        ("stream_audio", {"from_ms": "soon"}, {}, "invalid_from_ms"),
        ("stream_audio", {"from_ms": "-1"}, {}, "invalid_from_ms"),
        ("events", {}, {"Last-Event-ID": "x"}, "invalid_last_event_id"),
        ("events", {"last_event_id": "1.5"}, {}, "invalid_last_event_id"),
    ],
)
def test_streaming_gets_refuse_bad_positions_as_documented(
    api: Api, path: str, query: dict[str, str], headers: dict[str, str], code: str
) -> None:
    session_id, token = api.new_session()
    try:
        op = _operation(f"/api/sessions/{{session_id}}/{path}", "GET")
        case = op.Case(
            path_parameters={"session_id": session_id},
            headers=bearer(token) | headers,
            query=query,
        )
        response = send(api, case)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == code
        case.validate_response(response, checks=CHECKS)
        assert_documented_error(case, response)
    finally:
        api.delete(session_id, token)


@pytest.mark.parametrize(
    ("path", "query_token"),
    [("stream_audio", False), ("stream_audio", True), ("events", False), ("events", True)],
)
def test_streaming_gets_send_the_documented_status_type_and_headers(
    api: Api, path: str, query_token: bool
) -> None:
    """The first chunk of each stream, checked against the document (they never end)."""
    session_id, token = api.new_session()
    try:
        op = _operation(f"/api/sessions/{{session_id}}/{path}", "GET")
        headers, params = ({}, {"token": token}) if query_token else (bearer(token), {})
        url = f"/api/sessions/{session_id}/{path}"
        with api.client.stream("GET", url, headers=headers, params=params) as r:
            first = next(r.iter_raw())
            # A finished response with the stream's status, headers and first bytes.
            head = httpx.Response(
                r.status_code, headers=r.headers, content=first, request=r.request
            )
            head.elapsed = timedelta(0)  # set by httpx only once a response is closed
        assert head.status_code == 200, first
        if path == "stream_audio":
            assert first.startswith(b"RIFF")
            assert "content-length" not in r.headers
        else:
            assert first.startswith(b"retry: 1000\n\n")
        case = op.Case(path_parameters={"session_id": session_id}, headers=headers, query=params)
        case.validate_response(head, checks=HEADER_CHECKS)
    finally:
        api.delete(session_id, token)


def test_get_openapi_yaml_serves_the_document(api: Api) -> None:
    r = api.client.get("/openapi.yaml")
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] in ("application/yaml", "text/yaml")
    assert r.content == SPEC_PATH.read_bytes()
    assert yaml.safe_load(r.text)["openapi"].startswith("3.1.")


# ---------------------------------------------------------------------------------------
# With an API key
# ---------------------------------------------------------------------------------------

API_KEY = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def keyed() -> Iterator[Api]:
    with (
        ThreadedServer(**NO_MODELS, api_key=API_KEY) as server,
        httpx.Client(base_url=server.url, timeout=15, headers=bearer(API_KEY)) as client,
        requests.Session() as http,
    ):
        wait_models_unavailable(client)
        yield Api(server, client, http)
        assert server.session_ids() == set()


@settings(SETTINGS, max_examples=10)
@schema.include(operation_id=["createSession", "listSessions", "metrics"]).parametrize()
def test_without_the_api_key_the_documented_401(keyed: Api, case: schemathesis.Case) -> None:
    response = send(keyed, case)
    case.validate_response(response, checks=CHECKS)
    assert_documented_error(case, response)
    if case.method.upper() == case.operation.method.upper():  # not a 405 probe
        # Generated credentials (or none) are never the key.
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [("/api/sessions", "POST", 201), ("/api/sessions", "GET", 200), ("/metrics", "GET", 200)],
)
def test_with_the_api_key_the_documented_answer(
    keyed: Api, path: str, method: str, status: int
) -> None:
    case = _operation(path, method).Case(headers=bearer(API_KEY))
    if method == "POST":
        case = _operation(path, method).Case(
            headers=bearer(API_KEY), body={"responder": "loopback"}, media_type="application/json"
        )
    response = send(keyed, case)
    assert response.status_code == status, response.text
    case.validate_response(response, checks=CHECKS)
    if status == 201:
        keyed.delete(response.json()["id"], response.json()["token"])


# ---------------------------------------------------------------------------------------
# Bugs schemathesis found (fixed; kept as regression tests)
# ---------------------------------------------------------------------------------------


def _read_response(sock: socket.socket) -> tuple[bytes, dict[str, str]]:
    """One HTTP/1.1 response with a Content-Length: (status line, lower-cased headers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        body += chunk
    return status.encode(), headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("OPTIONS", "/api/sessions", b"200"),  # what schemathesis sent: then DELETE hung
        ("GET", "/healthz", b"200"),
        ("GET", "{session}", b"200"),
        ("POST", "{session}/stop_stream", b"200"),
        ("DELETE", "{session}", b"204"),
        ("PUT", "/api/sessions", b"405"),
        ("POST", "{session}/upload_audio", b"415"),  # an error answered from the headers
    ],
)
def test_an_answer_before_the_body_arrived_never_hangs_the_next_request(
    api: Api, method: str, path: str, status: bytes
) -> None:
    """A route that ignores a request body used to answer, keep the connection open, and
    then never answer the next request on it (hypercorn could not recycle the connection,
    and its close was cancelled with the request's task). Now such an answer says
    ``Connection: close``; a client that honours it, as every HTTP/1.1 client does, opens
    a new connection. Deterministic: the body is sent only after the answer is in."""
    session_id, token = api.new_session()
    target = path.replace("{session}", f"/api/sessions/{session_id}")
    host, port = api.server.url.rsplit("/", 1)[1].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n".encode()
            )
            first, headers = _read_response(sock)
            assert status in first, first
            sock.sendall(b"{}")
            if headers.get("connection", "").lower() != "close":
                # Kept alive: then the next request on it must be answered.
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                second, _ = _read_response(sock)  # socket.timeout here was the bug
                assert b"200" in second, second
    finally:
        api.delete(session_id, token)


def test_requests_without_a_body_keep_the_connection(api: Api) -> None:
    """The fix closes only connections whose request body is unread."""
    r = api.client.get("/healthz")
    assert "close" not in r.headers.get("connection", "")
    r = api.client.delete("/api/sessions/sess_unknownunknownunknownun", headers=bearer("x"))
    assert r.status_code == 404
    assert "close" not in r.headers.get("connection", "")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/sessions", {"GET", "POST"}),
        ("POST", "/api/sessions/{session_id}", {"GET", "PATCH", "DELETE"}),
        ("DELETE", "/healthz", {"GET"}),
    ],
)
def test_405_names_the_allowed_methods(api: Api, method: str, path: str, allowed: set[str]) -> None:
    """RFC 9110: a 405 must carry ``Allow``; the JSON error handler used to drop it."""
    url = path.replace("{session_id}", "sess_unknownunknownunknownun")
    r = api.client.request(method, url)
    assert r.status_code == 405, r.text
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert allowed <= {m.strip() for m in r.headers["allow"].split(",")}
    assert r.headers["content-type"] == "application/json"
