"""The session registry: creation, constant-time authorisation, idle reaping, draining."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

import trio

from app._errors import ApiError, not_found
from app._session import Session

if TYPE_CHECKING:
    from collections.abc import Iterable

    from app._config import ServerConfig, SessionConfig
    from app._metrics import Metrics
    from app._models import ModelHub
    from app._responders import Responders

log = logging.getLogger(__name__)

_DUMMY_TOKEN = secrets.token_urlsafe(32)


def new_session_id() -> str:
    """``sess_`` + 144 random bits."""
    return "sess_" + secrets.token_urlsafe(18)


class SessionRegistry:
    """Owns every session's task tree (its own nursery) and the idle reaper."""

    def __init__(
        self, config: ServerConfig, metrics: Metrics, hub: ModelHub, responders: Responders
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._hub = hub
        self._responders = responders
        self._sessions: dict[str, Session] = {}
        self._nursery: trio.Nursery | None = None
        self.draining = False

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> Iterable[Session]:
        return list(self._sessions.values())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host sessions and reap idle ones until cancelled (app shutdown).

        Cancellation: ends every session.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._reaper)
            task_status.started()

    async def create(self, config: SessionConfig, session_id: str | None = None) -> Session:
        """Start a new session in the registry's nursery.

        Args:
            config: The validated session config.
            session_id: An id chosen by a trusted proxy (already validated); otherwise a
                random one.

        Raises:
            ApiError: 503 with ``Retry-After`` when at the cap, draining, or the models are
                not loaded (after waiting up to ``model_load_wait_s`` for them); 409 when
                the proxy's id is already in use.
        """
        if config.responder != "loopback":  # loopback is transport only: no models
            try:
                await self._hub.wait_ready(self._config.model_load_wait_s)
            except ApiError:
                self._metrics.sessions_rejected.inc()
                raise
        if self._nursery is None or self.draining:
            self._metrics.sessions_rejected.inc()
            raise ApiError(
                503,
                "server_unavailable",
                "the server is not accepting new sessions",
                error_type="server_error",
                headers={"Retry-After": "5"},
            )
        if len(self._sessions) >= self._config.max_sessions:
            self._metrics.sessions_rejected.inc()
            raise ApiError(
                503,
                "too_many_sessions",
                f"the server holds its maximum of {self._config.max_sessions} sessions",
                error_type="server_error",
                headers={"Retry-After": str(max(1, int(self._config.reap_interval_s)))},
            )
        if session_id is not None and session_id in self._sessions:
            raise ApiError(409, "session_id_in_use", "the proxy's session id is already in use")
        session = Session(
            session_id or new_session_id(),
            secrets.token_urlsafe(32),
            config,
            self._config,
            self._metrics,
            self._hub,
            self._responders,
        )
        self._sessions[session.id] = session
        self._metrics.sessions.inc()
        self._metrics.sessions_created.inc()
        await self._nursery.start(self._supervise, session)
        return session

    async def _supervise(
        self, session: Session, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await session.run(task_status=task_status)
        except Exception:
            # The isolation boundary the design promises: a bug in one session ends that
            # session (logged, counted, its client told), never the registry's nursery,
            # which would take every other session and all later creations with it.
            log.exception("session %s failed", session.id)
            self._metrics.sessions_failed.inc()
        finally:
            if self._sessions.pop(session.id, None) is not None:
                self._metrics.sessions.dec()

    def authorise(self, session_id: str, token: str | None) -> Session:
        """The session if ``token`` is its token; otherwise the one shared 404.

        The comparison is constant-time and happens even for unknown ids, so neither the
        status nor the timing tells whether an id exists.
        """
        session = self._sessions.get(session_id)
        expected = session.token if session is not None else _DUMMY_TOKEN
        ok = secrets.compare_digest(expected.encode(), (token or "").encode())
        if session is None or not ok or session.state == "closed":
            raise not_found()
        return session

    def delete(self, session: Session) -> None:
        """End ``session`` and forget it."""
        if self._sessions.pop(session.id, None) is not None:
            self._metrics.sessions.dec()
        session.close()

    def drain(self) -> None:
        """Graceful shutdown: refuse new sessions, end every open stream cleanly."""
        self.draining = True
        for session in self.sessions():
            session.end_streams()

    async def _reaper(self) -> None:
        ttl = self._config.session_idle_ttl_s
        while True:
            await trio.sleep(self._config.reap_interval_s)
            now = trio.current_time()
            for session in self.sessions():
                if session.open_requests == 0 and now - session.last_activity > ttl:
                    log.info("reaping idle session %s", session.id)
                    self._metrics.sessions_reaped.inc()
                    self.delete(session)
