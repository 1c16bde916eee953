"""LlmResponder on its own against the real fake server: the request it sends, and how the
stream's text, tool-call pieces and usage reach the sink."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio

from models._errors import ModelError
from models.llm import LlmResponder, LlmSettings
from models.responders import ResponseRequest, ToolCallDelta, Usage
from tests.fake_llm import Call, FakeLlm, Turn, start_fake_llm

KEY = "sk-test-secret-0123456789"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
WEATHER_ARGS = '{"city": "Paris", "unit": "celsius"}'


@dataclass
class Recorder:
    """A ResponseSink that keeps everything, in order."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    async def text(self, delta: str) -> None:
        self.events.append(("text", delta))

    async def tool_call(self, delta: ToolCallDelta) -> None:
        self.events.append(("tool_call", delta))

    def usage(self, usage: Usage) -> None:
        self.events.append(("usage", usage))

    @property
    def texts(self) -> list[str]:
        return [e for kind, e in self.events if kind == "text"]

    @property
    def calls(self) -> list[ToolCallDelta]:
        return [e for kind, e in self.events if kind == "tool_call"]

    @property
    def usages(self) -> list[Usage]:
        return [e for kind, e in self.events if kind == "usage"]

    def arguments(self, index: int) -> str:
        return "".join(c.arguments for c in self.calls if c.index == index)


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeLlm:
    return await start_fake_llm(nursery, FakeLlm(token_delay_s=0.005))


async def respond(
    fake: FakeLlm, request: ResponseRequest | None = None, **settings: Any
) -> Recorder:
    out = Recorder()
    request = request or ResponseRequest(transcript="", messages=MESSAGES)
    async with httpx.AsyncClient() as client:
        llm = LlmResponder(
            client, LlmSettings(base_url=fake.url, model="test-model", api_key=KEY, **settings)
        )
        await llm.respond(request, out)
    return out


async def test_tools_tool_choice_and_stream_options_reach_the_request_in_chat_form(
    fake: FakeLlm,
) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    await respond(
        fake,
        ResponseRequest(
            transcript="", messages=MESSAGES, tools=TOOLS, tool_choice=choice, temperature=0.3
        ),
    )
    await respond(fake, ResponseRequest(transcript="", messages=MESSAGES, tools=TOOLS))
    # a tool_choice without tools is not sent: some servers refuse it
    await respond(fake, ResponseRequest(transcript="", messages=MESSAGES, tool_choice="auto"))
    with_choice, without_choice, no_tools = fake.requests
    assert with_choice == {
        "model": "test-model",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.3,
        "max_tokens": 4096,
        "tools": TOOLS,
        "tool_choice": choice,
    }
    assert without_choice["tools"] == TOOLS
    assert "tool_choice" not in without_choice
    assert "tools" not in no_tools
    assert "tool_choice" not in no_tools
    assert no_tools["stream_options"] == {"include_usage": True}
    assert fake.auth == [f"Bearer {KEY}"] * 3


async def test_text_only_reply_streams_as_before(fake: FakeLlm) -> None:
    out = await respond(fake)
    assert len(out.texts) == len(fake.reply.split())
    assert "".join(out.texts) == fake.reply
    assert out.calls == []
    # usage comes last, once
    assert out.events[-1][0] == "usage"
    (usage,) = out.usages
    assert usage.output_tokens == len(fake.reply.split())


async def test_one_call_has_its_id_and_name_first_then_the_arguments(fake: FakeLlm) -> None:
    fake.script = [Turn(calls=[Call("get_weather", WEATHER_ARGS, call_id="call_abc")])]
    out = await respond(fake, ResponseRequest(transcript="", messages=MESSAGES, tools=TOOLS))
    first, *rest = out.calls
    assert (first.index, first.call_id, first.name) == (0, "call_abc", "get_weather")
    assert len(rest) > 1  # the arguments came in pieces
    assert all(c.index == 0 and c.call_id is None and c.name is None for c in rest)
    assert out.arguments(0) == WEATHER_ARGS
    assert out.texts == []
    prompt_words = sum(len(m["content"].split()) for m in MESSAGES)
    assert out.usages == [Usage(input_tokens=prompt_words, output_tokens=len(out.calls))]
    assert out.events[-1][0] == "usage"
    assert len(fake.token_times) == len(out.calls)


async def test_a_call_without_an_id_gets_one_made_up(fake: FakeLlm) -> None:
    fake.script = [Turn(calls=[Call("get_weather", WEATHER_ARGS)])]
    out = await respond(fake)
    assert out.calls[0].call_id is not None
    assert out.calls[0].call_id.startswith("call_")


@pytest.mark.parametrize("interleave", [False, True])
async def test_two_calls_in_one_response_keep_their_indexes(
    fake: FakeLlm, interleave: bool
) -> None:
    time_args = '{"timezone": "Europe/Paris"}'
    fake.script = [
        Turn(
            calls=[Call("get_weather", WEATHER_ARGS), Call("get_time", time_args)],
            interleave=interleave,
        )
    ]
    out = await respond(fake)
    firsts = [c for c in out.calls if c.name is not None]
    assert [(c.index, c.name) for c in firsts] == [(0, "get_weather"), (1, "get_time")]
    assert firsts[0].call_id != firsts[1].call_id
    assert out.arguments(0) == WEATHER_ARGS
    assert out.arguments(1) == time_args
    indexes = [c.index for c in out.calls]
    assert (indexes != sorted(indexes)) is interleave


