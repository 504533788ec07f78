"""The worker's request state machine, without a cluster: every transition, an abort
and a lost peer in every state, and the deadlines."""

from __future__ import annotations

import pytest

from mooncake.worker.request_state import (
    Abort,
    AbortEngine,
    BeginLookup,
    BeginTransfer,
    CollectLookup,
    CollectTransfer,
    DecodeStarted,
    DropKV,
    EngineFailed,
    EngineFinished,
    FailTask,
    HandedOff,
    HandoffReady,
    LookupDone,
    PeerLost,
    Placed,
    Prefilled,
    ResumePlaced,
    TaskArrived,
    Tick,
    WorkerRequests,
)

R = "r1"


def machine() -> WorkerRequests:
    return WorkerRequests(early_lookup_timeout_s=60.0, abort_memory_s=60.0)


def to_state(m: WorkerRequests, state: str) -> None:
    """Drive a fresh request ``R`` into ``state`` through the normal path."""
    paths = {
        "looking_up": [Placed(R, 0.0, "D")],
        "admitted": [Placed(R, 0.0, "D"), LookupDone(R, 0.1)],
        "prefilled": [
            Placed(R, 0.0, "D"),
            TaskArrived(R, "lookup", 0.05),
            LookupDone(R, 0.1),
            TaskArrived(R, "prefill", 0.1),
            Prefilled(R, 0.2, "D"),
        ],
        "receiving": [TaskArrived(R, "transfer", 0.0, peer="P")],
        "received": [TaskArrived(R, "transfer", 0.0, peer="P"), HandedOff(R, 0.1)],
        "decoding": [
            TaskArrived(R, "transfer", 0.0, peer="P"),
            HandedOff(R, 0.1),
            TaskArrived(R, "decode", 0.1),
        ],
    }
    for ev in paths[state]:
        m.handle(ev)
    assert m.state_of(R) == state


def test_prefill_side_path() -> None:
    """Placed -> looking_up (lookup begun early) -> the lookup task collects it ->
    admitted -> prefilled -> handed off: the worker forgets it."""
    m = machine()
    assert m.handle(Placed(R, 0.0, "D")) == [BeginLookup(R)]
    assert m.state_of(R) == "looking_up"
    assert m.handle(TaskArrived(R, "lookup", 0.01)) == [CollectLookup(R)]
    assert m.handle(LookupDone(R, 0.02)) == [] and m.state_of(R) == "admitted"
    assert m.handle(TaskArrived(R, "prefill", 0.03)) == [] and m.state_of(R) == "admitted"
    assert m.handle(Prefilled(R, 0.1, "D")) == [] and m.state_of(R) == "prefilled"
    assert m.handle(HandedOff(R, 0.2)) == [] and m.state_of(R) is None


def test_lookup_task_without_early_start_begins_it() -> None:
    """No start message (a lookup that fetches a peer's prefix): the task begins it."""
    m = machine()
    assert m.handle(TaskArrived(R, "lookup", 0.0)) == [BeginLookup(R)]
    assert m.handle(LookupDone(R, 0.1)) == [] and m.state_of(R) == "admitted"


def test_repeated_start_is_ignored() -> None:
    m = machine()
    m.handle(Placed(R, 0.0))
    assert m.handle(Placed(R, 0.1)) == []


def test_prefill_task_for_unknown_request_begins_lookup() -> None:
    m = machine()
    assert m.handle(TaskArrived(R, "prefill", 0.0)) == [BeginLookup(R)]


def test_colocated_generate() -> None:
    """Colocated: the generate task turns an admitted request into a decoding one; the
    engine's end forgets it."""
    m = machine()
    to_state(m, "admitted")
    m.handle(TaskArrived(R, "generate", 0.2))
    assert m.state_of(R) == "decoding"
    assert m.handle(EngineFinished(R, 1.0)) == [] and m.state_of(R) is None


def test_decode_side_path() -> None:
    """transfer -> receiving -> KV received -> decode -> finished."""
    m = machine()
    to_state(m, "decoding")
    assert m.handle(EngineFinished(R, 2.0)) == [] and m.state_of(R) is None


