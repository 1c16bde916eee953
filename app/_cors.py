"""CORS, off by default: only pages on other origins need it (the bundled page does not).

Tokens travel in the ``Authorization`` header, never in cookies, so no credentials mode is
needed and ``*`` is safe to allow where an operator wants any origin.
"""

from __future__ import annotations

from quart import Response, request

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Sequence, Last-Event-ID"
# What a page must be able to read: upload progress, sequence acks, backoff hints.
EXPOSE_HEADERS = "X-Accepted-Bytes, X-Acked-Sequence, Retry-After"


class CorsPolicy:
    """Allowed origins from ``cors_origins`` ("", "*" or "https://a, https://b")."""

    def __init__(self, setting: str) -> None:
        items = [o.strip().rstrip("/") for o in setting.split(",") if o.strip()]
        self.any = "*" in items
        self.origins = frozenset(o for o in items if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and (self.any or origin in self.origins)

    async def preflight(self) -> Response | None:
        """Answer a preflight for an allowed origin; anything else goes on as usual."""
        origin = request.headers.get("Origin")
        if request.method != "OPTIONS" or not self.allowed(origin):
            return None
        if "Access-Control-Request-Method" not in request.headers:
            return None
        response = Response("", status=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    async def decorate(self, response: Response) -> Response:
        origin = request.headers.get("Origin")
        if self.allowed(origin):
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        response.headers.add("Vary", "Origin")
        return response
