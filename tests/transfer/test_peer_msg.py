"""A worker's store peer as it travels in the worker's info."""

from __future__ import annotations

import msgpack

from mooncake.transfer import Peer


def test_peer_round_trip() -> None:
    """A peer with a TCP address, one without, and no peer at all survive msgpack."""
    for p in (Peer("h/1/2", ("127.0.0.1", 4000), "/dev/shm/x", True), Peer("h/1/2")):
        msg = msgpack.unpackb(msgpack.packb(p.to_msg()), raw=False)
        assert Peer.from_msg(msg) == p
    assert Peer.from_msg(None) is None
