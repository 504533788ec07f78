"""What a worker reports to the Conductor (a ``mooncake-report`` message on the worker's
stream to the scheduler, when something changed: ``mooncake.worker.report_pacer``).

One typed form, built by the worker and parsed by the Conductor's plugin here; on the
wire it is a plain dict of lists (Dask's comms carry msgpack, which has no dataclasses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mooncake.metrics import LookupRecord, RequestRecord

REPORT_OP = "mooncake-report"
"""The stream message (``{"op": REPORT_OP, "report": WorkerReport.to_msg()}``) a worker
sends to the scheduler, where the Conductor's plugin handles it."""


@dataclass(frozen=True, slots=True)
class PrefillDone:
    """A prefill finished: its observed compute time refines the cost model."""

    request_id: str
    prompt_tokens: int
    cached_tokens: int
    seconds: float


@dataclass(frozen=True, slots=True)
class TransferSample:
    """A KV move over a link (what the bandwidth estimate learns from)."""

    nbytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class TransferLogEntry:
    """Any KV move, local ones too (for the metrics)."""

    path: str
    nbytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class DecodeStep:
    """One timed engine step: decode-only (what the decode step time fit learns from),
    or prompt-only (``prefill_chunks`` set, ``sequences`` 0: what the prefill step fit
    of the cost-model export learns from)."""

    sequences: int
    context_tokens: int
    """KV tokens the step's decode tokens attended over."""
    seconds: float
    gap_s: float | None = None
    """Seconds from the end of the previous decode-only step to this one's start (the
    engine loop's work between steps), ``None`` when a prefill step or an idle spell
    came between."""
    prefill_chunks: tuple[tuple[int, int], ...] = ()
    """A prompt-only step's chunks, as (end, start) token indices of each prompt."""


StepTiming = tuple[int, int, float, float | None, tuple[tuple[int, int], ...]]
"""A :class:`DecodeStep` as the engine process sends it (a plain tuple on its pipe)."""


@dataclass(frozen=True, slots=True)
class WorkerLoadReport:
    """The worker's engine and store occupancy now."""

    running: int = 0
    waiting: int = 0
    free_blocks: int = 0
    num_blocks: int = 0
    cached_blocks: int = 0
    busy_seconds: float = 0.0
    tiers: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Host/SSD tier -> (used, capacity) in blocks of the engine's size."""
    host_bytes: int = 0

    def to_msg(self) -> dict[str, Any]:
        return {**asdict(self), "tiers": {t: list(v) for t, v in self.tiers.items()}}

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> WorkerLoadReport:
        return cls(
            running=int(msg.get("running", 0)),
            waiting=int(msg.get("waiting", 0)),
            free_blocks=int(msg.get("free_blocks", 0)),
            num_blocks=int(msg.get("num_blocks", 0)),
            cached_blocks=int(msg.get("cached_blocks", 0)),
            busy_seconds=float(msg.get("busy_seconds", 0.0)),
            tiers={str(t): (int(u), int(n)) for t, (u, n) in msg.get("tiers", {}).items()},
            host_bytes=int(msg.get("host_bytes", 0)),
        )


@dataclass(slots=True)
class WorkerReport:
    """Everything since the worker's previous report."""

    load: WorkerLoadReport
    stored: list[bytes] = field(default_factory=list)
    """Block keys now held in some tier of the worker."""
    removed: list[bytes] = field(default_factory=list)
    """Block keys gone from all its tiers."""
    prefills: list[PrefillDone] = field(default_factory=list)
    decode_joined: list[str] = field(default_factory=list)
    """Requests that joined the worker's decode batch."""
    transfers: list[TransferSample] = field(default_factory=list)
    lookups: list[LookupRecord] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    """Requests that finished here."""
    transfer_log: list[TransferLogEntry] = field(default_factory=list)
    decode_steps: list[DecodeStep] = field(default_factory=list)
    """The engine's decode-only steps since the last report."""
    leases_expired: int = 0
    """Hand-off leases of this worker found expired before they were released."""
    info: dict[str, Any] | None = None
    """The worker's facts (roles, model shape, store peer), until the Conductor has them."""

    def to_msg(self) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "stored": list(self.stored),
            "removed": list(self.removed),
            "prefills": [
                [p.request_id, p.prompt_tokens, p.cached_tokens, p.seconds] for p in self.prefills
            ],
            "decode_joined": list(self.decode_joined),
            "transfers": [[t.nbytes, t.seconds] for t in self.transfers],
            "lookups": [asdict(lk) for lk in self.lookups],
            "requests": [{**asdict(r), "itl_s": list(r.itl_s)} for r in self.requests],
            "transfer_log": [[t.path, t.nbytes, t.seconds] for t in self.transfer_log],
            "decode_steps": [
                [
                    d.sequences,
                    d.context_tokens,
                    d.seconds,
                    d.gap_s,
                    [list(c) for c in d.prefill_chunks],
                ]
                for d in self.decode_steps
            ],
            "leases_expired": self.leases_expired,
            "load": self.load.to_msg(),
        }
        if self.info is not None:
            msg["info"] = self.info
        return msg

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> WorkerReport:
        return cls(
            load=WorkerLoadReport.from_msg(msg.get("load", {})),
            stored=list(msg.get("stored", ())),
            removed=list(msg.get("removed", ())),
            prefills=[
                PrefillDone(str(r), int(n), int(c), float(s))
                for r, n, c, s in msg.get("prefills", ())
            ],
            decode_joined=[str(r) for r in msg.get("decode_joined", ())],
            transfers=[TransferSample(int(b), float(s)) for b, s in msg.get("transfers", ())],
            lookups=[LookupRecord(**lk) for lk in msg.get("lookups", ())],
            requests=[RequestRecord(**r) for r in msg.get("requests", ())],
            transfer_log=[
                TransferLogEntry(str(p), int(b), float(s))
                for p, b, s in msg.get("transfer_log", ())
            ],
            decode_steps=[
                DecodeStep(
                    int(d[0]),
                    int(d[1]),
                    float(d[2]),
                    float(d[3]) if len(d) > 3 and d[3] is not None else None,
                    tuple((int(e), int(s)) for e, s in d[4]) if len(d) > 4 else (),
                )
                for d in msg.get("decode_steps", ())
            ],
            leases_expired=int(msg.get("leases_expired", 0)),
            info=msg.get("info"),
        )


__all__ = [
    "REPORT_OP",
    "DecodeStep",
    "PrefillDone",
    "StepTiming",
    "TransferLogEntry",
    "TransferSample",
    "WorkerLoadReport",
    "WorkerReport",
]
