"""The llm responder against a real local OpenAI-compatible streaming server."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from tests.conftest import create_session
from tests.fake_llm import FakeLlm, start_fake_llm
from tests.speech import synthesize
from tests.voice import Events, Stream, post_events, push_to_talk, say, wer

if TYPE_CHECKING:
    from tests.conftest import Running, StartServer

KEY = "sk-test-secret-0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
LONG_REPLY = (
    "Sure. Here is a fairly long answer that keeps going for a while so that it can be "
    "interrupted. It has several sentences. Each one is spoken as soon as it is complete."
)


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeLlm:
    return await start_fake_llm(nursery, FakeLlm())


@pytest.fixture
async def llm_server(start_server: StartServer, fake: FakeLlm) -> Running:
    return await start_server(
        openai_base_url=fake.url,
        openai_api_key=KEY,
        openai_model="test-model",
        llm_first_token_timeout_s=1.0,
    )


@pytest.fixture
async def client(llm_server: Running) -> Any:
    async with httpx.AsyncClient(base_url=llm_server.url, timeout=30) as c:
        yield c


CREATE = {"type": "response.create"}


async def nth_done(events: Events, n: int) -> dict[str, Any]:
    return await events.nth("response.done", n)


async def test_tokens_stream_out_and_speech_starts_before_the_last_token(
    client: httpx.AsyncClient, fake: FakeLlm
) -> None:
    fake.token_delay_s = 0.12
    s = await create_session(client, responder="llm", turn_detection=None, temperature=0.3)
    events, stream = Events(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, say("What is up?"), CREATE)
        await stream.first_audio.wait()
        first_audio_at = trio.current_time()
        done = await nth_done(events, 1)
        nursery.cancel_scope.cancel()
    deltas = [d["delta"] for d in events.of("response.output_audio_transcript.delta")]
    assert len(deltas) == len(fake.reply.split())
    assert "".join(deltas) == fake.reply
    assert done["response"]["status"] == "completed"
    # the first sentence was spoken while the model was still generating the rest
    assert first_audio_at < fake.token_times[-1]
    (body,) = fake.requests
    assert body["model"] == "test-model"
    assert body["stream"] is True
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 4096
    assert body["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is up?"},
    ]
    assert fake.auth == [f"Bearer {KEY}"]
    latency = done["response"]["latency"]
    assert latency["first_token_ms"] <= latency["first_audio_queued_ms"]


async def test_history_follows_the_conversation_and_truncation_after_a_cancel(
    client: httpx.AsyncClient, fake: FakeLlm
) -> None:
    s = await create_session(client, responder="llm", turn_detection=None)
    events, stream = Events(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        fake.reply = "Turn one answered."
        await post_events(client, s, say("Turn one."), CREATE)
        await nth_done(events, 1)
        fake.reply, fake.token_delay_s = LONG_REPLY, 0.02
        await post_events(client, s, say("Turn two."), CREATE)
        await events.wait_for(
            "response.output_audio_transcript.delta", lambda e: "keeps" in e["delta"]
        )
        mark = stream.n
        # 1.5 s of the reply's audio has played (however slow the TTS: under load the
        # stream carries silence between pieces, which is not played reply)
        with trio.fail_after(30):
            while True:
                if stream.voiced_since(mark) >= 1.5:
                    break
                await trio.sleep(0.05)
        await post_events(client, s, {"type": "response.cancel"})
        cut = await nth_done(events, 2)
        truncated = await events.wait_for("conversation.item.truncated")
        fake.reply = "Three."
        await post_events(
            client,
            s,
            say("Turn three."),
            {"type": "response.create", "response": {"instructions": "Be brief."}},
        )
        await nth_done(events, 3)
        nursery.cancel_scope.cancel()
    assert cut["response"]["status"] == "cancelled"
    assert 1000 <= truncated["audio_end_ms"] <= 4000
    messages = fake.requests[2]["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1:4] == [
        {"role": "user", "content": "Turn one."},
        {"role": "assistant", "content": "Turn one answered."},
        {"role": "user", "content": "Turn two."},
    ]
    heard = messages[4]
    assert heard["role"] == "assistant"
    # what was played, not what was generated: a proper prefix of the reply
    assert LONG_REPLY.startswith(heard["content"])
    assert 10 < len(heard["content"]) < len(LONG_REPLY) - 20
    assert messages[5] == {"role": "user", "content": "Turn three."}
    # every item is announced (replies too, as in GA); the cut reply ends incomplete
    added = [e["item"]["role"] for e in events.of("conversation.item.added")]
    assert added == ["user", "assistant"] * 3
    done = {e["item"]["id"]: e["item"] for e in events.of("conversation.item.done")}
    assert done[truncated["item_id"]]["status"] == "incomplete"


async def test_images_reach_the_model_as_content_parts(
    client: httpx.AsyncClient, fake: FakeLlm
) -> None:
    s = await create_session(client, responder="llm", turn_detection=None)
    url = f"/api/sessions/{s.id}/upload_frame"
    r = await client.post(url, headers={**s.auth, "Content-Type": "image/gif"}, content=PNG)
    assert r.status_code == 415
    r = await client.post(url, headers={**s.auth, "Content-Type": "image/jpeg"}, content=PNG)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_image"
    r = await client.post(url, headers={**s.auth, "Content-Type": "image/png"}, content=PNG)
    assert r.status_code == 204
    data_url = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff fake").decode()
    item = {
        "type": "conversation.item.create",
        "item": {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What do you see?"},
                {"type": "input_image", "image_url": data_url},
            ],
        },
    }
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, item, CREATE)
        await nth_done(events, 1)
        # the frame was used once: the next turn has no image
        await post_events(client, s, say("And now?"), CREATE)
        await nth_done(events, 2)
        nursery.cancel_scope.cancel()
    frame_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert fake.requests[0]["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What do you see?"},
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "image_url", "image_url": {"url": frame_url}},
        ],
    }
    assert fake.requests[1]["messages"][-1] == {"role": "user", "content": "And now?"}
    # bad items are refused whole, naming the part
    bad = {
        "type": "conversation.item.create",
        "item": {"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]},
    }
    r = await client.post(f"/api/sessions/{s.id}/events", headers=s.auth, json=bad)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "[0].item.content[0]"


@pytest.mark.parametrize(
    ("mode", "status", "message"),
    [
        ("status", 500, "answered 500: model overloaded"),
        ("status", 401, "answered 401"),
        ("malformed", 0, "malformed stream chunk"),
        ("hang", 0, "no token within 1 s"),
        ("unreachable", 0, "cannot reach"),
    ],
)
async def test_llm_faults_fail_the_response_and_the_session_carries_on(
    start_server: StartServer, fake: FakeLlm, mode: str, status: int, message: str
) -> None:
    base = "http://127.0.0.1:9/v1" if mode == "unreachable" else fake.url
    server = await start_server(
        openai_base_url=base, openai_api_key=KEY, llm_first_token_timeout_s=1.0
    )
    fake.mode, fake.status = mode, status
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        s = await create_session(client, responder="llm", turn_detection=None)
        events = Events()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run, client, s)
            await events.wait_for("session.created")
            await post_events(client, s, say("Hello?"), CREATE)
            failed = await nth_done(events, 1)
            error = await events.wait_for("error")
            # the session still works: switch to echo (or repair the server) and go on
            fake.mode = "ok"
            if mode == "unreachable":
                await post_events(
                    client, s, {"type": "session.update", "session": {"responder": "echo"}}
                )
            await post_events(client, s, say("Again."), CREATE)
            again = await nth_done(events, 2)
            nursery.cancel_scope.cancel()
    assert failed["response"]["status"] == "failed"
    assert error["error"]["code"] == "model_error"
    assert message in error["error"]["message"]
    assert again["response"]["status"] == "completed"
    everything = json.dumps([e for _, e in events.got])
    assert KEY not in everything


async def test_a_spoken_turn_goes_to_the_llm(client: httpx.AsyncClient, fake: FakeLlm) -> None:
    sentence = "What is the weather like tomorrow?"
    speech = synthesize((sentence,), gap_s=0.3, lead_s=0.3).samples
    fake.reply = "Sunny."
    s = await create_session(client, responder="llm", turn_detection=None)
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        await push_to_talk(client, s, speech)
        done = await nth_done(events, 1)
        nursery.cancel_scope.cancel()
    assert done["response"]["status"] == "completed"
    user = fake.requests[0]["messages"][-1]
    assert user["role"] == "user"
    assert wer(sentence, user["content"]) <= 0.2


async def test_a_second_response_create_is_refused_whole_while_one_is_active(
    client: httpx.AsyncClient, fake: FakeLlm, llm_server: Running
) -> None:
    """One response at a time, as in OpenAI Realtime: a 409 naming the client event in the
    error event, and nothing in the refused list applied (the next reply sees only what
    came after it)."""
    s = await create_session(client, responder="llm", turn_detection=None)
    twice = [{**CREATE, "event_id": "evt_a"}, {**CREATE, "event_id": "evt_b"}]
    r = await client.post(
        f"/api/sessions/{s.id}/events", headers=s.auth, json=[say("Refused?"), *twice]
    )
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "conversation_already_has_active_response"
    assert r.json()["error"]["event_id"] == "evt_b"  # the one too many
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, say("Accepted."), CREATE)
        done = await nth_done(events, 1)
        nursery.cancel_scope.cancel()
    assert done["response"]["status"] == "completed"
    (body,) = fake.requests
    assert [m["content"] for m in body["messages"] if m["role"] == "user"] == ["Accepted."]
