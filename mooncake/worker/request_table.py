"""Everything a worker keeps per request, driven by the request state machine.

``RequestTable.handle(event)`` applies an event to ``request_state.WorkerRequests``
(under a lock: the plugin's handlers, the lookup thread and the tasks' threads all send
events) and carries out the bookkeeping instructions itself: ``DropKV`` forgets the
request's futures and hand-off KV, ``AbortEngine`` calls the engine's abort. What is
left for the caller is ``BeginLookup`` / ``CollectLookup`` / ``BeginTransfer`` /
``CollectTransfer`` / ``FailTask``, which decide
what the calling task or handler does next. No Dask here: the engine and whatever else
the worker forgets on a drop are callables, so every path is a unit test."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mooncake.worker import request_state as rs
from mooncake.worker.kv_handoff import KVHandoff
from mooncake.worker.request_futures import RequestFutures

LookupT = TypeVar("LookupT")
OutputT = TypeVar("OutputT")
ExportT = TypeVar("ExportT")
ReceiveT = TypeVar("ReceiveT")


class RequestTable(Generic[LookupT, OutputT, ExportT, ReceiveT]):
    """Args:
    machine: the state machine (its deadlines are configured there).
    abort_engine: drop a request from the engine (returns at once; may return a future).
    forget: anything else the worker keeps by request id (e.g. its token timings).
    """

    def __init__(
        self,
        machine: rs.WorkerRequests,
        abort_engine: Callable[[str], Any],
        forget: Callable[[str], Any] | None = None,
    ) -> None:
        self.machine = machine
        self.futures: RequestFutures[LookupT, OutputT, ReceiveT] = RequestFutures()
        self.handoff: KVHandoff[ExportT] = KVHandoff()
        self._abort_engine = abort_engine
        self._forget = forget
        self._lock = threading.Lock()

    def handle(self, event: rs.Event, *, apply: bool = True) -> list[rs.Instruction]:
        """Apply one event and (unless ``apply`` is false) carry out its ``AbortEngine``
        and ``DropKV`` instructions; returns all of them (the caller acts on
        ``FailTask``, ``BeginLookup`` and ``CollectLookup``)."""
        with self._lock:
            instructions = self.machine.handle(event)
        if apply:
            self.apply(instructions)
        return instructions

    def apply(self, instructions: list[rs.Instruction]) -> None:
        """Carry out the engine and bookkeeping instructions, in order."""
        for ins in instructions:
            if isinstance(ins, rs.AbortEngine):
                self._abort_engine(ins.request_id)
            elif isinstance(ins, rs.DropKV):
                self.drop(ins.request_id)

    def drop(self, request_id: str) -> None:
        """Forget what this worker keeps for the request (not its state: an abort's
        memory stays in the machine)."""
        self.futures.drop(request_id)
        self.handoff.drop(request_id)
        if self._forget is not None:
            self._forget(request_id)

    def state_of(self, request_id: str) -> rs.State | None:
        with self._lock:
            return self.machine.state_of(request_id)


__all__ = ["RequestTable"]
