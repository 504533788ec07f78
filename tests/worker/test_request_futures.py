"""The engine futures kept between a request's tasks: early lookups and admissions."""

from __future__ import annotations

import concurrent.futures

from mooncake.worker.request_futures import RequestFutures


def test_each_future_is_taken_once() -> None:
    """The lookup task collects the early lookup, the next task the admission, each
    once and with the time it was started."""
    f: RequestFutures[str, str, str] = RequestFutures()
    early: concurrent.futures.Future[str] = concurrent.futures.Future()
    admitted: concurrent.futures.Future[str] = concurrent.futures.Future()
    f.set_early("r1", early, 1.0)
    f.set_started("r1", admitted, 2.0)
    assert f.pending() == ["r1"]
    got = f.take_early("r1")
    assert got is not None and got.future is early and got.since == 1.0
    assert f.take_early("r1") is None
    started = f.take_started("r1")
    assert started is not None and started.future is admitted and started.since == 2.0
    assert f.take_started("r1") is None and f.pending() == []


def test_drop_forgets_the_request_only() -> None:
    """A drop forgets both futures of that request, not another's."""
    f: RequestFutures[str, str, str] = RequestFutures()
    for rid in ("r1", "r2"):
        f.set_early(rid, concurrent.futures.Future(), 0.0)
        f.set_started(rid, concurrent.futures.Future(), 0.0)
    f.drop("r1")
    assert f.take_early("r1") is None and f.take_started("r1") is None
    assert f.pending() == ["r2"]


def test_early_transfer_taken_once_and_dropped() -> None:
    """A moved request's transfer begun at placement is collected once by its transfer
    task; a drop (abort, graph never arrived) forgets it."""
    f: RequestFutures[str, str, str] = RequestFutures()
    fut: concurrent.futures.Future[str] = concurrent.futures.Future()
    f.set_receiving("r1", fut, 3.0)
    f.set_receiving("r2", concurrent.futures.Future(), 3.0)
    assert f.pending() == ["r1", "r2"]
    got = f.take_receiving("r1")
    assert got is not None and got.future is fut and got.since == 3.0
    assert f.take_receiving("r1") is None
    f.drop("r2")
    assert f.take_receiving("r2") is None and f.pending() == []
