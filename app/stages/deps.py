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

    def add_item(self, item: Item, previous_item_id: str | None = None) -> None:
        """Add a whole item to the conversation (after ``previous_item_id``, or at the
        end); emits ``conversation.item.added`` and ``conversation.item.done``.

        Raises:
            KeyError: ``previous_item_id`` is not in the conversation.
        """
        previous = self.conversation.add(item, previous_item_id)
        self.events.emit("conversation.item.added", item=item.describe(), previous_item_id=previous)
        self.events.emit("conversation.item.done", item=item.describe(), previous_item_id=previous)

    def error(
        self,
        code: str,
        message: str,
        *,
        error_type: str = "server_error",
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Emit an ``error`` event (naming the client event that caused it, if one did);
        return its error object."""
        status = 400 if error_type == "invalid_request_error" else 500
        error = ApiError(status, code, message, error_type=error_type, event_id=event_id)
        obj = error.error_object()
        self.events.emit("error", error=obj)
        return obj

    def model_error(
        self, model: str, exc: ModelError, *, event_id: str | None = None
    ) -> dict[str, Any]:
        log.warning("model error (%s): %s", model, exc)
        return self.error("model_error", f"{model} failed: {exc.message}", event_id=event_id)
