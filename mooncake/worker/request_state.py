"""A request's life on one worker, as a state machine that does no IO.

The worker's adapters (the plugin's handlers, the task functions) turn what happens into
events and carry out the instructions the machine answers with; the machine only
decides, so every race is a unit test (distributed's ``worker_state_machine`` is the
model)::

    placed ──► looking_up ──► admitted ──► prefilled ──► handed_off     (prefill side)
    (transfer task) ──► receiving ──► received ──► decoding               (decode side)
    (ResumePlaced)  ──► receiving ──► received ──► decoding               (early resume)
    (HandoffReady)  ──► receiving ──► received ──► decoding               (early hand-off)
    any live state ──► finished | aborted | failed

- ``Placed``: the Conductor's start message; the lookup begins at once, ahead of the
  graph (``early``). ``TaskArrived(step="lookup")`` without one begins it then.
- ``Abort`` in any state stops the engine and drops the KV the worker keeps; the id is
  remembered for ``abort_memory_s`` so that a start, a task or a lookup that completes
  later is refused instead of admitting the request again.
- ``DecodeStarted``: the transfer task admitted the received request into the engine
  (its decode task collects the result), so the next token does not wait for the
  decode task's dispatch; an abort that came first makes it take the request out again.
- ``ResumePlaced``: the Conductor placed a request moved off a lost worker here and
  asks for its transfer and its admission into the engine now, ahead of the resume
  graph (``early``, like the early lookup); the graph's transfer task then collects the
  result (``CollectTransfer``) and its decode task the engine's future. A repeated
  start is ignored, a start after an abort refused.
- ``HandoffReady``: the prefill worker tells this (decode) worker itself that the
  request's KV is ready, when its prefill task ends; the transfer and admission begin
  at once, as for ``ResumePlaced``, instead of after the scheduler learned of the
  prefill task's end and dispatched the transfer task (17-60 ms in a traced burst).
  The transfer task collects the result; a transfer task that came first does the
  work itself and the message is ignored.
- ``PeerLost``: the worker on the other side of a hand-off left. A prefilled request
  whose decode worker left will never be pulled: its KV is dropped.
- ``Tick``: deadlines. Work begun at placement (an early lookup or an early resume)
  whose graph never arrived (the client went away between placement and submission)
  is aborted after ``early_lookup_timeout_s``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

State = Literal[
    "placed",
    "looking_up",
    "admitted",
    "prefilled",
    "handed_off",
    "receiving",
    "received",
    "decoding",
    "finished",
    "aborted",
    "failed",
]
Step = Literal["lookup", "prefill", "transfer", "decode", "generate"]

LIVE: frozenset[State] = frozenset(
    {
        "placed",
        "looking_up",
        "admitted",
        "prefilled",
        "handed_off",
        "receiving",
        "received",
        "decoding",
    }
)
"""States in which the request holds something on this worker."""


# -- events ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Placed:
    """The Conductor placed the request here and asks for its lookup now."""

    request_id: str
    at: float
    decode_worker: str | None = None


@dataclass(frozen=True, slots=True)
class ResumePlaced:
    """The Conductor placed a moved request here (decode side) and asks for its
    transfer and admission now, ahead of its resume graph."""

    request_id: str
    at: float
    peer: str | None = None
    """The prefill worker whose store may still hold the prompt's blocks."""


@dataclass(frozen=True, slots=True)
class HandoffReady:
    """The prefill worker says the request's KV is ready for this (decode) worker and
    asks for its transfer and admission now, ahead of the transfer task."""

    request_id: str
    at: float
    peer: str | None = None
    """The prefill worker."""


@dataclass(frozen=True, slots=True)
class TaskArrived:
    """A task of the request's graph started on this worker."""

    request_id: str
    step: Step
    at: float
    peer: str | None = None
    """The worker on the other side of the hand-off (decode's prefill worker)."""


@dataclass(frozen=True, slots=True)
class LookupDone:
    """The lookup finished: the engine admitted the request."""

    request_id: str
    at: float


@dataclass(frozen=True, slots=True)
class Prefilled:
    """Prefill's KV is exported and kept here for the decode worker."""

    request_id: str
    at: float
    decode_worker: str | None = None


@dataclass(frozen=True, slots=True)
class HandedOff:
    """The KV moved: pulled from this (prefill) worker, or received by this (decode) one."""

    request_id: str
    at: float


@dataclass(frozen=True, slots=True)
class DecodeStarted:
    """The received request was admitted into this (decode) worker's engine."""

    request_id: str
    at: float


@dataclass(frozen=True, slots=True)
class EngineFinished:
    request_id: str
    at: float


@dataclass(frozen=True, slots=True)
class EngineFailed:
    request_id: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Abort:
    """The client aborted the request (closed stream, disconnect, cancel)."""

    request_id: str
    at: float


