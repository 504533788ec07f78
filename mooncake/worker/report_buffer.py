"""What a worker has to tell the Conductor, gathered between two reports.

Tasks and handlers record here from any thread (deque appends are atomic); the plugin's
report loop drains it into one ``WorkerReport`` when its ``ReportPacer`` says a report
is due (``pending`` tells how soon one is needed)."""

from __future__ import annotations

from collections import deque
from typing import Any, TypeVar

from mooncake.conductor.reports import (
    DecodeStep,
    PrefillDone,
    TransferLogEntry,
    TransferSample,
    WorkerLoadReport,
    WorkerReport,
)
from mooncake.metrics import LookupRecord, RequestRecord
from mooncake.worker.report_pacer import Pending

T = TypeVar("T")


def _drain(q: deque[T]) -> list[T]:
    out = []
    while q:
        out.append(q.popleft())
    return out


class ReportBuffer:
    def __init__(self) -> None:
        self._prefills: deque[PrefillDone] = deque()
        self._decode_joins: deque[str] = deque()
        self._transfers: deque[TransferSample] = deque()
        self._lookups: deque[LookupRecord] = deque()
        self._requests: deque[RequestRecord] = deque()
        self._transfer_log: deque[TransferLogEntry] = deque()

    def prefill(
        self, request_id: str, prompt_tokens: int, cached_tokens: int, seconds: float
    ) -> None:
        """A prefill finished (``seconds`` of engine compute)."""
        self._prefills.append(PrefillDone(request_id, prompt_tokens, cached_tokens, seconds))

    def decode_joined(self, request_id: str) -> None:
        self._decode_joins.append(request_id)

    def transfer(self, nbytes: int, seconds: float) -> None:
        """A KV move over a link (not a same-host one): a bandwidth sample."""
        self._transfers.append(TransferSample(nbytes, seconds))

    def transfer_log(self, path: str, nbytes: int, seconds: float) -> None:
        """Any KV move (for the metrics)."""
        self._transfer_log.append(TransferLogEntry(path, nbytes, seconds))

    def lookup(self, record: LookupRecord) -> None:
        self._lookups.append(record)

    def request(self, record: RequestRecord) -> None:
        """A request finished here."""
        self._requests.append(record)

    def pending(self) -> Pending:
        """``urgent`` when something the Conductor places with is waiting (finished
        prefills, decode joins, finished requests, transfer samples), ``slow`` when only
        metrics records are, else ``none`` (see ``report_pacer``)."""
        if self._prefills or self._decode_joins or self._requests or self._transfers:
            return "urgent"
        if self._lookups or self._transfer_log:
            return "slow"
        return "none"

    def drain(
        self,
        load: WorkerLoadReport,
        stored: list[bytes],
        removed: list[bytes],
        info: dict[str, Any] | None = None,
        decode_steps: list[DecodeStep] | None = None,
    ) -> WorkerReport:
        """Everything recorded since the last drain, with the worker's state now
        (``decode_steps``: the engine's, drained by the caller from its engine client)."""
        return WorkerReport(
            load=load,
            stored=stored,
            removed=removed,
            prefills=_drain(self._prefills),
            decode_joined=_drain(self._decode_joins),
            transfers=_drain(self._transfers),
            lookups=_drain(self._lookups),
            requests=_drain(self._requests),
            transfer_log=_drain(self._transfer_log),
            decode_steps=decode_steps or [],
            info=info,
        )


__all__ = ["ReportBuffer"]
