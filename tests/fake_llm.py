"""A real OpenAI-compatible streaming server for tests (quart-trio under hypercorn).

It streams ``reply`` word by word with ``token_delay_s`` between tokens (after
``first_token_delay_s``), records every request body, and misbehaves on demand
(``mode``): ``status`` (answers ``status`` with an error body), ``malformed`` (a broken
chunk mid-stream), ``hang`` (headers, then nothing).
"""

from __future__ import annotations

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
class FakeLlm:
    reply: str = "Hello there. This is the second sentence of a longer answer."
    token_delay_s: float = 0.05
    first_token_delay_s: float = 0.0
    mode: str = "ok"
    status: int = 500
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    url: str = ""

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
            response = Response(self._stream(), content_type="text/event-stream")
            response.timeout = None
            return response

        return app

    async def _stream(self) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any]) -> bytes:
            data = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
            return f"data: {json.dumps(data)}\n\n".encode()

        yield chunk({"role": "assistant"})
        if self.mode == "hang":
            await trio.sleep_forever()
        await trio.sleep(self.first_token_delay_s)
        words = self.reply.split(" ")
        for i, word in enumerate(words):
            if self.mode == "malformed" and i == 2:
                yield b"data: {not json\n\n"
                return
            self.token_times.append(trio.current_time())
            yield chunk({"content": word if i == 0 else " " + word})
            await trio.sleep(self.token_delay_s)
        yield b"data: [DONE]\n\n"


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
