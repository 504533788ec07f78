"""The Conductor's scheduler plugin speaks the typed messages: worker reports in,
placements out, the early-lookup start to the prefill worker (a fake scheduler, no Dask
cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from mooncake.conductor import ConductorConfig
from mooncake.conductor.messages import (
    RESUME_OP,
    START_OP,
    PlacementInfo,
    PlaceRefused,
    PlaceRequest,
    parse_place_reply,
)
from mooncake.conductor.plugin import ConductorPlugin
from mooncake.conductor.reports import REPORT_OP, PrefillDone, WorkerLoadReport, WorkerReport


class _Stream:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.interval = 0.005

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


class _Scheduler:
    def __init__(self) -> None:
        self.plugins: dict[str, Any] = {}
        self.handlers: dict[str, Any] = {}
        self.stream_handlers: dict[str, Any] = {}
        self.stream_comms = {"P": _Stream(), "D": _Stream()}
        self.client_comms: dict[str, Any] = {}
        self.tasks: dict[str, Any] = {}
        self.events: list[tuple[str, Any]] = []

    def log_event(self, topic: str, msg: Any) -> None:
        self.events.append((topic, msg))


def wire(msg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = msgpack.unpackb(msgpack.packb(msg, use_bin_type=True), raw=False)
    return out


def info(role: str) -> dict[str, Any]:
    return {
        "roles": [role],
        "num_layers": 8,
        "hidden_size": 512,
        "num_params": 5.7e7,
        "bytes_per_param": 4.0,
        "kv_bytes_per_token": 8192,
        "kv_capacity_tokens": 100_000,
        "model_name": "tiny",
    }


def load() -> WorkerLoadReport:
    return WorkerLoadReport(running=0, waiting=0, free_blocks=64, num_blocks=64)


def started() -> tuple[ConductorPlugin, _Scheduler]:
    s = _Scheduler()
    plugin = ConductorPlugin(ConductorConfig(block_size=16))
    asyncio.run(plugin.start(s))  # type: ignore[arg-type]
    for w, role in (("P", "prefill"), ("D", "decode")):
        # As the scheduler calls a stream handler: the message's fields, plus the worker.
        msg = wire({"op": REPORT_OP, "report": WorkerReport(load=load(), info=info(role)).to_msg()})
        s.stream_handlers[msg.pop("op")](worker=w, **msg)
    return plugin, s


def test_reports_then_placement_and_early_start() -> None:
    """Two workers report (the first report with their info); a request is placed on
    them, answered as a ``PlacementInfo``, and its prefill worker gets the start message
    with the same placement."""
    plugin, s = started()
    assert set(plugin.worker_info) == {"P", "D"}
    req = PlaceRequest("r1", 40, [b"k" * 16, b"j" * 16], 8, "c", spec={"the": "spec"})
    reply = parse_place_reply(wire(plugin.handle_place(wire(req.to_msg()))))
    assert isinstance(reply, PlacementInfo)
    assert (reply.prefill, reply.decode) == ("P", "D")
    (start,) = s.stream_comms["P"].sent
    assert start["op"] == START_OP and start["spec"] == {"the": "spec"}
    assert PlacementInfo.from_msg(start["placement"]) == reply
    assert not s.stream_comms["D"].sent


def test_resumed_request_has_no_early_start() -> None:
    """A resumed request is placed without a start message to any worker."""
    plugin, s = started()
    req = PlaceRequest("r1~1", 40, [b"k" * 16], 8, "c", resume=True)
    assert isinstance(parse_place_reply(plugin.handle_place(req.to_msg())), PlacementInfo)
    assert not s.stream_comms["P"].sent


def test_resumed_request_with_its_tokens_starts_on_its_decode_worker() -> None:
    """A resumed request placed with what it resumes from (the client's ``ResumeStart``)
    is passed on to the decode worker chosen, with the same placement and the prefill
    worker's store (its published ``peer``), and to no other worker: no early lookup, no
    KV stream."""
    plugin, s = started()
    plugin.worker_info["P"]["peer"] = {"host_id": "h", "tcp": ["127.0.0.1", 1]}
    req = PlaceRequest("r1~1", 40, [b"k" * 16], 8, "c", resume=True, spec={"the": "start"})
    reply = parse_place_reply(wire(plugin.handle_place(wire(req.to_msg()))))
    assert isinstance(reply, PlacementInfo) and reply.decode == "D"
    assert not s.stream_comms["P"].sent
    (msg,) = [wire(m) for m in s.stream_comms["D"].sent]
    assert msg["op"] == RESUME_OP and msg["start"] == {"the": "start"}
    assert PlacementInfo.from_msg(msg["placement"]) == reply
    assert msg["peer"] == {"host_id": "h", "tcp": ["127.0.0.1", 1]}


def test_place_many_answers_each_in_order() -> None:
    """Several placements in one call (a client's burst of moves): one answer each, in
    order, the same as one call each (a refusal among them stays its own)."""
    plugin, _ = started()
    reqs = [
        PlaceRequest("a~1", 40, [b"k" * 16], 8, "c", resume=True).to_msg(),
        PlaceRequest("b~1", 40, [b"k" * 16], 8, "c", resume=True, exclude=("D",)).to_msg(),
        PlaceRequest("c~1", 40, [b"k" * 16], 8, "c", resume=True).to_msg(),
    ]
    replies = [parse_place_reply(r) for r in wire({"r": plugin.handle_place_many(reqs)})["r"]]
    assert isinstance(replies[0], PlacementInfo) and replies[0].decode == "D"
    assert isinstance(replies[1], PlaceRefused) and replies[1].unavailable
    assert isinstance(replies[2], PlacementInfo)


def test_move_excludes_the_lost_worker_before_its_removal() -> None:
    """The only decode worker D is still in the scheduler when a client, having seen it
    die, asks to move a request off it: the placement names D as excluded and is refused
    as an outage (no decode worker left), while D stays known; without the exclusion the
    same request is placed on D."""
    plugin, _ = started()
    moved = PlaceRequest("r1~1", 40, [b"k" * 16], 8, "c", resume=True, exclude=("D",))
    reply = parse_place_reply(plugin.handle_place(wire(moved.to_msg())))
    assert isinstance(reply, PlaceRefused) and reply.unavailable
    assert "D" in plugin.worker_info
    again = PlaceRequest("r1~2", 40, [b"k" * 16], 8, "c", resume=True)
    placed = parse_place_reply(plugin.handle_place(wire(again.to_msg())))
    assert isinstance(placed, PlacementInfo) and placed.decode == "D"


def test_no_workers_is_an_outage() -> None:
    """Before any worker reported, a placement is refused as unavailable."""
    plugin = ConductorPlugin(ConductorConfig(block_size=16))
    asyncio.run(plugin.start(_Scheduler()))  # type: ignore[arg-type]
    reply = parse_place_reply(plugin.handle_place(PlaceRequest("r1", 4).to_msg()))
    assert isinstance(reply, PlaceRefused) and reply.unavailable


def test_report_feeds_the_conductor_and_stats() -> None:
    """A later report's prefill and load reach the Conductor; the stats show the load in
    its message form."""
    plugin, _ = started()
    rep = WorkerReport(
        load=WorkerLoadReport(running=1, waiting=2, free_blocks=60, num_blocks=64),
        prefills=[PrefillDone("r9", 100, 0, 0.05)],
    )
    plugin.handle_report("P", wire(rep.to_msg()))
    assert plugin.handle_stats()["workers"]["P"]["load"]["waiting"] == 2
    assert plugin._timings["r9"]["prefill_s"] == 0.05
