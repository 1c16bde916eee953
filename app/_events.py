"""Server events: numbered, kept in a bounded replay buffer, fanned out to SSE readers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import trio


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One server event; ``seq`` is its SSE ``id:`` (monotonic per session, from 1)."""

    seq: int
    payload: dict[str, Any]


class EventLog:
    """Append-only event log with a bounded replay window.

    Readers never hold a queue of their own: they remember the last ``seq`` they sent and
    read forward from the shared buffer, so a slow reader costs no memory. A reader that
    falls further behind than the window learns it from :meth:`since` (``None``).
    """

    def __init__(self, replay_size: int) -> None:
        self._buffer: deque[ServerEvent] = deque(maxlen=replay_size)
        self._last_seq = 0
        self._changed = trio.Event()
        self.closed = False  # the session ended: nothing more will be emitted
        self.readers_ended = False  # readers finish what is buffered, then stop (draining)

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def emit(self, event_type: str, **fields: Any) -> ServerEvent | None:
        """Append an event (OpenAI Realtime shape: ``type`` and ``event_id`` first).

        After :meth:`close` the event is dropped (``None``): a session's tasks may still be
        unwinding when it ends, and nobody can read its events any more.
        """
        if self.closed:
            return None
        self._last_seq += 1
        payload = {"type": event_type, "event_id": f"event_{self._last_seq}", **fields}
        event = ServerEvent(self._last_seq, payload)
        self._buffer.append(event)
        self._changed.set()
        self._changed = trio.Event()
        return event

    @property
    def oldest_seq(self) -> int:
        """The oldest event still held (``last_seq + 1`` when none are)."""
        return self._buffer[0].seq if self._buffer else self._last_seq + 1

    def since(self, seq: int) -> list[ServerEvent] | None:
        """Events after ``seq``; ``None`` if some of them already left the window."""
        if seq >= self._last_seq:
            return []
        if seq + 1 < self.oldest_seq:
            return None
        return [e for e in self._buffer if e.seq > seq]

    async def wait_after(self, seq: int) -> None:
        """Block until an event after ``seq`` exists or the log closes.

        Cancellation: safe to cancel at any time; nothing is consumed.
        """
        while self._last_seq <= seq and not self.finished:
            await self._changed.wait()

    @property
    def finished(self) -> bool:
        """Readers should end once they have sent what is buffered."""
        return self.closed or self.readers_ended

    def end_readers(self) -> None:
        """Graceful shutdown: readers finish; the session (and emitting) goes on."""
        self.readers_ended = True
        self._changed.set()

    def close(self) -> None:
        """The session ended: wake all readers so they finish; later events are dropped."""
        self.closed = True
        self._changed.set()
