"""The ``llm`` responder: any OpenAI-compatible ``/chat/completions`` server, streamed.

Works with OpenAI, Ollama, vLLM and llama.cpp's server. Text deltas are yielded as they
arrive, so the session can speak the first sentence while the rest is being generated.
Every failure (unreachable, slow, an error status, a malformed stream) is a
:class:`ModelError` with a message fit for the client: the API key never appears in it.
"""

from __future__ import annotations

import json
import math
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import trio
from httpx_sse import EventSource, SSEError, aconnect_sse

from models._errors import ModelError

if TYPE_CHECKING:
    from models.responders import Emit, ResponseRequest

MAX_ERROR_BODY = 500  # characters of an error answer quoted in the error event


@dataclass(frozen=True, slots=True)
class LlmSettings:
    base_url: str
    model: str
    api_key: str = ""
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 20.0
    total_timeout_s: float = 120.0

    def __repr__(self) -> str:  # never print the key
        return f"LlmSettings(base_url={self.base_url!r}, model={self.model!r})"


class LlmResponder:
    """Streams a chat completion for the conversation in the request."""

    def __init__(self, client: httpx.AsyncClient, settings: LlmSettings) -> None:
        self._client = client
        self._settings = settings

    def _payload(self, request: ResponseRequest) -> dict[str, Any]:
        return {
            "model": self._settings.model,
            "messages": request.messages,
            "stream": True,
            "temperature": request.temperature,
            "max_tokens": request.max_output_tokens,
        }

    async def respond(self, request: ResponseRequest, emit: Emit) -> None:
        s = self._settings
        url = s.base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
        timeout = httpx.Timeout(s.first_token_timeout_s, connect=s.connect_timeout_s)
        # Deadlines belong to the caller's side of the call: the whole answer, and the
        # first token (a server that accepts and then says nothing).
        with trio.move_on_after(s.total_timeout_s) as total:
            try:
                async with aconnect_sse(
                    self._client,
                    "POST",
                    url,
                    json=self._payload(request),
                    headers=headers,
                    timeout=timeout,
                ) as source:
                    await _check_status(source.response)
                    with trio.move_on_after(s.first_token_timeout_s) as first_token:
                        await _read(source, emit, first_token)
                    if first_token.cancelled_caught:
                        raise ModelError("llm", f"no token within {s.first_token_timeout_s:g} s")
            except httpx.TimeoutException as exc:
                message = f"timed out talking to {url}: {type(exc).__name__}"
                raise ModelError("llm", message) from exc
            except httpx.TransportError as exc:
                raise ModelError("llm", f"cannot reach {url}: {type(exc).__name__}") from exc
            except SSEError as exc:
                raise ModelError("llm", f"not an event stream: {exc}") from exc
        if total.cancelled_caught:
            raise ModelError("llm", f"the answer took longer than {s.total_timeout_s:g} s")


async def _read(source: EventSource, emit: Emit, first_token: trio.CancelScope) -> None:
    """Emit each text delta until ``[DONE]`` (or the end of the stream)."""
    async with aclosing(source.aiter_sse()) as events:
        async for sse in events:
            if sse.data.strip() == "[DONE]":
                return
            delta = _delta(sse.data)
            if delta:
                first_token.deadline = math.inf  # it came: only the total deadline is left
                await emit(delta)


async def _check_status(response: httpx.Response) -> None:
    if response.status_code < 400 and "text/event-stream" in response.headers.get(
        "content-type", ""
    ):
        return
    body = (await response.aread()).decode(errors="replace")[:MAX_ERROR_BODY]
    detail = body
    try:
        error = json.loads(body).get("error")
        detail = error.get("message", body) if isinstance(error, dict) else str(error or body)
    except (ValueError, AttributeError):
        pass
    if response.status_code < 400:
        raise ModelError(
            "llm", f"expected text/event-stream, got {response.headers.get('content-type')!r}"
        )
    raise ModelError("llm", f"the LLM server answered {response.status_code}: {detail}")


def _delta(data: str) -> str:
    """The text of one streamed chunk; a chunk without text (role, usage) gives ''."""
    try:
        chunk = json.loads(data)
        choices = chunk.get("choices") or []
        if "error" in chunk and not choices:
            raise ModelError("llm", f"the stream reported an error: {chunk['error']}")
        if not choices:
            return ""
        content = (choices[0].get("delta") or {}).get("content")
    except (ValueError, AttributeError, TypeError, IndexError) as exc:
        raise ModelError("llm", f"malformed stream chunk: {data[:100]!r}") from exc
    if content is not None and not isinstance(content, str):
        raise ModelError("llm", f"malformed stream chunk: {data[:100]!r}")
    return content or ""
