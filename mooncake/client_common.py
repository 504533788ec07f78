"""What the parts of the client share: its errors, its liveness timings, and how an item
reaches a consumer's event loop."""

from __future__ import annotations

import asyncio
from typing import Any

LIVENESS_INTERVAL_S = 1.0
"""How often a batch checks that its requests' workers are still in the cluster (and
whether it was cancelled)."""
MOVE_DEADLINE_S = 5.0
"""How long a request whose worker was lost may wait to be placed again (an overloaded
cluster) before it fails with ``WorkerLost``."""
PLACE_TIMEOUT_S = 30.0
"""How long a placement waits for the scheduler's answer."""


class Rejected(Exception):
    """The Conductor refused the request (overload); try again after ``retry_after`` s."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(f"request rejected: {reason} (retry after {retry_after:.2f} s)")
        self.reason = reason
        self.retry_after = retry_after


class Unavailable(Exception):
    """No worker of a role the request needs is in the cluster (a server answers 503);
    the request can run once one has joined."""


class WorkerLost(Unavailable):
    """A worker serving the request left and the request could not be moved to another."""


def post(loop: asyncio.AbstractEventLoop, q: asyncio.Queue[Any], item: Any) -> None:
    """Hand an item to a consumer's event loop from the client's thread (a consumer that
    already went away is not an error)."""
    try:
        loop.call_soon_threadsafe(q.put_nowait, item)
    except RuntimeError:
        pass


def _put_all(items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)


def post_many(loop: asyncio.AbstractEventLoop, items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    """``post`` for several (queue, item) pairs of one loop, in one wake-up of it."""
    try:
        loop.call_soon_threadsafe(_put_all, items)
    except RuntimeError:
        pass


__all__ = [
    "LIVENESS_INTERVAL_S",
    "MOVE_DEADLINE_S",
    "PLACE_TIMEOUT_S",
    "Rejected",
    "Unavailable",
    "WorkerLost",
    "post",
    "post_many",
]
