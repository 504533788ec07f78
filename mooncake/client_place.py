"""Placement calls from a client to the Conductor, coalesced.

A lost worker's requests are all placed again at once, each from its own stream. One
call per request costs the scheduler a handler run and the client a round trip each,
and with a bound on the calls in flight (each call beyond the connections the pool holds
opens a new, often TLS, connection to the scheduler) the later ones queue behind the
earlier ones. ``PlaceBatcher`` sends the placement requests that are waiting together,
in one call (``mooncake_place_many``); a request alone goes at once, as before (its
call leaves in the next loop iteration), so nothing waits to be batched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Msg = dict[str, Any]


class PlaceBatcher:
    """Args:
    call: sends a list of ``PlaceRequest`` messages, answers their replies in order.
    concurrency: calls in flight at most; requests that wait for one go in the next.
    """

    def __init__(
        self, call: Callable[[list[Msg]], Awaitable[list[Msg]]], concurrency: int
    ) -> None:
        self._call = call
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting: list[tuple[Msg, asyncio.Future[Msg]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self.calls = 0
        """Calls made (a test and a benchmark count them)."""

    async def ask(self, request: Msg) -> Msg:
        """The Conductor's reply to one placement request (on the loop of the calls)."""
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, fut))
        if len(self._waiting) == 1:  # the first to wait: a call will take it and the rest
            task = asyncio.ensure_future(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        return await fut

    async def _flush(self) -> None:
        async with self._slots:
            batch, self._waiting = self._waiting, []
            if not batch:
                return
            self.calls += 1
            try:
                replies = await self._call([r for r, _ in batch])
                if len(replies) != len(batch):
                    raise RuntimeError(
                        f"placement: {len(replies)} replies to {len(batch)} requests"
                    )
            except BaseException as e:
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
                if not isinstance(e, Exception):
                    raise
                return
        for (_, f), reply in zip(batch, replies):
            if not f.done():
                f.set_result(reply)


__all__ = ["PlaceBatcher"]
