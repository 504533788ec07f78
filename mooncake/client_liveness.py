"""Liveness on the client side of ``mooncake.LLM``: which workers are in the cluster
(membership events from the Conductor, the live set asked at most every second when an
event may have been missed), whether a request's worker is gone, and whether losing it
stops the request. Streams (``LLM.stream``) and batches (``LLM.generate``) both ask
:meth:`LivenessMixin._lost_worker`.

A mixin of :class:`mooncake.client.LLM`, which owns the state named below.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from distributed import Client, Future

from mooncake.client_common import LIVENESS_INTERVAL_S, post
from mooncake.conductor import membership
from mooncake.conductor.membership import WorkerJoined
from mooncake.request_ids import task_key

logger = logging.getLogger(__name__)


class LivenessMixin:
    """Worker membership and the lost-worker checks of :class:`mooncake.client.LLM`."""

    # What these methods use of the LLM (set by mooncake.client.LLM).
    client: Client
    workers: dict[str, dict[str, Any]]
    _lock: threading.Lock
    _gone: set[str]
    _placed: dict[str, set[str]]
    _sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]]
    _futures: dict[str, dict[str, Future[Any]]]
    _task_workers: dict[str, str]
    _live_cache: tuple[float, set[str]]
    _left_at: dict[str, float]

    if TYPE_CHECKING:

        async def _on_client_loop(self, coro: Any) -> Any: ...

        @property
        def _scheduler(self) -> Any: ...

    def _on_membership(self, event: tuple[float, dict[str, Any]]) -> None:
        """(Client loop.) A worker joined: it is known from now on. A worker left: every
        stream with a request on it is told."""
        _, msg = event
        left = membership.parse(msg)
        if isinstance(left, WorkerJoined):
            with self._lock:
                self.workers[left.worker] = left.info
                self._gone.discard(left.worker)
            return
        if left is None:
            return
        with self._lock:
            self._left_at[left.worker] = time.monotonic()
            self._gone.add(left.worker)
            self.workers.pop(left.worker, None)
            affected = [rid for rid, workers in self._placed.items() if left.worker in workers]
        for rid in affected:
            sink = self._sinks.get(rid)
            if sink is not None:
                post(*sink, ("lost", left.worker))

    async def _live_workers(self) -> set[str] | None:
        """The mooncake workers in the cluster now (asked at most every second); None when
        the scheduler cannot be asked (Dask reconnects or fails the futures)."""
        t, live = self._live_cache
        if time.monotonic() - t > LIVENESS_INTERVAL_S:
            try:
                live = set(await self._on_client_loop(self._scheduler.mooncake_workers()))
            except Exception as e:
                logger.debug("liveness check failed: %s", e)
                return None
            self._live_cache = (time.monotonic(), live)
        return live

    def _live_workers_sync(self) -> set[str] | None:
        """``_live_workers`` for callers outside the client's event loop (batches)."""
        live: set[str] | None = self.client.sync(self._live_workers)
        return live

    def _lost_worker(self, rid: str, live: set[str] | None) -> str | None:
        """A worker of the request that the scheduler reported gone or that is not among
        ``live`` (None: unknown), or None. Streams and batches both ask this."""
        with self._lock:
            workers = set(self._placed.get(rid, ()))
            gone = workers & self._gone
        if not gone and live is not None:
            gone = workers - live
        return min(gone) if gone else None

    def _needs_move(self, rid: str, worker: str) -> bool:
        """Whether losing ``worker`` stops the request: a task of it that has not finished
        runs (or waits to run) there, or the prefill's result that its transfer still
        needs lived there. A request whose KV already reached decode goes on as it is."""
        with self._lock:
            futures = dict(self._futures.get(rid, {}))
            where = {k: self._task_workers.get(k) for k in futures}
        if any(w == worker and futures[k].status != "finished" for k, w in where.items()):
            return True
        transfer = futures.get(task_key("transfer", rid))
        return (
            where.get(task_key("prefill", rid)) == worker
            and transfer is not None
            and transfer.status != "finished"
        )


__all__ = ["LivenessMixin"]
