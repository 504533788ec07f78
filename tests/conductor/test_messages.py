"""The placement messages: each one typed form, the same after a trip through msgpack."""

from __future__ import annotations

import msgpack
import pytest

from mooncake.conductor.messages import (
    START_OP,
    PlacementInfo,
    PlaceRefused,
    PlaceRequest,
    parse_place_reply,
    start_lookup_msg,
)


def wire(msg: dict[str, object]) -> dict[str, object]:
    """What the other side of a Dask comm receives (msgpack: tuples become lists)."""
    out: dict[str, object] = msgpack.unpackb(msgpack.packb(msg, use_bin_type=True), raw=False)
    return out


def test_placement_round_trip() -> None:
    """An admitted placement, with and without a prefix fetch, parses back equal."""
    for p in (PlacementInfo("P", "D"), PlacementInfo("P", "D", "P2", 3, 0.25)):
        reply = parse_place_reply(wire(p.to_msg()))
        assert reply == p and isinstance(reply, PlacementInfo)


def test_refusal_round_trip() -> None:
    """An overload refusal and an outage (no worker of a role) parse back as refusals."""
    for r in (PlaceRefused("ttft_slo: 3.1 s", 0.5), PlaceRefused("no decode worker", 1.0, True)):
        reply = parse_place_reply(wire(r.to_msg()))
        assert reply == r and isinstance(reply, PlaceRefused)


def test_place_request_round_trip() -> None:
    """A first placement carries the request for the early lookup; a resumed one does not
    (and says so); both parse back equal and give the policy's ``RequestInfo``."""
    first = PlaceRequest("r1", 40, [b"k" * 16, b"j" * 16], 32, "client-1", spec={"x": 1})
    msg = wire(first.to_msg())
    assert msg["start"] == "prefill" and "resume" not in msg
    assert PlaceRequest.from_msg(msg) == first
    resumed = PlaceRequest("r1~1", 40, [b"k" * 16], 32, "client-1", resume=True)
    msg = wire(resumed.to_msg())
    assert "spec" not in msg and msg["resume"] is True
    assert PlaceRequest.from_msg(msg) == resumed
    info = first.info()
    assert (info.request_id, info.prompt_len, list(info.block_keys), info.output_len) == (
        "r1",
        40,
        [b"k" * 16, b"j" * 16],
        32,
    )


def test_place_request_names_the_lost_workers() -> None:
    """A move's placement names the workers it was lost on; they survive the wire (a
    list on msgpack, a tuple again when parsed), and a request without any sends none."""
    moved = PlaceRequest("r1~1", 40, [b"k" * 16], 32, "c", resume=True, exclude=("tcp://D1",))
    msg = wire(moved.to_msg())
    assert msg["exclude"] == ["tcp://D1"]
    assert PlaceRequest.from_msg(msg) == moved
    assert "exclude" not in PlaceRequest("r2", 4).to_msg()


def test_start_message_carries_the_placement() -> None:
    """The early-lookup start names its stream operation and the placement in its one form."""
    p = PlacementInfo("P", "D", None, 0, 0.1)
    msg = start_lookup_msg({"spec": 1}, p, "generate")
    assert msg["op"] == START_OP and msg["start"] == "generate"
    assert isinstance(msg["placement"], dict)
    assert PlacementInfo.from_msg(wire(msg)["placement"]) == p  # type: ignore[arg-type]


def test_missing_field_is_an_error() -> None:
    """A placement without its decode worker is refused, not half-built."""
    with pytest.raises(KeyError, match="decode"):
        PlacementInfo.from_msg({"prefill": "P"})
