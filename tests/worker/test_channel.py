"""The worker <-> engine process channel: large buffers out of band, order kept, a
closed end is reported."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from mooncake.worker.channel import INBAND_MAX, Channel, ChannelClosed


def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a), Channel(b)


def test_round_trip_small_and_large_buffers_in_order() -> None:
    a, b = _pair()
    big = np.arange(3 * INBAND_MAX, dtype=np.float32).reshape(3, -1)  # out of band
    small = np.arange(10, dtype=np.int64)  # in band
    msgs = [("x", 1), {"big": big, "small": small, "nested": [big[1], "s"]}, None]
    # A sender thread: the socket buffer holds less than the big message.
    t = threading.Thread(target=lambda: [a.send(m) for m in msgs])
    t.start()
    got = [b.recv() for _ in msgs]
    t.join()
    assert got[0] == ("x", 1) and got[2] is None
    np.testing.assert_array_equal(got[1]["big"], big)
    np.testing.assert_array_equal(got[1]["small"], small)
    np.testing.assert_array_equal(got[1]["nested"][0], big[1])
    assert got[1]["big"].flags.writeable  # lands in a buffer the receiver owns


def test_poll_and_closed_end() -> None:
    a, b = _pair()
    assert not b.poll(0.0)
    a.send("hello")
    assert b.poll(1.0) and b.recv() == "hello"
    a.close()
    with pytest.raises(ChannelClosed):
        b.recv()
