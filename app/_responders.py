"""Picks a session's responder by name; owns the HTTP client the ``llm`` responder shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import trio

from models import EchoResponder, NoResponder, Responder
from models.llm import LlmResponder, LlmSettings

if TYPE_CHECKING:
    from app._config import ServerConfig


class Responders:
    """``responders(name)`` gives the responder; :meth:`run` holds the pooled client."""

    def __init__(self, config: ServerConfig) -> None:
        self.settings = LlmSettings(
            base_url=config.openai_base_url,
            model=config.openai_model,
            api_key=config.openai_api_key,
            connect_timeout_s=config.llm_connect_timeout_s,
            first_token_timeout_s=config.llm_first_token_timeout_s,
            total_timeout_s=config.llm_total_timeout_s,
        )
        self._client: httpx.AsyncClient | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep one connection pool for LLM calls until cancelled (app shutdown)."""
        async with httpx.AsyncClient() as client:
            self._client = client
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._client = None

    def __call__(self, name: str) -> Responder:
        if name == "echo":
            return EchoResponder()
        if name == "llm" and self._client is not None:
            return LlmResponder(self._client, self.settings)
        return NoResponder()
