"""Function calling with the ``llm`` responder, end to end: the real server, the tests'
OpenAI-compatible server streaming ``tool_calls``, the real voice.

Every event is validated against the ``openai`` SDK's GA models as it arrives
(tests/voice.py), so these are conformance tests of the tool-call events too.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from tests import corpus
from tests.conftest import create_session
from tests.fake_llm import Call, FakeLlm, Turn, start_fake_llm
from tests.voice import Events, Stream, post_events, push_to_talk, say, wer

if TYPE_CHECKING:
    from tests.conftest import Running, SessionHandle, StartServer

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather forecast for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME = {"type": "function", "name": "get_time", "description": "The time now"}
CREATE = {"type": "response.create"}


def output(call_id: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": json.dumps(result)},
    }


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeLlm:
    return await start_fake_llm(nursery, FakeLlm(token_delay_s=0.01))


@pytest.fixture
async def llm_server(start_server: StartServer, fake: FakeLlm) -> Running:
    return await start_server(
        openai_base_url=fake.url, openai_model="test-model", llm_first_token_timeout_s=2.0
    )


@pytest.fixture
async def client(llm_server: Running) -> Any:
    async with httpx.AsyncClient(base_url=llm_server.url, timeout=30) as c:
        yield c


async def session(client: httpx.AsyncClient, **config: Any) -> SessionHandle:
    base = {"responder": "llm", "turn_detection": None, "tools": [WEATHER, TIME]}
    return await create_session(client, **(base | config))


async def test_one_call_then_its_output_and_the_answer(
    client: httpx.AsyncClient, fake: FakeLlm
) -> None:
    fake.script = [
        Turn(calls=[Call("get_weather", '{"city": "Lisbon"}', "call_w1")]),
        Turn(text="It will be sunny in Lisbon."),
    ]
    s = await session(client, tool_choice="auto")
    events, stream = Events(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, say("What is the weather in Lisbon?"), CREATE)
        first = await events.nth("response.done", 1)
        await post_events(client, s, output("call_w1", {"forecast": "sunny"}), CREATE)
        second = await events.nth("response.done", 2)
        nursery.cancel_scope.cancel()
    # the request carried the tools in chat form
    body = fake.requests[0]
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": WEATHER["description"],
            "parameters": WEATHER["parameters"],
        },
    }
    assert body["tool_choice"] == "auto"
    # the call as GA events: item added, argument deltas, done with the whole arguments
    (call,) = first["response"]["output"]
    assert call["type"] == "function_call"
    assert (call["name"], call["call_id"], call["status"]) == (
        "get_weather",
        "call_w1",
        "completed",
    )
    deltas = events.of("response.function_call_arguments.delta")
    assert len(deltas) > 1
    assert "".join(d["delta"] for d in deltas) == '{"city": "Lisbon"}'
    (args_done,) = events.of("response.function_call_arguments.done")
    assert (args_done["name"], args_done["arguments"]) == ("get_weather", '{"city": "Lisbon"}')
    assert first["response"]["status"] == "completed"
    assert first["response"]["usage"]["total_tokens"] > 0
    # a call with no text says nothing
    assert first["response"]["audio_queued_ms"] == 0
    # the next request carries the assistant's tool call and the tool's answer
    messages = fake.requests[1]["messages"]
    assert messages[-2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_w1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'},
            }
        ],
    }
    assert messages[-1] == {
        "role": "tool",
        "tool_call_id": "call_w1",
        "content": '{"forecast": "sunny"}',
    }
    assert second["response"]["status"] == "completed"
    assert second["response"]["audio_queued_ms"] > 500  # the answer was spoken


async def test_two_calls_and_text_before_a_call(client: httpx.AsyncClient, fake: FakeLlm) -> None:
    """Text before the calls is spoken; both calls come out, in order, with their
    arguments; the conversation keeps the text message carrying both calls."""
    fake.script = [
        Turn(
            text="Let me check both for you.",
            calls=[Call("get_weather", '{"city": "Oslo"}'), Call("get_time", "{}")],
            interleave=True,
        ),
        Turn(text="Done."),
    ]
    s = await session(client, tool_choice="required")
    events, stream = Events(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, say("Weather in Oslo, and the time?"), CREATE)
        done = await events.nth("response.done", 1)
        calls = [i for i in done["response"]["output"] if i["type"] == "function_call"]
        await post_events(
            client,
            s,
            output(calls[0]["call_id"], {"forecast": "snow"}),
            output(calls[1]["call_id"], {"time": "noon"}),
            CREATE,
        )
        await events.nth("response.done", 2)
        nursery.cancel_scope.cancel()
    assert fake.requests[0]["tool_choice"] == "required"
    message, *rest = done["response"]["output"]
    assert message["type"] == "message"
    assert message["content"][0]["transcript"] == "Let me check both for you."
    assert [(c["name"], c["arguments"]) for c in rest] == [
        ("get_weather", '{"city": "Oslo"}'),
        ("get_time", "{}"),
    ]
    assert done["response"]["audio_queued_ms"] > 500  # the text was spoken
    indexes = {d["output_index"] for d in events.of("response.function_call_arguments.delta")}
    assert indexes == {1, 2}
    history = fake.requests[1]["messages"]
    assert history[-3]["role"] == "assistant"
    assert history[-3]["content"] == "Let me check both for you."
    assert [c["function"]["name"] for c in history[-3]["tool_calls"]] == ["get_weather", "get_time"]
    assert [m["role"] for m in history[-2:]] == ["tool", "tool"]


async def test_a_call_cut_by_a_cancel_is_never_sent(
    client: httpx.AsyncClient, fake: FakeLlm
) -> None:
    fake.argument_piece_chars = 2
    fake.token_delay_s = 0.1
    fake.script = [Turn(calls=[Call("get_weather", '{"city": "Reykjavik, Iceland"}')])]
    s = await session(client)
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, say("Weather in Reykjavik?"), CREATE)
        await fake.call_started.wait()
        await events.wait_for("response.function_call_arguments.delta")
        await post_events(client, s, {"type": "response.cancel"})
        done = await events.nth("response.done", 1)
        fake.reply = "Fine."
        await post_events(client, s, say("Never mind."), CREATE)
        await events.nth("response.done", 2)
        nursery.cancel_scope.cancel()
    assert done["response"]["status"] == "cancelled"
    (call,) = done["response"]["output"]
    assert call["status"] == "incomplete"
    assert not events.of("response.function_call_arguments.done")
    # the cut call never reaches the model
    assert all("tool_calls" not in m for m in fake.requests[1]["messages"])


async def test_malformed_arguments_are_an_error_and_the_session_goes_on(
    client: httpx.AsyncClient, fake: FakeLlm
) -> None:
    fake.script = [Turn(calls=[Call("get_weather", '{"city": "Par')]), Turn(text="Sorry.")]
    s = await session(client)
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, say("Weather in Paris?"), {**CREATE, "event_id": "evt_p"})
        failed = await events.nth("response.done", 1)
        error = await events.wait_for("error")
        await post_events(client, s, say("Try again?"), CREATE)
        again = await events.nth("response.done", 2)
        nursery.cancel_scope.cancel()
    assert failed["response"]["status"] == "failed"
    assert error["error"]["code"] == "invalid_function_call_arguments"
    assert error["error"]["event_id"] == "evt_p"  # the response.create that asked
    assert "get_weather" in error["error"]["message"]
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert again["response"]["status"] == "completed"
    assert all("tool_calls" not in m for m in fake.requests[1]["messages"])


async def test_per_response_tools_and_a_named_tool_choice(
    client: httpx.AsyncClient, fake: FakeLlm
) -> None:
    fake.script = [Turn(calls=[Call("get_time", "{}")])]
    s = await session(client, tools=[])
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        create = {
            "type": "response.create",
            "response": {
                "tools": [TIME],
                "tool_choice": {"type": "function", "name": "get_time"},
                "max_output_tokens": 50,
            },
        }
        await post_events(client, s, say("What time is it?"), create)
        await events.nth("response.done", 1)
        bad = {
            "type": "response.create",
            "event_id": "evt_bad",
            "response": {"tool_choice": {"type": "function", "name": "launch"}},
        }
        r = await client.post(f"/api/sessions/{s.id}/events", headers=s.auth, json=bad)
        error = await events.wait_for("error")
        nursery.cancel_scope.cancel()
    body = fake.requests[0]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert [t["function"]["name"] for t in body["tools"]] == ["get_time"]
    assert body["max_tokens"] == 50
    assert r.status_code == 422, r.text
    assert error["error"]["event_id"] == "evt_bad"
    # no tools in the session: none sent by default
    assert len(fake.requests) == 1


async def test_a_spoken_turn_triggers_a_call(client: httpx.AsyncClient, fake: FakeLlm) -> None:
    sentence = "What is the weather going to be like this weekend?"
    voice = corpus.available_voices()[-1]  # an espeak-ng voice where there is one
    speech = corpus.utterance(sentence, voice).padded(0.3, 0.3).samples
    fake.script = [Turn(calls=[Call("get_weather", '{"city": "Lisbon"}')])]
    s = await session(client)
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        await push_to_talk(client, s, speech)
        done = await events.wait_for("response.done", within=60)
        nursery.cancel_scope.cancel()
    (call,) = done["response"]["output"]
    assert (call["name"], call["arguments"]) == ("get_weather", '{"city": "Lisbon"}')
    user = fake.requests[0]["messages"][-1]
    assert user["role"] == "user"
    assert wer(sentence, user["content"]) <= 0.25, user["content"]


async def test_a_call_after_barge_in_is_cancelled_not_sent(
    client: httpx.AsyncClient, fake: FakeLlm
) -> None:
    """Speech that barges in while the model streams a call cancels it."""
    fake.argument_piece_chars = 2
    fake.token_delay_s = 0.15
    fake.script = [
        Turn(text="Let me look that up.", calls=[Call("get_weather", '{"city": "Rome, Italy"}')])
    ]
    speech = corpus.utterance("Actually, stop, never mind.", "piper").padded(0.2, 0.8).samples
    s = await session(client, turn_detection={"type": "server_vad"})
    events, stream = Events(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, say("Weather in Rome?"), CREATE)
        await fake.call_started.wait()
        r = await client.post(
            f"/api/sessions/{s.id}/upload_audio",
            headers=s.auth,
            content=speech.astype("<i2").tobytes(),
        )
        assert r.status_code == 204
        done = await events.nth("response.done", 1)
        nursery.cancel_scope.cancel()
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert not events.of("response.function_call_arguments.done")
    calls = [i for i in done["response"]["output"] if i["type"] == "function_call"]
    assert all(c["status"] == "incomplete" for c in calls)


async def test_ga_session_fields_reach_the_model(client: httpx.AsyncClient, fake: FakeLlm) -> None:
    """instructions, max_output_tokens, tools and tool_choice set in GA shape are what the
    chat-completions request carries."""
    s = await session(client, tools=[])
    update = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": "Answer in one word.",
            "max_output_tokens": 64,
            "tools": [TIME],
            "tool_choice": "none",
        },
    }
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, update, say("Hi."), CREATE)
        await events.nth("response.done", 1)
        nursery.cancel_scope.cancel()
    (body,) = fake.requests
    assert body["messages"][0] == {"role": "system", "content": "Answer in one word."}
    assert body["max_tokens"] == 64
    assert [t["function"]["name"] for t in body["tools"]] == ["get_time"]
    assert body["tool_choice"] == "none"
