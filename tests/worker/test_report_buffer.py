"""What a worker gathers between two reports to the Conductor."""

from __future__ import annotations

from mooncake.conductor.reports import PrefillDone, TransferLogEntry, WorkerLoadReport
from mooncake.metrics import LookupRecord, RequestRecord
from mooncake.worker.report_buffer import ReportBuffer


def test_drain_takes_everything_once() -> None:
    """Recorded items come out in order in the next report, typed, and not again."""
    b = ReportBuffer()
    b.prefill("r1", 100, 64, 0.1)
    b.prefill("r2", 50, 0, 0.2)
    b.decode_joined("r0")
    b.transfer(1000, 0.001)
    b.transfer_log("tcp", 1000, 0.001)
    b.lookup(LookupRecord(100))
    b.request(RequestRecord("r0"))
    rep = b.drain(WorkerLoadReport(running=1), [b"k"], [], {"roles": ["prefill"]})
    assert rep.prefills == [PrefillDone("r1", 100, 64, 0.1), PrefillDone("r2", 50, 0, 0.2)]
    assert rep.decode_joined == ["r0"]
    assert rep.transfer_log == [TransferLogEntry("tcp", 1000, 0.001)]
    assert len(rep.transfers) == len(rep.lookups) == len(rep.requests) == 1
    assert rep.load.running == 1 and rep.stored == [b"k"] and rep.info == {"roles": ["prefill"]}
    again = b.drain(WorkerLoadReport(), [], [])
    assert not (again.prefills or again.decode_joined or again.transfers or again.requests)
    assert again.info is None


def test_pending_says_how_soon_a_report_is_needed() -> None:
    """What placement depends on is urgent, metrics records are slow, nothing is none;
    a drain empties it again."""
    b = ReportBuffer()
    assert b.pending() == "none"
    b.lookup(LookupRecord(100))
    assert b.pending() == "slow"
    b.decode_joined("r1")
    assert b.pending() == "urgent"
    b.drain(WorkerLoadReport(), [], [])
    assert b.pending() == "none"