def test_decode_started_by_transfer_task() -> None:
    """The transfer task admits the received request into the engine (DecodeStarted):
    it is decoding before its decode task arrives, which then changes nothing; the
    engine's end forgets it."""
    m = machine()
    to_state(m, "received")
    assert m.handle(DecodeStarted(R, 0.2)) == [] and m.state_of(R) == "decoding"
    assert m.handle(TaskArrived(R, "decode", 0.3)) == [] and m.state_of(R) == "decoding"
    assert m.handle(EngineFinished(R, 1.0)) == [] and m.state_of(R) is None


def test_abort_before_decode_started_takes_it_out_again() -> None:
    """An abort that reaches the worker between the KV's arrival and the transfer task's
    admission into the engine: the admission that follows is undone (engine abort, the
    started future dropped), and the decode task fails."""
    m = machine()
    to_state(m, "received")
    m.handle(Abort(R, 0.2))
    assert m.handle(DecodeStarted(R, 0.3)) == [AbortEngine(R), DropKV(R)]
    assert m.handle(TaskArrived(R, "decode", 0.4)) == [FailTask(R, "aborted")]


def test_decode_without_transfer_task() -> None:
    """A decode task for a request never seen here (its transfer had nothing to move)."""
    m = machine()
    m.handle(TaskArrived(R, "decode", 0.0, peer="P"))
    assert m.state_of(R) == "decoding"


LIVE_STATES = ["looking_up", "admitted", "prefilled", "receiving", "received", "decoding"]


@pytest.mark.parametrize("state", LIVE_STATES)
def test_abort_in_every_state(state: str) -> None:
    """An abort stops the engine and drops kept KV in every state; afterwards nothing
    brings the request back: a start is ignored, a task fails, a lookup that completes
    takes it out of the engine again."""
    m = machine()
    to_state(m, state)
    out = m.handle(Abort(R, 1.0))
    assert out[:2] == [AbortEngine(R), DropKV(R)]
    assert m.state_of(R) == "aborted"
    assert m.handle(Placed(R, 1.1)) == []
    assert m.handle(TaskArrived(R, "decode", 1.2)) == [FailTask(R, "aborted")]
    assert m.handle(LookupDone(R, 1.3)) == [AbortEngine(R), DropKV(R)]
    assert m.handle(Prefilled(R, 1.3)) == [DropKV(R)]
    assert m.state_of(R) == "aborted"


def test_abort_while_lookup_task_waits_fails_it() -> None:
    m = machine()
    m.handle(TaskArrived(R, "lookup", 0.0))
    assert m.handle(Abort(R, 0.1)) == [AbortEngine(R), DropKV(R), FailTask(R, "aborted")]


def test_abort_before_anything_arrived() -> None:
    """The abort comes first (the client gave up at once): the start and the graph that
    arrive later are refused."""
    m = machine()
    assert m.handle(Abort(R, 0.0)) == [AbortEngine(R), DropKV(R)]
    assert m.handle(Placed(R, 0.1)) == []
    assert m.handle(TaskArrived(R, "lookup", 0.2)) == [FailTask(R, "aborted")]


def test_aborted_id_forgotten_after_memory() -> None:
    m = machine()
    m.handle(Abort(R, 0.0))
    m.handle(Tick(30.0))
    assert m.state_of(R) == "aborted"
    m.handle(Tick(61.0))
    assert m.state_of(R) is None
    assert m.handle(Placed(R, 62.0)) == [BeginLookup(R)]


@pytest.mark.parametrize("state", LIVE_STATES)
def test_peer_lost_in_every_state(state: str) -> None:
    """The decode worker of a prefilled request leaves: its kept KV is dropped (nobody
    will pull it). In every other state a lost peer changes nothing here (a decode side
    that waits for the lost prefill worker's KV recomputes it)."""
    m = machine()
    to_state(m, state)
    peer = "P" if state in ("receiving", "received", "decoding") else "D"
    out = m.handle(PeerLost(peer, 1.0))
    if state == "prefilled":
        assert out == [DropKV(R)] and m.state_of(R) is None
    else:
        assert out == [] and m.state_of(R) == state
    assert m.handle(PeerLost("someone-else", 1.0)) == []


@pytest.mark.parametrize("state", LIVE_STATES)
def test_engine_failure_in_every_state(state: str) -> None:
    m = machine()
    to_state(m, state)
    assert m.handle(EngineFailed(R, "boom", 1.0)) == [DropKV(R), FailTask(R, "boom")]
    assert m.state_of(R) is None


