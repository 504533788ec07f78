"""Store events: the stream the Conductor consumes to keep its global block index.

Every change to where a block lives is one event: ``stored`` (new in a tier),
``removed`` (gone from this store: evicted without room below, deleted, or found
corrupt) and ``moved`` (demoted host -> SSD, or promoted SSD -> host).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from mooncake.types import BlockKey

EventKind = Literal["stored", "removed", "moved"]
Tier = Literal["host", "ssd"]


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One change to the set of blocks a store holds."""

    kind: EventKind
    key: BlockKey
    tier: Tier
    """Tier the block is in now (``removed``: the tier it left)."""
    from_tier: Tier | None = None
    """For ``moved``: the tier it left."""
    reason: str = ""
    """Why (``evicted``, ``deleted``, ``corrupt``, ``demoted``, ``promoted``, ``put``)."""


Listener = Callable[[StoreEvent], None]


class EventLog:
    """Buffered event stream with optional synchronous listeners.

    Args:
        maxlen: events kept for :meth:`drain`; older ones are dropped and counted in
            ``dropped`` (a consumer that sees ``dropped > 0`` must resync from a scan).
    """

    def __init__(self, maxlen: int = 100_000) -> None:
        self._buf: deque[StoreEvent] = deque()
        self._maxlen = maxlen
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self.dropped = 0

    def emit(self, event: StoreEvent) -> None:
        with self._lock:
            if len(self._buf) >= self._maxlen:
                self._buf.popleft()
                self.dropped += 1
            self._buf.append(event)
            listeners = list(self._listeners)
        for fn in listeners:
            fn(event)

    def __len__(self) -> int:
        """Events waiting for :meth:`drain` (a cheap check before draining)."""
        return len(self._buf)

    def drain(self) -> list[StoreEvent]:
        """All buffered events, oldest first; the buffer is emptied."""
        with self._lock:
            out = list(self._buf)
            self._buf.clear()
            return out

    def subscribe(self, fn: Listener) -> Callable[[], None]:
        """Call ``fn`` on every future event; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)

        return unsubscribe


def presence_changes(events: Iterable[StoreEvent]) -> tuple[list[BlockKey], list[BlockKey]]:
    """Collapse events into what a global index needs: (keys now held, keys now gone).

    ``moved`` keeps a block in the store, so it changes nothing here; for a key with
    several events the last presence change wins (stored then removed -> removed).
    """
    last: dict[BlockKey, bool] = {}
    for e in events:
        if e.kind == "stored":
            last[e.key] = True
        elif e.kind == "removed":
            last[e.key] = False
    return [k for k, held in last.items() if held], [k for k, held in last.items() if not held]


__all__ = ["EventKind", "EventLog", "Listener", "StoreEvent", "presence_changes"]
