"""The KV a worker keeps for a hand-off between a request's prefill and its decode
when there is no KV store (``enable_store=False``): the prefill side's outbox, pulled
once by the decode worker (``mooncake_fetch_kv``) or taken by a local decode, and the
decode side's inbox, where the pulled KV waits for the decode task.

Entries are dropped on the request state machine's ``DropKV`` (abort, a lost decode
worker, an engine failure), so an abandoned hand-off does not keep its KV."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

E = TypeVar("E")


class KVHandoff(Generic[E]):
    """Outbox and inbox of one worker, by request id (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outbox: dict[str, E] = {}
        self._inbox: dict[str, E] = {}

    def keep(self, request_id: str, export: E) -> None:
        """Prefill side: keep the request's KV until its decode worker takes it."""
        with self._lock:
            self._outbox[request_id] = export

    def take_outgoing(self, request_id: str) -> E | None:
        """Prefill side: hand the kept KV over (once); None when there is none."""
        with self._lock:
            return self._outbox.pop(request_id, None)

    def receive(self, request_id: str, export: E) -> None:
        """Decode side: the pulled KV waits for the request's decode task."""
        with self._lock:
            self._inbox[request_id] = export

    def take_incoming(self, request_id: str) -> E | None:
        """Decode side: the received KV (once); None on a miss."""
        with self._lock:
            return self._inbox.pop(request_id, None)

    def drop(self, request_id: str) -> None:
        """Forget both sides of the request's hand-off."""
        with self._lock:
            self._outbox.pop(request_id, None)
            self._inbox.pop(request_id, None)

    def outgoing(self) -> list[str]:
        """Requests whose KV is kept for a decode worker."""
        with self._lock:
            return list(self._outbox)

    def incoming(self) -> list[str]:
        """Requests whose received KV waits for decode."""
        with self._lock:
            return list(self._inbox)


__all__ = ["KVHandoff"]
