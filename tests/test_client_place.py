"""Placement calls coalesced by ``PlaceBatcher``, without a cluster (a stand-in call)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mooncake.client_place import PlaceBatcher


class _Scheduler:
    """Answers each request with its id after ``delay``; records the batches."""

    def __init__(self, delay: float = 0.02, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.batches: list[list[str]] = []
        self.in_flight = self.most_in_flight = 0

    async def place_many(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batches.append([r["request_id"] for r in requests])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                raise OSError("scheduler gone")
            return [{"placed": r["request_id"]} for r in requests]
        finally:
            self.in_flight -= 1


def test_a_burst_goes_in_few_calls_and_each_gets_its_reply() -> None:
    """Twelve placements asked at once (a lost worker's requests) with one call allowed
    in flight: the first call takes those waiting then, the next all that came while it
    ran; every caller gets its own reply, and at most one call is in flight."""

    async def main() -> tuple[list[dict[str, Any]], _Scheduler, int]:
        s = _Scheduler()
        b = PlaceBatcher(s.place_many, 1)
        first = [asyncio.ensure_future(b.ask({"request_id": f"r{i}"})) for i in range(4)]
        await asyncio.sleep(0.005)  # the first call is in flight
        rest = [asyncio.ensure_future(b.ask({"request_id": f"r{i}"})) for i in range(4, 12)]
        replies = await asyncio.gather(*first, *rest)
        return list(replies), s, b.calls

    replies, s, calls = asyncio.run(main())
    assert replies == [{"placed": f"r{i}"} for i in range(12)]
    assert s.batches == [[f"r{i}" for i in range(4)], [f"r{i}" for i in range(4, 12)]]
    assert calls == 2 and s.most_in_flight == 1


def test_a_lone_request_goes_at_once() -> None:
    """A single placement is not held back to wait for others: one call, one request."""

    async def main() -> _Scheduler:
        s = _Scheduler(delay=0.0)
        b = PlaceBatcher(s.place_many, 4)
        assert await b.ask({"request_id": "a"}) == {"placed": "a"}
        assert await b.ask({"request_id": "b"}) == {"placed": "b"}
        return s

    assert asyncio.run(main()).batches == [["a"], ["b"]]


def test_a_failed_call_fails_each_of_its_requests() -> None:
    """The call breaks (the scheduler went away): every request of it gets the error,
    and a later request makes a new call."""

    async def main() -> tuple[list[Any], _Scheduler]:
        s = _Scheduler(fail=True)
        b = PlaceBatcher(s.place_many, 2)
        got = await asyncio.gather(
            *(b.ask({"request_id": f"r{i}"}) for i in range(3)), return_exceptions=True
        )
        s.fail = False
        got.append(await b.ask({"request_id": "later"}))
        return got, s

    got, s = asyncio.run(main())
    assert all(isinstance(g, OSError) for g in got[:3]) and got[3] == {"placed": "later"}
    assert len(s.batches) == 2


@pytest.mark.parametrize("n", [1, 5])
def test_reply_count_mismatch_is_an_error(n: int) -> None:
    """A reply list of the wrong length fails the requests instead of mismatching them."""

    async def bad(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return []

    async def main() -> list[Any]:
        b = PlaceBatcher(bad, 1)
        return list(
            await asyncio.gather(
                *(b.ask({"request_id": str(i)}) for i in range(n)), return_exceptions=True
            )
        )

    assert all(isinstance(g, RuntimeError) for g in asyncio.run(main()))
