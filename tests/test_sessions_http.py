"""Session resources over real HTTP: create, list, get, patch, delete, auth, caps, TTL."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.conftest import Running, StartServer, create_session


async def test_create_returns_id_token_config_urls(client: httpx.AsyncClient) -> None:
    a = await create_session(client, responder="none", input_sample_rate=24000)
    b = await create_session(client)
    assert a.id != b.id
    assert a.token != b.token
    assert a.id.startswith("sess_")
    assert len(a.id) - 5 >= 22
    assert len(a.token) >= 43
    assert a.body["config"]["input_sample_rate"] == 24000
    assert a.body["config"]["responder"] == "none"
    assert a.urls["upload_audio"] == f"/api/sessions/{a.id}/upload_audio"
    r = await client.get(a.urls["session"], headers=a.auth)
    assert r.status_code == 200
    assert r.json()["config"]["input_sample_rate"] == 24000


async def test_same_404_for_unknown_wrong_token_deleted_and_expired(
    start_server: StartServer,
) -> None:
    server = await start_server(session_idle_ttl_s=0.3, reap_interval_s=0.1)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        live = await create_session(client)
        deleted = await create_session(client)
        expired = await create_session(client)
        r = await client.delete(deleted.urls["session"], headers=deleted.auth)
        assert r.status_code == 204
        # keep `live` busy with an open request so the reaper spares it
        with trio.fail_after(5):
            while expired.id in {s.id for s in server.registry.sessions()}:
                await client.get(live.urls["session"], headers=live.auth)
                await trio.sleep(0.05)
        cases = [
            ("/api/sessions/sess_doesnotexist", live.auth),
            (live.urls["session"], {"Authorization": "Bearer wrong"}),
            (live.urls["session"], {}),
            (live.urls["session"], expired.auth | {"X": "y"}),
            (deleted.urls["session"], deleted.auth),
            (expired.urls["session"], expired.auth),
            (live.urls["stream_audio"] + "?token=nope", {}),
            (live.urls["events"], {"Authorization": f"Bearer {deleted.token}"}),
        ]
        replies = []
        for url, headers in cases:
            r = await client.get(url, headers=headers)
            replies.append((r.status_code, r.content))
        assert {status for status, _ in replies} == {404}
        assert len({body for _, body in replies}) == 1
        assert replies[0][1]
        assert b'"session_not_found"' in replies[0][1]
        r = await client.get(live.urls["session"], headers=live.auth)
        assert r.status_code == 200


async def test_api_key_guards_creation_and_monitoring(start_server: StartServer) -> None:
    server = await start_server(api_key="s3cret")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = await client.post("/api/sessions", headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert (await client.get("/api/sessions", headers=headers)).status_code == 401
            assert (await client.get("/metrics", headers=headers)).status_code == 401
        # Health checks stay open: load balancers send no key.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code in (200, 503)  # models, not a key
        key = {"Authorization": "Bearer s3cret"}
        assert (await client.get("/metrics", headers=key)).status_code == 200
        r = await client.post("/api/sessions", headers=key)
        assert r.status_code == 201
        listed = (await client.get("/api/sessions", headers=key)).json()["data"]
        assert [s["id"] for s in listed] == [r.json()["id"]]
        assert {"id", "age_s", "state", "bytes_in", "bytes_out", "turns"} <= set(listed[0])


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"bogus": 1}', "bogus"),
        (b'{"temperature": NaN}', "temperature"),
        (b'{"temperature": Infinity}', "temperature"),
        (b'{"temperature": 1e400}', "temperature"),
        (b'{"input_sample_rate": "16000"}', "input_sample_rate"),
        (b'{"output_sample_rate": 123}', "output_sample_rate"),
        (b'{"turn_detection": {"threshold": -1}}', "turn_detection.threshold"),
    ],
)
async def test_bad_config_is_422_naming_param(
    client: httpx.AsyncClient, raw: bytes, param: str
) -> None:
    r = await client.post(
        "/api/sessions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["param"] == param
    assert body["error"]["code"] == "invalid_value"


async def test_bad_bodies(client: httpx.AsyncClient, server: Running) -> None:
    r = await client.post(
        "/api/sessions", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    r = await client.post(
        "/api/sessions",
        content=b"x=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415
    big = b'{"instructions": "' + b"a" * server.config.max_json_bytes + b'"}'
    r = await client.post(
        "/api/sessions", content=big, headers={"Content-Type": "application/json"}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")

    async def chunked() -> object:
        yield b'{"instructions": "'
        for _ in range(100):
            yield b"a" * 1024
        yield b'"}'

    gen = chunked()
    r = await client.post(
        "/api/sessions",
        content=gen,  # type: ignore[arg-type]
        headers={"Content-Type": "application/json"},
    )
    await gen.aclose()  # type: ignore[attr-defined]  # the server may answer before the end
    assert r.status_code == 413
    assert len(server.registry) == 0
    r = await client.get("/api/nothing-here")
    assert r.status_code == 404
    assert r.json()["type"] == "error"


async def test_patch_updates_and_rejects_fixed_keys(client: httpx.AsyncClient) -> None:
    s = await create_session(client)
    r = await client.patch(
        s.urls["session"],
        headers=s.auth,
        json={"instructions": "Be brief.", "turn_detection": None},
    )
    assert r.status_code == 200
    assert r.json()["config"]["instructions"] == "Be brief."
    assert r.json()["config"]["turn_detection"] is None
    r = await client.patch(s.urls["session"], headers=s.auth, json={"output_sample_rate": 48000})
    assert (r.status_code, r.json()["error"]["param"]) == (422, "output_sample_rate")
    r = await client.patch(s.urls["session"], headers={"Authorization": "Bearer x"}, json={})
    assert r.status_code == 404


async def test_session_cap_answers_503_with_retry_after(start_server: StartServer) -> None:
    server = await start_server(max_sessions=2)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        a = await create_session(client)
        await create_session(client)
        r = await client.post("/api/sessions")
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "too_many_sessions"
        await client.delete(a.urls["session"], headers=a.auth)
        assert (await client.post("/api/sessions")).status_code == 201


async def test_delete_frees_the_session_tasks(client: httpx.AsyncClient, server: Running) -> None:
    s = await create_session(client)
    session = next(iter(server.registry.sessions()))
    r = await client.delete(s.urls["session"], headers=s.auth)
    assert r.status_code == 204
    with trio.fail_after(2):
        await session.closed.wait()
    assert len(server.registry) == 0
    assert (await client.delete(s.urls["session"], headers=s.auth)).status_code == 404


async def test_health_ready_metrics_and_page(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    await create_session(client)
    text = (await client.get("/metrics")).text
    assert "voxwire_sessions 1.0" in text
    assert "voxwire_sessions_created_total 1.0" in text
    for name in (
        "voxwire_audio_in_bytes_total",
        "voxwire_upload_throttled_total",
        "voxwire_stream_underruns_total",
    ):
        assert name in text
    page = await client.get("/")
    assert page.status_code == 200
    assert "voxwire" in page.text


async def test_page_files_are_served_by_name_only(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    for name in ("/web/app.js", "/web/capture-worklet.js", "/web/playback-worklet.js"):
        r = await client.get(name)
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith("text/javascript")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-content-type-options"] == "nosniff"
    for bad in ("/web/nope.js", "/web/..%2Fpyproject.toml", "/web/index.htm"):
        r = await client.get(bad)
        assert r.status_code == 404, bad
        assert r.headers["content-type"] == "application/json"


async def test_a_trusted_proxy_names_sessions(start_server: StartServer) -> None:
    """With ``session_id_header`` set, the proxy's id names the session (deploy/*.conf)."""
    header = "X-Voxwire-Session-Id"
    chosen = "sess_" + "ab12" * 8
    plain = await start_server()
    trusting = await start_server(session_id_header=header)
    async with httpx.AsyncClient(base_url=plain.url) as c:
        # Not configured: a client cannot pick its id.
        r = await c.post("/api/sessions", json={"responder": "loopback"}, headers={header: chosen})
        assert r.status_code == 201
        assert r.json()["id"] != chosen
    async with httpx.AsyncClient(base_url=trusting.url) as c:
        body = {"responder": "loopback"}
        r = await c.post("/api/sessions", json=body, headers={header: chosen})
        assert r.status_code == 201
        assert r.json()["id"] == chosen
        assert r.json()["urls"]["events"] == f"/api/sessions/{chosen}/events"
        again = await c.post("/api/sessions", json=body, headers={header: chosen})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "session_id_in_use"
        for bad in ("sess_short", "nope_" + "a" * 30, "sess_" + "a" * 30 + "/x"):
            r = await c.post("/api/sessions", json=body, headers={header: bad})
            assert r.status_code == 400, bad
            assert r.json()["error"]["code"] == "invalid_session_id"
            assert r.json()["error"]["param"] == header
        r = await c.post("/api/sessions", json=body)  # no header: a random id, as ever
        assert r.status_code == 201
        assert r.json()["id"].startswith("sess_")
