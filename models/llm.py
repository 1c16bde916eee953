"""The ``llm`` responder: any OpenAI-compatible ``/chat/completions`` server, streamed.

Works with OpenAI, Ollama, vLLM and llama.cpp's server. Text deltas, tool-call pieces and
the token usage go to the :class:`~models.responders.ResponseSink` as they arrive, so the
session can speak the first sentence while the rest is being generated. Every failure
(unreachable, slow, an error status, a malformed stream) is a :class:`ModelError` with a
message fit for the client: the API key never appears in it.
"""

from __future__ import annotations

import json
import math
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import trio
from httpx_sse import EventSource, SSEError, aconnect_sse

from models._errors import ModelError
from models.responders import ToolCallDelta, Usage

if TYPE_CHECKING:
    from models.responders import ResponseRequest, ResponseSink

MAX_ERROR_BODY = 500  # characters of an error answer quoted in the error event
MAX_QUOTED_CHUNK = 100  # characters of a malformed chunk quoted in the error


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
        payload: dict[str, Any] = {
            "model": self._settings.model,
            "messages": request.messages,
            "stream": True,
            # servers that support it end the stream with a usage chunk; others ignore it
            "stream_options": {"include_usage": True},
            "temperature": request.temperature,
            "max_tokens": request.max_output_tokens,
        }
        # Some servers refuse a tool_choice without tools, or an empty tools list.
        if request.tools:
            payload["tools"] = request.tools
            if request.tool_choice is not None:
                payload["tool_choice"] = request.tool_choice
        return payload

    async def respond(self, request: ResponseRequest, out: ResponseSink) -> None:
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
                        await _read(source, out, first_token)
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


async def _read(source: EventSource, out: ResponseSink, first_token: trio.CancelScope) -> None:
    """Hand each chunk's pieces to ``out`` until ``[DONE]`` (or the end of the stream)."""
    async with aclosing(source.aiter_sse()) as events:
        async for sse in events:
            if sse.data.strip() == "[DONE]":
                return
            chunk = _parse(sse.data)
            if chunk.text or chunk.tool_calls:
                first_token.deadline = math.inf  # it came: only the total deadline is left
            if chunk.text:
                await out.text(chunk.text)
            for call in chunk.tool_calls:
                await out.tool_call(call)
            if chunk.usage is not None:
                out.usage(chunk.usage)


@dataclass(slots=True)
class _Chunk:
    """What one streamed chunk carries; most carry one text delta and nothing else."""

    text: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    usage: Usage | None = None


class _Malformed(Exception):
    """A chunk is valid JSON but not the shape chat completions streams."""


def _parse(data: str) -> _Chunk:
    """Read one chunk, or raise :class:`ModelError` if it is not a chat-completions chunk.

    Tool-call arguments are passed on as given: they are JSON only once all the pieces
    of a call are joined, which is for the caller to check.
    """
    try:
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise _Malformed
        choices = chunk.get("choices") or []
        if "error" in chunk and not choices:
            raise ModelError("llm", f"the stream reported an error: {chunk['error']}")
        result = _Chunk(usage=_usage(chunk.get("usage")))
        if choices:
            delta = choices[0].get("delta") or {}
            result.text = _optional_str(delta.get("content")) or ""
            result.tool_calls = _tool_calls(delta.get("tool_calls"))
    except (ValueError, AttributeError, TypeError, IndexError, KeyError, _Malformed) as exc:
        raise ModelError("llm", f"malformed stream chunk: {data[:MAX_QUOTED_CHUNK]!r}") from exc
    return result


def _tool_calls(raw: Any) -> list[ToolCallDelta]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _Malformed
    calls = []
    for entry in raw:
        index = entry.get("index")
        # bool is an int to isinstance, but never a call index
        if not isinstance(index, int) or isinstance(index, bool):
            raise _Malformed
        function = entry.get("function") or {}
        calls.append(
            ToolCallDelta(
                index=index,
                call_id=_optional_str(entry.get("id")),
                name=_optional_str(function.get("name")),
                arguments=_optional_str(function.get("arguments")) or "",
            )
        )
    return calls


def _usage(raw: Any) -> Usage | None:
    # OpenAI sends "usage": null on every chunk but the last when include_usage is set
    if raw is None:
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    for count in (prompt, completion):
        if not isinstance(count, int) or isinstance(count, bool):
            raise _Malformed
    return Usage(input_tokens=prompt, output_tokens=completion)


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Malformed
    return value


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
