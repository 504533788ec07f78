"""Server-sent events: ``data: {json}\\n\\n`` frames and a response that cancels its
producer as soon as the client goes away."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import anyio
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def event(payload: BaseModel | dict[str, Any]) -> bytes:
    """One SSE frame holding ``payload`` as compact JSON."""
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json(exclude_none=False)
    else:
        body = json.dumps(payload, separators=(",", ":"))
    return b"data: " + body.encode() + b"\n\n"


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` response whose body iterator is cancelled when the client
    disconnects, whatever ASGI spec version the server reports (Starlette only watches
    for ``http.disconnect`` below 2.4 and otherwise notices on the next write, which for
    a slow generation can be many seconds later). ``on_close`` runs once at the end in
    every case, also when the body never started."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            content,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def wrap(func: Callable[[], Awaitable[None]]) -> None:
                    await func()
                    tg.cancel_scope.cancel()

                tg.start_soon(wrap, partial(self.stream_response, send))
                await wrap(partial(self.listen_for_disconnect, receive))
        finally:
            if self.on_close is not None:
                with anyio.CancelScope(shield=True):
                    await self.on_close()


__all__ = ["DONE", "EventStreamResponse", "event"]