async def test_text_comes_before_the_call_in_order(fake: FakeLlm) -> None:
    fake.script = [Turn(text="Let me check that for you.", calls=[Call("get_weather", "{}")])]
    out = await respond(fake)
    kinds = [kind for kind, _ in out.events]
    assert kinds == ["text"] * 6 + ["tool_call"] * 2 + ["usage"]
    assert "".join(out.texts) == "Let me check that for you."
    assert out.arguments(0) == "{}"


async def test_the_script_is_used_up_then_reply_again(fake: FakeLlm) -> None:
    fake.script = [Turn(text="Scripted.")]
    first = await respond(fake)
    second = await respond(fake)
    assert "".join(first.texts) == "Scripted."
    assert "".join(second.texts) == fake.reply


async def test_broken_arguments_are_passed_on_as_given(fake: FakeLlm) -> None:
    """Whether the joined arguments are JSON is for the caller, once the call is done."""
    fake.script = [Turn(calls=[Call("get_weather", '{"city": "Par')])]
    out = await respond(fake)
    assert out.arguments(0) == '{"city": "Par'


async def test_a_call_piece_is_a_first_token(fake: FakeLlm) -> None:
    """A reply that is only a call, longer than the first-token timeout, still completes."""
    fake.token_delay_s = 0.1
    fake.script = [Turn(calls=[Call("get_weather", json.dumps({"city": "Paris " * 10}))])]
    out = await respond(fake, first_token_timeout_s=0.5)
    assert fake.token_times[-1] - fake.token_times[0] > 0.5
    assert json.loads(out.arguments(0)) == {"city": "Paris " * 10}


async def test_no_token_at_all_is_a_timeout(fake: FakeLlm) -> None:
    fake.mode = "hang"
    with pytest.raises(ModelError, match=r"no token within 0\.3 s") as failed:
        await respond(fake, first_token_timeout_s=0.3)
    assert KEY not in str(failed.value)


async def test_barge_in_during_a_call_just_stops(fake: FakeLlm) -> None:
    fake.token_delay_s = 0.05
    fake.script = [Turn(calls=[Call("get_weather", WEATHER_ARGS * 4)])]
    out = Recorder()
    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
        llm = LlmResponder(client, LlmSettings(base_url=fake.url, model="m", api_key=KEY))

        async def run() -> None:
            await llm.respond(ResponseRequest(transcript="", messages=MESSAGES), out)

        nursery.start_soon(run)
        with trio.fail_after(5):
            await fake.call_started.wait()
        nursery.cancel_scope.cancel()
    assert 1 <= len(out.calls) < len(WEATHER_ARGS * 4) // fake.argument_piece_chars
    assert out.usages == []


MALFORMED = {
    "tool_calls not a list": {"tool_calls": {"index": 0}},
    "an entry without an index": {"tool_calls": [{"id": "call_1", "function": {"name": "f"}}]},
    "a string index": {"tool_calls": [{"index": "0"}]},
    "a bool index": {"tool_calls": [{"index": True}]},
    "an entry not an object": {"tool_calls": ["call"]},
    "a name not a string": {"tool_calls": [{"index": 0, "function": {"name": 3}}]},
    "arguments not a string": {"tool_calls": [{"index": 0, "function": {"arguments": {}}}]},
    "an id not a string": {"tool_calls": [{"index": 0, "id": 7}]},
    "content not a string": {"content": ["hi"]},
}


@pytest.mark.parametrize("delta", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_deltas_are_model_errors(fake: FakeLlm, delta: dict[str, Any]) -> None:
    fake.raw_chunks = [{"choices": [{"index": 0, "delta": delta}]}]
    with pytest.raises(ModelError, match="malformed stream chunk") as failed:
        await respond(fake)
    assert failed.value.model == "llm"
    assert KEY not in str(failed.value)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "3", "completion_tokens": 4},
        {"prompt_tokens": 3, "completion_tokens": 4.5},
        {"prompt_tokens": 3},
        [3, 4],
    ],
)
async def test_malformed_usage_is_a_model_error(fake: FakeLlm, usage: Any) -> None:
    fake.raw_chunks = [{"choices": [], "usage": usage}]
    with pytest.raises(ModelError, match="malformed stream chunk") as failed:
        await respond(fake)
    assert KEY not in str(failed.value)


async def test_the_malformed_call_mode_is_a_model_error(fake: FakeLlm) -> None:
    fake.mode = "malformed_call"
    with pytest.raises(ModelError, match="malformed stream chunk") as failed:
        await respond(fake)
    assert KEY not in str(failed.value)


async def test_nulls_where_servers_send_them_are_fine(fake: FakeLlm) -> None:
    """OpenAI sends ``usage: null`` on every chunk but the last; others send null fields."""
    fake.raw_chunks = [
        {"choices": [{"index": 0, "delta": {"content": None, "tool_calls": None}}], "usage": None},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": None}]}}]},
    ]
    out = await respond(fake)
    assert out.calls == [ToolCallDelta(index=0)]
    assert "".join(out.texts) == fake.reply
