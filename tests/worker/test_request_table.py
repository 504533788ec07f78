"""A worker's per-request bookkeeping driven by the request state machine, without a
cluster or an engine: the machine's instructions reach the engine and the kept KV and
futures, in the races that used to need a live cluster."""

from __future__ import annotations

import concurrent.futures

from mooncake.worker import request_state as rs
from mooncake.worker.request_table import RequestTable

R = "r1"


class Fake:
    def __init__(self) -> None:
        self.aborted: list[str] = []
        self.forgotten: list[str] = []

    def table(self) -> RequestTable[str, str, str, str]:
        return RequestTable(
            rs.WorkerRequests(early_lookup_timeout_s=60.0, abort_memory_s=60.0),
            abort_engine=self.aborted.append,
            forget=self.forgotten.append,
        )


def test_early_lookup_then_tasks_hand_off() -> None:
    """Placed -> lookup task collects -> prefill keeps KV -> decode worker pulls it:
    nothing left, the engine never aborted."""
    fake = Fake()
    t = fake.table()
    assert t.handle(rs.Placed(R, 0.0, "D")) == [rs.BeginLookup(R)]
    t.futures.set_early(R, concurrent.futures.Future(), 0.0)
    assert t.handle(rs.TaskArrived(R, "lookup", 0.1)) == [rs.CollectLookup(R)]
    assert t.futures.take_early(R) is not None
    t.handle(rs.LookupDone(R, 0.2))
    t.handle(rs.TaskArrived(R, "prefill", 0.3))
    t.handoff.keep(R, "kv")
    t.handle(rs.Prefilled(R, 0.4, "D"))
    assert t.state_of(R) == "prefilled"
    assert t.handoff.take_outgoing(R) == "kv"
    t.handle(rs.HandedOff(R, 0.5))
    assert t.state_of(R) is None and fake.aborted == []


def test_abort_drops_everything_kept() -> None:
    """An abort while the admission future and hand-off KV are kept: the engine is told,
    both are forgotten, the worker's own per-request state (token timings) too, and a
    task that arrives afterwards fails."""
    fake = Fake()
    t = fake.table()
    t.handle(rs.Placed(R, 0.0, "D"))
    t.futures.set_started(R, concurrent.futures.Future(), 0.0)
    t.handoff.keep(R, "kv")
    ins = t.handle(rs.Abort(R, 1.0))
    assert rs.AbortEngine(R) in ins and rs.DropKV(R) in ins
    assert fake.aborted == [R] and fake.forgotten == [R]
    assert t.futures.take_started(R) is None and t.handoff.take_outgoing(R) is None
    assert t.handle(rs.TaskArrived(R, "prefill", 2.0)) == [rs.FailTask(R, "aborted")]


def test_abort_without_apply_leaves_it_to_the_caller() -> None:
    """``apply=False`` only decides: the caller (the abort handler, which awaits the
    engine's answer itself) carries it out."""
    fake = Fake()
    t = fake.table()
    t.handle(rs.Placed(R, 0.0))
    t.handoff.keep(R, "kv")
    t.handle(rs.Abort(R, 1.0), apply=False)
    assert fake.aborted == [] and t.handoff.outgoing() == [R]
    assert t.state_of(R) == "aborted"


def test_lookup_finishing_after_abort_is_taken_out() -> None:
    """The lookup admitted the request while its abort came: the engine is told to drop
    it again and its admission future is forgotten."""
    fake = Fake()
    t = fake.table()
    t.handle(rs.Placed(R, 0.0))
    t.handle(rs.Abort(R, 0.5))
    fake.aborted.clear()
    t.futures.set_started(R, concurrent.futures.Future(), 0.6)
    t.handle(rs.LookupDone(R, 0.7))
    assert fake.aborted == [R] and t.futures.take_started(R) is None


def test_lost_decode_worker_drops_the_outbox() -> None:
    """A prefilled request whose decode worker left: its kept KV is dropped, another
    request's is not."""
    fake = Fake()
    t = fake.table()
    for rid, dw in ((R, "D1"), ("r2", "D2")):
        t.handle(rs.Placed(rid, 0.0, dw))
        t.handle(rs.LookupDone(rid, 0.1))
        t.handoff.keep(rid, "kv")
        t.handle(rs.Prefilled(rid, 0.2, dw))
    t.handle(rs.PeerLost("D1", 1.0))
    assert t.handoff.outgoing() == ["r2"] and fake.aborted == []


def test_graph_that_never_arrives_is_aborted() -> None:
    """An early lookup no task claimed before the deadline: the engine drops it and its
    early future is forgotten."""
    fake = Fake()
    t = fake.table()
    t.handle(rs.Placed(R, 0.0))
    t.futures.set_early(R, concurrent.futures.Future(), 0.0)
    t.handle(rs.Tick(30.0))
    assert fake.aborted == []
    t.handle(rs.Tick(61.0))
    assert fake.aborted == [R] and t.futures.take_early(R) is None


def test_engine_failure_fails_the_task_and_drops() -> None:
    """An engine failure answers ``FailTask`` to the task and forgets what was kept."""
    fake = Fake()
    t = fake.table()
    t.handle(rs.TaskArrived(R, "lookup", 0.0))
    t.futures.set_started(R, concurrent.futures.Future(), 0.0)
    ins = t.handle(rs.EngineFailed(R, "nan logits", 0.5))
    assert rs.FailTask(R, "nan logits") in ins
    assert t.futures.take_started(R) is None and fake.forgotten == [R]
