"""The prefill worker's notices to decode workers that a request's KV is ready (the
early hand-off, ``MooncakeWorker.handle_handoff``), one call in flight per decode worker.

Every prefill that ends in one engine step ends at about the same moment, and a call per
request opened a new connection (a TLS handshake) for each one that found the others
busy: in a traced burst of 16 requests the first notices took 80-90 ms. Here notices
that come while a call to the same worker is in flight wait for it and go together in
the next call: one connection per decode worker, and about one message per prefill step
and destination. Everything runs on the worker's event loop; ``offer`` may be called
from any thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)

NOTICE_TIMEOUT_S = 5.0
"""A call to one decode worker that has not answered by then is given up (its notices
are lost; that worker's transfer tasks do the work), so a silent worker does not hold
up the notices that wait behind it for ever."""


class HandoffNotices(Generic[T]):
    """Args:
    loop: the worker's event loop (the calls run there).
    send: sends one decode worker (its address) the notices given, in order.
    timeout_s: how long one call may take (``NOTICE_TIMEOUT_S``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[str, list[T]], Awaitable[object]],
        timeout_s: float = NOTICE_TIMEOUT_S,
    ) -> None:
        self._loop = loop
        self._send = send
        self.timeout_s = timeout_s
        self._pending: dict[str, list[T]] = {}
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        """Calls made (a test counts them)."""

    def offer(self, dest: str, notice: T) -> None:
        """Send ``notice`` to ``dest`` soon (any thread; returns at once)."""
        self._loop.call_soon_threadsafe(self._add, dest, notice)

    def _add(self, dest: str, notice: T) -> None:
        self._pending.setdefault(dest, []).append(notice)
        if dest not in self._busy:
            self._busy.add(dest)
            task = self._loop.create_task(self._drain(dest))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, dest: str) -> None:
        """Send ``dest``'s notices, those that came meanwhile in the next call, until
        none is left (nothing awaits between the last check and the end: a notice that
        comes later starts a new drain)."""
        try:
            while self._pending.get(dest):
                batch = self._pending.pop(dest)
                self.calls += 1
                try:
                    await asyncio.wait_for(self._send(dest, batch), self.timeout_s)
                except Exception as e:  # gone, closing or silent: its transfer tasks do the work
                    logger.debug("hand-off notices to %s failed: %s", dest, e)
        finally:
            self._busy.discard(dest)


__all__ = ["HandoffNotices"]