def test_graph_never_arrives_deadline() -> None:
    """An early lookup whose graph never arrives is aborted after the deadline; one whose
    task arrived is not."""
    m = machine()
    m.handle(Placed("lonely", 0.0))
    m.handle(LookupDone("lonely", 0.1))
    m.handle(Placed("claimed", 0.0))
    m.handle(TaskArrived("claimed", "lookup", 0.5))
    assert m.handle(Tick(59.0)) == []
    assert m.handle(Tick(61.0)) == [AbortEngine("lonely"), DropKV("lonely")]
    assert m.state_of("lonely") == "aborted" and m.state_of("claimed") == "looking_up"


def test_events_for_unknown_requests_are_ignored() -> None:
    m = machine()
    for ev in (LookupDone(R, 0.0), Prefilled(R, 0.0), HandedOff(R, 0.0), EngineFinished(R, 0.0)):
        assert m.handle(ev) == []
    assert m.state_of(R) is None


# -- early resume: a moved request started on its new decode worker at placement --------
def test_early_resume_path() -> None:
    """ResumePlaced -> receiving (transfer begun) -> received -> decoding (admitted by
    the resume thread) -> the graph's transfer task collects it, its decode task
    attaches -> finished: the worker forgets it."""
    m = machine()
    assert m.handle(ResumePlaced(R, 0.0, "P")) == [BeginTransfer(R)]
    assert m.state_of(R) == "receiving"
    assert m.handle(HandedOff(R, 0.01)) == [] and m.state_of(R) == "received"
    assert m.handle(DecodeStarted(R, 0.02)) == [] and m.state_of(R) == "decoding"
    assert m.handle(TaskArrived(R, "transfer", 0.03, peer="P")) == [CollectTransfer(R)]
    assert m.handle(TaskArrived(R, "decode", 0.04, peer="P")) == []
    assert m.state_of(R) == "decoding"
    assert m.handle(EngineFinished(R, 1.0)) == [] and m.state_of(R) is None


def test_early_resume_transfer_task_arrives_while_receiving() -> None:
    """The graph's transfer task arrives before the early transfer is done: it collects
    (waits for) it; the rest of the path is the same."""
    m = machine()
    m.handle(ResumePlaced(R, 0.0, "P"))
    assert m.handle(TaskArrived(R, "transfer", 0.001, peer="P")) == [CollectTransfer(R)]
    assert m.handle(HandedOff(R, 0.01)) == [] and m.state_of(R) == "received"
    assert m.handle(DecodeStarted(R, 0.02)) == [] and m.state_of(R) == "decoding"


def test_early_resume_repeated_start_and_repeated_task() -> None:
    """A second start message begins nothing; a repeated transfer task (a retry) does
    not collect the early transfer a second time."""
    m = machine()
    m.handle(ResumePlaced(R, 0.0, "P"))
    assert m.handle(ResumePlaced(R, 0.01, "P")) == []
    assert m.handle(TaskArrived(R, "transfer", 0.02)) == [CollectTransfer(R)]
    assert m.handle(TaskArrived(R, "transfer", 0.03)) == []


def test_graph_before_resume_start_does_the_work_itself() -> None:
    """The transfer task arrived first (the start message was lost or late): it does the
    transfer itself, and the late start begins nothing."""
    m = machine()
    assert m.handle(TaskArrived(R, "transfer", 0.0, peer="P")) == []
    assert m.handle(ResumePlaced(R, 0.01, "P")) == []
    assert m.state_of(R) == "receiving"


def test_abort_before_resume_start() -> None:
    """The client aborted before the start arrived: nothing begins and the graph's
    tasks fail."""
    m = machine()
    m.handle(Abort(R, 0.0))
    assert m.handle(ResumePlaced(R, 0.01, "P")) == []
    assert m.handle(TaskArrived(R, "transfer", 0.02)) == [FailTask(R, "aborted")]
    assert m.state_of(R) == "aborted"


