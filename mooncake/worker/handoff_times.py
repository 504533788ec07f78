"""When each stage of a request's KV hand-off ran, per worker: the timestamps that let a
benchmark (``benchmarks/handoff_bandwidth.py``) or an operator split the hand-off into
the part that moves bytes and the part that waits for the control plane.

Stages (wall-clock ``time.time()``, comparable between the processes of one host):

- prefill side: ``export_start`` (the worker asks its engine to write the request's
  blocks into the host tier), ``stored`` (they are committed there; with streaming, the
  first export's start and the last one's end);
- decode side: ``fetch_start`` (the transfer task starts bringing the blocks over) and
  ``imported`` (they are in the decode engine's pool).

A bounded table, oldest dropped first; any thread records (one lock, a few dict writes).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Literal

Stage = Literal["export_start", "stored", "fetch_start", "imported"]
MAX_REQUESTS = 256
"""Requests whose times are kept (a diagnostic, not a log)."""


class HandoffTimes:
    """Stage timestamps and bytes of the last :data:`MAX_REQUESTS` hand-offs."""

    def __init__(self, max_requests: int = MAX_REQUESTS) -> None:
        self._max = max_requests
        self._lock = threading.Lock()
        self._rows: OrderedDict[str, dict[str, float]] = OrderedDict()

    def mark(self, request_id: str, stage: Stage, nbytes: int = 0, blocks: int = 0) -> None:
        """Record that ``stage`` of ``request_id`` happened now. A start stage keeps its
        first time, an end stage its last (a streamed hand-off has several exports);
        ``nbytes``/``blocks`` add up per side."""
        now = time.time()
        with self._lock:
            row = self._rows.get(request_id)
            if row is None:
                row = self._rows[request_id] = {}
                while len(self._rows) > self._max:
                    self._rows.popitem(last=False)
            if stage.endswith("_start"):
                row.setdefault(stage, now)
            else:
                row[stage] = now
            side = "prefill" if stage in ("export_start", "stored") else "decode"
            if nbytes:
                row[f"{side}_bytes"] = row.get(f"{side}_bytes", 0) + nbytes
            if blocks:
                row[f"{side}_blocks"] = row.get(f"{side}_blocks", 0) + blocks

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Request id -> stage (or ``*_bytes``/``*_blocks``) -> value, a copy."""
        with self._lock:
            return {rid: dict(row) for rid, row in self._rows.items()}


__all__ = ["MAX_REQUESTS", "HandoffTimes", "Stage"]