@dataclass(frozen=True, slots=True)
class PeerLost:
    """A worker left the cluster."""

    worker: str
    at: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: check deadlines."""

    now: float


Event = (
    Placed
    | ResumePlaced
    | HandoffReady
    | TaskArrived
    | LookupDone
    | Prefilled
    | HandedOff
    | DecodeStarted
    | EngineFinished
    | EngineFailed
    | Abort
    | PeerLost
    | Tick
)


# -- instructions ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BeginLookup:
    """Start the lookup (it admits the request into the engine)."""

    request_id: str


@dataclass(frozen=True, slots=True)
class CollectLookup:
    """The lookup task collects the result of the lookup begun at placement."""

    request_id: str


@dataclass(frozen=True, slots=True)
class BeginTransfer:
    """Start the transfer of a resumed request's KV and admit it into the engine (it
    runs to its first tokens before the graph arrives)."""

    request_id: str


@dataclass(frozen=True, slots=True)
class CollectTransfer:
    """The transfer task collects the result of the transfer begun at placement."""

    request_id: str


@dataclass(frozen=True, slots=True)
class AbortEngine:
    """Drop the request from the engine (frees its blocks)."""

    request_id: str


@dataclass(frozen=True, slots=True)
class DropKV:
    """Forget the KV kept for the hand-off (outbox / inbox)."""

    request_id: str


@dataclass(frozen=True, slots=True)
class FailTask:
    """The task that asked must fail with ``reason`` (the request is gone here)."""

    request_id: str
    reason: str


Instruction = (
    BeginLookup | CollectLookup | BeginTransfer | CollectTransfer | AbortEngine | DropKV | FailTask
)


@dataclass(slots=True)
class RequestState:
    request_id: str
    state: State
    since: float
    early: bool = False
    """Its work began at placement, before any task arrived: the lookup (prefill
    side) or, with ``resumed``, the transfer and admission (decode side)."""
    resumed: bool = False
    """Started by ``ResumePlaced`` or ``HandoffReady`` (its transfer task collects,
    not its lookup task)."""
    task_seen: bool = False
    peer: str | None = None
    """The other worker of its hand-off (decode worker on the prefill side and back)."""
    placed_at: float = 0.0
    """When it arrived here (the early-lookup deadline counts from then)."""


@dataclass
class WorkerRequests:
    """Every request on one worker. ``handle(event) -> instructions``; no IO, no clock.

    Args:
        early_lookup_timeout_s: an early lookup whose graph never arrives is aborted
            after this long.
        abort_memory_s: how long an aborted id is remembered (and refused).
    """

    early_lookup_timeout_s: float = 60.0
    abort_memory_s: float = 60.0
    requests: dict[str, RequestState] = field(default_factory=dict)
    aborted: dict[str, float] = field(default_factory=dict)
    """Request id -> when it was aborted (refused until forgotten)."""
    transferred: dict[str, float] = field(default_factory=dict)
    """Request id -> when its transfer task arrived here (kept ``abort_memory_s``): a
    ``HandoffReady`` that comes later, its request maybe finished by now, begins
    nothing."""

    def state_of(self, request_id: str) -> State | None:
        rs = self.requests.get(request_id)
        if rs is not None:
            return rs.state
        return "aborted" if request_id in self.aborted else None

    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event; the instructions the adapter must carry out, in order."""
        if isinstance(event, Tick):
            return self._tick(event.now)
        if isinstance(event, PeerLost):
            return self._peer_lost(event)
        if isinstance(event, Abort):
            return self._abort(event.request_id, event.at)
        rid = event.request_id
        if rid in self.aborted:
            return self._refused(event)
        rs = self.requests.get(rid)
        if isinstance(event, Placed):
            if rs is not None:
                return []  # a repeated start
            self.requests[rid] = RequestState(
                rid,
                "looking_up",
                event.at,
                early=True,
                peer=event.decode_worker,
                placed_at=event.at,
            )
            return [BeginLookup(rid)]
        if isinstance(event, HandoffReady) and rid in self.transferred:
            return []  # its transfer task came first (and did the work)
        if isinstance(event, (ResumePlaced, HandoffReady)):
            if rs is not None:
                return []  # a repeated start, or its graph came first (then it does the work)
            self.requests[rid] = RequestState(
                rid,
                "receiving",
                event.at,
                early=True,
                resumed=True,
                peer=event.peer,
                placed_at=event.at,
            )
            return [BeginTransfer(rid)]
        if isinstance(event, TaskArrived):
            return self._task(rs, event)
        if rs is None:
            return []  # an event about a request this worker no longer tracks
        if isinstance(event, LookupDone):
            if rs.state == "looking_up":
                self._move(rs, "admitted", event.at)
            return []
        if isinstance(event, Prefilled):
            if rs.state == "admitted":
                self._move(rs, "prefilled", event.at)
                rs.peer = event.decode_worker or rs.peer
            return []
        if isinstance(event, HandedOff):
            if rs.state == "prefilled":
                del self.requests[rid]  # handed off: nothing of it is left on this worker
            elif rs.state == "receiving":
                self._move(rs, "received", event.at)
            return []
        if isinstance(event, DecodeStarted):
            if rs.state in ("receiving", "received"):
                self._move(rs, "decoding", event.at)
            return []
        if isinstance(event, EngineFinished):
            if rs.state in ("admitted", "decoding"):
                del self.requests[rid]
            return []
        if isinstance(event, EngineFailed):
            del self.requests[rid]
            return [DropKV(rid), FailTask(rid, event.reason)]
        raise TypeError(f"unknown event {event!r}")  # pragma: no cover

    # -- transitions -------------------------------------------------------------------
    def _move(self, rs: RequestState, state: State, at: float) -> None:
        rs.state, rs.since = state, at

    def _task(self, rs: RequestState | None, ev: TaskArrived) -> list[Instruction]:
        rid = ev.request_id
        if ev.step == "lookup":
            if rs is None:
                self.requests[rid] = RequestState(rid, "looking_up", ev.at, task_seen=True)
                return [BeginLookup(rid)]
            rs.task_seen = True
            return [CollectLookup(rid)] if rs.early else []
        if ev.step in ("prefill", "generate"):
            if rs is None:  # its lookup ran elsewhere or was forgotten: look up now
                self.requests[rid] = RequestState(rid, "looking_up", ev.at, task_seen=True)
                return [BeginLookup(rid)]
            rs.task_seen = True
            if ev.step == "generate" and rs.state == "admitted":
                self._move(rs, "decoding", ev.at)
            return []
        if ev.step == "transfer":
            self.transferred[rid] = ev.at
            if rs is None:
                self.requests[rid] = RequestState(
                    rid, "receiving", ev.at, task_seen=True, peer=ev.peer
                )
                return []
            first = not rs.task_seen
            rs.task_seen = True
            return [CollectTransfer(rid)] if rs.resumed and first else []
        # decode
        if rs is None or rs.state in ("receiving", "received"):
            self.requests[rid] = RequestState(
                rid, "decoding", ev.at, task_seen=True, peer=rs.peer if rs else ev.peer
            )
        return []

    def _refused(self, event: Event) -> list[Instruction]:
        """An event about an aborted request: nothing may bring it back."""
        rid = getattr(event, "request_id", "")
        if isinstance(event, TaskArrived):
            return [FailTask(rid, "aborted")]
        if isinstance(event, (ResumePlaced, HandoffReady)):
            return []  # aborted before its start arrived: nothing begins
        if isinstance(event, (LookupDone, DecodeStarted)):
            # Admitted into the engine while the abort came: take it out again.
            return [AbortEngine(rid), DropKV(rid)]
        if isinstance(event, Prefilled):
            return [DropKV(rid)]
        return []

    def _abort(self, rid: str, at: float) -> list[Instruction]:
        rs = self.requests.pop(rid, None)
        self.aborted[rid] = at
        out: list[Instruction] = [AbortEngine(rid), DropKV(rid)]
        if rs is not None and rs.task_seen and rs.state in ("looking_up", "placed"):
            out.append(FailTask(rid, "aborted"))
        return out

    def _peer_lost(self, ev: PeerLost) -> list[Instruction]:
        """A prefilled request whose decode worker left will never be pulled; a decode
        side that waits for KV from the lost worker recomputes it (no instruction)."""
        out: list[Instruction] = []
        for rid, rs in list(self.requests.items()):
            if rs.peer == ev.worker and rs.state == "prefilled":
                del self.requests[rid]
                out.append(DropKV(rid))
        return out

    def _tick(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        for rid, rs in list(self.requests.items()):
            if rs.early and not rs.task_seen and now - rs.placed_at > self.early_lookup_timeout_s:
                out += self._abort(rid, now)
        for rid, t in list(self.aborted.items()):
            if now - t > self.abort_memory_s:
                del self.aborted[rid]
        # In arrival order: only the old head is looked at (a tick comes every few ms).
        while self.transferred:
            rid = next(iter(self.transferred))
            if now - self.transferred[rid] <= self.abort_memory_s:
                break
            del self.transferred[rid]
        return out

    def live(self) -> Iterable[RequestState]:
        return (rs for rs in self.requests.values() if rs.state in LIVE)


__all__ = [
    "Abort",
    "AbortEngine",
    "BeginLookup",
    "BeginTransfer",
    "CollectLookup",
    "CollectTransfer",
    "DecodeStarted",
    "DropKV",
    "EngineFailed",
    "EngineFinished",
    "Event",
    "FailTask",
    "HandedOff",
    "HandoffReady",
    "Instruction",
    "LookupDone",
    "PeerLost",
    "Placed",
    "Prefilled",
    "RequestState",
    "ResumePlaced",
    "State",
    "TaskArrived",
    "Tick",
    "WorkerRequests",
]