@pytest.mark.parametrize("after", ["receiving", "received", "decoding"])
def test_abort_after_resume_start(after: str) -> None:
    """An abort at any point of the early resume stops the engine and forgets the
    futures; when the resume thread admits the request after the abort, the machine
    takes it out again; the graph's tasks that come later fail."""
    m = machine()
    m.handle(ResumePlaced(R, 0.0, "P"))
    if after in ("received", "decoding"):
        m.handle(HandedOff(R, 0.01))
    if after == "decoding":
        m.handle(DecodeStarted(R, 0.02))
    assert m.state_of(R) == after
    assert m.handle(Abort(R, 0.03)) == [AbortEngine(R), DropKV(R)]
    if after != "decoding":
        assert m.handle(HandedOff(R, 0.04)) == []
        assert m.handle(DecodeStarted(R, 0.05)) == [AbortEngine(R), DropKV(R)]
    assert m.handle(TaskArrived(R, "transfer", 0.06)) == [FailTask(R, "aborted")]
    assert m.handle(TaskArrived(R, "decode", 0.07)) == [FailTask(R, "aborted")]


def test_early_resume_graph_never_arrives() -> None:
    """A resume started at placement whose graph never comes (the client went away) is
    aborted at the deadline, even though it is decoding; a later task fails."""
    m = machine()
    m.handle(ResumePlaced(R, 0.0, "P"))
    m.handle(HandedOff(R, 0.01))
    m.handle(DecodeStarted(R, 0.02))
    assert m.handle(Tick(59.0)) == []
    assert m.handle(Tick(61.0)) == [AbortEngine(R), DropKV(R)]
    assert m.handle(TaskArrived(R, "transfer", 62.0)) == [FailTask(R, "aborted")]


def test_early_resume_claimed_by_its_graph_has_no_deadline() -> None:
    """Once its transfer task has come, a resumed request decodes past the deadline."""
    m = machine()
    m.handle(ResumePlaced(R, 0.0, "P"))
    m.handle(TaskArrived(R, "transfer", 0.01))
    m.handle(HandedOff(R, 0.02))
    m.handle(DecodeStarted(R, 0.03))
    assert m.handle(Tick(120.0)) == [] and m.state_of(R) == "decoding"


def test_early_resume_prefill_worker_lost() -> None:
    """The prefill worker whose store the resume fetches from leaves: nothing to drop
    here (the fetch misses and decode recomputes)."""
    m = machine()
    m.handle(ResumePlaced(R, 0.0, "P"))
    assert m.handle(PeerLost("P", 0.01)) == [] and m.state_of(R) == "receiving"


def test_early_resume_engine_failure() -> None:
    """The engine refuses the resumed request: its task fails and its KV is dropped."""
    m = machine()
    m.handle(ResumePlaced(R, 0.0, "P"))
    assert m.handle(EngineFailed(R, "bad", 0.01)) == [DropKV(R), FailTask(R, "bad")]
    assert m.state_of(R) is None


def test_handoff_ready_begins_the_transfer_unless_its_task_came_first():
    """A prefill worker says a request's KV is ready (``HandoffReady``) before its
    transfer task arrived: the transfer begins now and the task, when it comes,
    collects it. When the task came first it does the work and a later notice begins
    nothing, even after the request finished here (until the memory of its transfer
    is forgotten); a notice about an aborted request begins nothing either."""
    m = WorkerRequests(abort_memory_s=60.0)
    assert m.handle(HandoffReady(R, 0.0, "P")) == [BeginTransfer(R)]
    assert m.state_of(R) == "receiving"
    assert m.handle(HandoffReady(R, 0.001, "P")) == []  # repeated
    assert m.handle(TaskArrived(R, "transfer", 0.01, "P")) == [CollectTransfer(R)]

    other = "r-task-first"
    assert m.handle(TaskArrived(other, "transfer", 0.0, "P")) == []
    assert m.handle(HandoffReady(other, 0.001, "P")) == []
    m.handle(HandedOff(other, 0.002))
    m.handle(DecodeStarted(other, 0.003))
    m.handle(TaskArrived(other, "decode", 0.004, "P"))
    m.handle(EngineFinished(other, 0.005))
    assert m.state_of(other) is None
    assert m.handle(HandoffReady(other, 0.006, "P")) == []  # late: finished already
    m.handle(Tick(61.0))
    assert other not in m.transferred

    gone = "r-aborted"
    m.handle(Abort(gone, 0.0))
    assert m.handle(HandoffReady(gone, 0.001, "P")) == []
