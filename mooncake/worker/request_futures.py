"""The engine calls in flight for a request between two of its tasks.

- ``early``: a lookup the Conductor started at placement (``mooncake-start``), in the
  plugin's lookup thread; the request's lookup task collects its result.
- ``started``: the engine's future of a request the lookup admitted; the next task
  (prefill, or generate when colocated) waits on it instead of admitting it again.
- ``receiving``: the transfer of a moved request the Conductor started at placement
  (``mooncake-resume``), in the plugin's resume threads, or of a request whose prefill
  worker said its KV is ready (``mooncake_handoff``); its transfer task collects it.

Each is taken once by the task that owns it; the request state machine's ``DropKV``
(abort, a graph that never arrived, an engine failure) forgets both."""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

LookupT = TypeVar("LookupT")
OutputT = TypeVar("OutputT")
ReceiveT = TypeVar("ReceiveT")


@dataclass(frozen=True, slots=True)
class Pending(Generic[OutputT]):
    future: concurrent.futures.Future[OutputT]
    since: float
    """Clock reading (the caller's clock) when it was started."""


class RequestFutures(Generic[LookupT, OutputT, ReceiveT]):
    """Early lookups (results ``LookupT``), admitted requests (outputs ``OutputT``) and
    early transfers (results ``ReceiveT``), by request id (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._early: dict[str, Pending[LookupT]] = {}
        self._started: dict[str, Pending[OutputT]] = {}
        self._receiving: dict[str, Pending[ReceiveT]] = {}

    def set_early(
        self, request_id: str, fut: concurrent.futures.Future[LookupT], since: float
    ) -> None:
        with self._lock:
            self._early[request_id] = Pending(fut, since)

    def take_early(self, request_id: str) -> Pending[LookupT] | None:
        """The early lookup of the request, for its lookup task (once)."""
        with self._lock:
            return self._early.pop(request_id, None)

    def set_receiving(
        self, request_id: str, fut: concurrent.futures.Future[ReceiveT], since: float
    ) -> None:
        with self._lock:
            self._receiving[request_id] = Pending(fut, since)

    def take_receiving(self, request_id: str) -> Pending[ReceiveT] | None:
        """The early transfer of the moved request, for its transfer task (once)."""
        with self._lock:
            return self._receiving.pop(request_id, None)

    def discard_receiving(self, request_id: str, fut: concurrent.futures.Future[ReceiveT]) -> None:
        """Forget the request's early transfer if it is ``fut`` (set ahead of a start
        that was then refused)."""
        with self._lock:
            got = self._receiving.get(request_id)
            if got is not None and got.future is fut:
                del self._receiving[request_id]

    def set_started(
        self, request_id: str, fut: concurrent.futures.Future[OutputT], since: float
    ) -> None:
        with self._lock:
            self._started[request_id] = Pending(fut, since)

    def take_started(self, request_id: str) -> Pending[OutputT] | None:
        """The engine future of the admitted request, for its next task (once)."""
        with self._lock:
            return self._started.pop(request_id, None)

    def drop(self, request_id: str) -> None:
        """Forget the request's futures (the engine call itself is aborted elsewhere)."""
        with self._lock:
            self._early.pop(request_id, None)
            self._started.pop(request_id, None)
            self._receiving.pop(request_id, None)

    def pending(self) -> list[str]:
        """Requests with a future kept here."""
        with self._lock:
            return sorted(set(self._early) | set(self._started) | set(self._receiving))


__all__ = ["Pending", "RequestFutures"]
