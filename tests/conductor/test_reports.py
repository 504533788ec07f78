"""A worker's report to the Conductor: one typed form, the same after msgpack."""

from __future__ import annotations

import msgpack

from mooncake.conductor.reports import (
    DecodeStep,
    PrefillDone,
    TransferLogEntry,
    TransferSample,
    WorkerLoadReport,
    WorkerReport,
)
from mooncake.metrics import LookupRecord, RequestRecord


def wire(msg: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = msgpack.unpackb(msgpack.packb(msg, use_bin_type=True), raw=False)
    return out


def full_report() -> WorkerReport:
    return WorkerReport(
        load=WorkerLoadReport(2, 1, 90, 128, 7, 3.5, {"host": (4, 100)}, 4096),
        stored=[b"a" * 16],
        removed=[b"b" * 16],
        prefills=[PrefillDone("r1", 300, 256, 0.12)],
        decode_joined=["r0"],
        transfers=[TransferSample(1 << 20, 0.01)],
        lookups=[LookupRecord(300, {"device": 256}, "below_block", 12)],
        requests=[RequestRecord("r0", 0.2, 1.0, 0.01, 0.1, 0.8, [0.05, 0.06], 300, 16)],
        transfer_log=[TransferLogEntry("tcp", 1 << 20, 0.01)],
        decode_steps=[
            DecodeStep(3, 1200, 0.021),
            DecodeStep(3, 1203, 0.02, 0.001),
            DecodeStep(0, 0, 0.05, None, ((300, 0), (700, 256))),
        ],
        info={"roles": ["prefill"]},
    )


def test_report_round_trip() -> None:
    """Every field of a full report (blocks, prefills, transfers, lookups, finished
    requests, decode steps, load with tiers, the first report's info) survives msgpack
    and parses equal."""
    rep = full_report()
    back = WorkerReport.from_msg(wire(rep.to_msg()))
    assert back.load == rep.load
    assert back.prefills == rep.prefills and back.transfers == rep.transfers
    assert back.transfer_log == rep.transfer_log and back.decode_joined == rep.decode_joined
    assert back.stored == rep.stored and back.removed == rep.removed
    assert back.lookups == rep.lookups and back.info == rep.info
    assert back.decode_steps == rep.decode_steps
    assert [r.request_id for r in back.requests] == ["r0"]
    assert list(back.requests[0].itl_s) == [0.05, 0.06]


def test_load_message_keeps_its_keys() -> None:
    """The load's message is the dict the Conductor's stats have always shown per worker."""
    msg = full_report().load.to_msg()
    assert set(msg) == {
        "running",
        "waiting",
        "free_blocks",
        "num_blocks",
        "cached_blocks",
        "busy_seconds",
        "tiers",
        "host_bytes",
    }
    assert msg["tiers"] == {"host": [4, 100]}


def test_later_reports_omit_info() -> None:
    """Without info (every report after the first), the message has no ``info`` key."""
    rep = WorkerReport(load=WorkerLoadReport())
    msg = rep.to_msg()
    assert "info" not in msg
    assert WorkerReport.from_msg(wire(msg)).info is None


def test_decode_steps_of_an_older_worker_parse() -> None:
    """A worker that sends decode steps as [sequences, KV tokens, seconds] (before the
    loop gap and prompt chunks were reported) parses with no gap and no chunks."""
    back = WorkerReport.from_msg(wire({"decode_steps": [[2, 500, 0.01]]}))
    assert back.decode_steps == [DecodeStep(2, 500, 0.01, None, ())]
