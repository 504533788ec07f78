"""Bearer API-key check for every route but ``/health`` (pure ASGI middleware)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from mooncake.server.errors import unauthorized

OPEN_PATHS = frozenset({"/health"})


class APIKeyMiddleware:
    """Answer 401 (OpenAI's error shape) unless ``Authorization: Bearer <key>`` matches.

    Args:
        app: the wrapped application.
        api_key: the one accepted key.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self._expected):
            response = unauthorized().response()
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


__all__ = ["APIKeyMiddleware"]
