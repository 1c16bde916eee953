"""What every stage is given: one typed object instead of long constructor lists."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app._errors import ApiError

if TYPE_CHECKING:
    from collections.abc import Callable

    from app._config import ServerConfig, SessionConfig
    from app._conversation import Conversation, Item
    from app._events import EventLog
    from app._metrics import Metrics
    from app._models import ModelHub
    from app._playout import Playout
    from models import ModelError, Responder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Deps:
    """The session's collaborators, shared read-only by its stages."""

    events: EventLog
    playout: Playout
    hub: ModelHub
    server: ServerConfig
    metrics: Metrics
    config: Callable[[], SessionConfig]
    conversation: Conversation
    responders: Callable[[str], Responder]
    take_frame: Callable[[], str | None]
    on_turn: Callable[[], None]

    def add_item(self, item: Item) -> None:
        """Add to the conversation; emits ``conversation.item.created``."""
        self.conversation.add(item)
        self.events.emit("conversation.item.created", item=item.describe())

    def error(self, code: str, message: str, *, error_type: str = "server_error") -> dict[str, Any]:
        """Emit an ``error`` event; return its error object."""
        status = 400 if error_type == "invalid_request_error" else 500
        error = ApiError(status, code, message, error_type=error_type).error_object()
        self.events.emit("error", error=error)
        return error

    def model_error(self, model: str, exc: ModelError) -> dict[str, Any]:
        log.warning("model error (%s): %s", model, exc)
        return self.error("model_error", f"{model} failed: {exc.message}")
