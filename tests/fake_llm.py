"""A real OpenAI-compatible streaming server for tests (quart-trio under hypercorn).

It streams ``reply`` word by word with ``token_delay_s`` between tokens (after
``first_token_delay_s``), records every request body, and misbehaves on demand
(``mode``): ``status`` (answers ``status`` with an error body), ``malformed`` (a broken
chunk mid-stream), ``malformed_call`` (a tool-call piece without an index), ``hang``
(headers, then nothing).

``script`` scripts whole turns: each streamed request takes the next :class:`Turn` (its
text word by word, then its tool calls, each a first piece with the id and name and then
its arguments in ``argument_piece_chars`` pieces); once the script is used up, requests get
``reply`` again. When the request asks for ``stream_options.include_usage``, a usage chunk
(``choices: []``) comes last, before ``[DONE]``, as OpenAI sends it.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@dataclass
class Call:
    """A scripted tool call. ``arguments`` streams exactly as given (it may be broken
    JSON); ``call_id`` None means the server makes one up (``call_...``)."""

    name: str
    arguments: str
    call_id: str | None = None


@dataclass
class Turn:
    """A scripted response: ``text`` first, then ``calls`` (index 0, 1, ... in order).

    ``interleave`` sends the calls' pieces round-robin (all the first pieces, then the
    first argument piece of each, ...) instead of one call after the other.
    """

    text: str = ""
    calls: list[Call] = field(default_factory=list)
    interleave: bool = False


@dataclass
class FakeLlm:
    reply: str = "Hello there. This is the second sentence of a longer answer."
    token_delay_s: float = 0.05
    first_token_delay_s: float = 0.0
    mode: str = "ok"
    status: int = 500
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # text and tool-call pieces
    url: str = ""
    script: list[Turn] = field(default_factory=list)  # consumed, one per streamed request
    argument_piece_chars: int = 8
    # set once the first argument piece of any call has been sent (barge in mid-call)
    call_started: trio.Event = field(default_factory=trio.Event)
    # extra chunk payloads streamed verbatim (JSON-encoded) right after the role chunk
    raw_chunks: list[Any] = field(default_factory=list)

    def app(self) -> QuartTrio:
        app = QuartTrio("fake-llm")

        @app.post("/v1/chat/completions")
        async def completions() -> Response:
            body = await request.get_json()
            self.requests.append(body)
            self.auth.append(request.headers.get("Authorization", ""))
            if self.mode == "status":
                error = {"error": {"message": "model overloaded", "type": "server_error"}}
                return Response(
                    json.dumps(error), status=self.status, content_type="application/json"
                )
            turn = self.script.pop(0) if self.script else Turn(text=self.reply)
            response = Response(self._stream(body, turn), content_type="text/event-stream")
            response.timeout = None
            return response

        return app

    async def _stream(self, body: dict[str, Any], turn: Turn) -> AsyncIterator[bytes]:
        def data(payload: Any) -> bytes:
            return f"data: {json.dumps(payload)}\n\n".encode()

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return data({"object": "chat.completion.chunk", "choices": [choice]})

        yield chunk({"role": "assistant"})
        for raw in self.raw_chunks:
            yield data(raw)
        if self.mode == "hang":
            await trio.sleep_forever()
        if self.mode == "malformed_call":
            yield chunk({"tool_calls": [{"id": "call_x", "function": {"name": "f"}}]})
            return
        await trio.sleep(self.first_token_delay_s)
        pieces = 0
        words = turn.text.split(" ") if turn.text else []
        for i, word in enumerate(words):
            if self.mode == "malformed" and i == 2:
                yield b"data: {not json\n\n"
                return
            self.token_times.append(trio.current_time())
            yield chunk({"content": word if i == 0 else " " + word})
            pieces += 1
            await trio.sleep(self.token_delay_s)
        for delta, first_argument in self._call_pieces(turn):
            self.token_times.append(trio.current_time())
            yield chunk({"tool_calls": [delta]})
            pieces += 1
            if first_argument:
                self.call_started.set()
            await trio.sleep(self.token_delay_s)
        yield chunk({}, "tool_calls" if turn.calls else "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = _words(body.get("messages") or [])
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": pieces,
                "total_tokens": prompt + pieces,
            }
            yield data({"object": "chat.completion.chunk", "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    def _call_pieces(self, turn: Turn) -> list[tuple[dict[str, Any], bool]]:
        """Each call's pieces as chat completions streams them, with a flag on the first
        argument piece of each call (or its first piece, when it has no arguments)."""
        per_call = []
        for index, call in enumerate(turn.calls):
            call_id = call.call_id or f"call_{len(self.requests)}_{index}"
            first = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            n = self.argument_piece_chars
            rest = [
                {"index": index, "function": {"arguments": call.arguments[i : i + n]}}
                for i in range(0, len(call.arguments), n)
            ]
            per_call.append([(first, not rest)] + [(p, i == 0) for i, p in enumerate(rest)])
        if turn.interleave:
            rounds = itertools.zip_longest(*per_call)
            return [piece for r in rounds for piece in r if piece is not None]
        return [piece for pieces in per_call for piece in pieces]


def _words(messages: list[dict[str, Any]]) -> int:
    """A plausible prompt token count: the words of every text in the messages."""
    count = 0
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        for part in parts:
            text = part.get("text") if isinstance(part, dict) else None
            count += len(text.split()) if isinstance(text, str) else 0
    return count


async def start_fake_llm(nursery: trio.Nursery, fake: FakeLlm) -> FakeLlm:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    binds = await nursery.start(partial(serve, fake.app(), config))
    fake.url = binds[0] + "/v1"
    return fake
