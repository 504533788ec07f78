"""``HandoffNotices``: one call in flight per decode worker; notices that come meanwhile
go together in the next call."""

from __future__ import annotations

import asyncio
import threading

from mooncake.worker.handoff_notices import HandoffNotices


def test_notices_to_one_worker_go_one_call_at_a_time_together():
    """Three notices for worker A while its first call is in flight go in one second
    call; B's go in a call of their own, alongside; a failed call loses its notices but
    the next notice starts a new call. Notices may come from another thread."""

    async def main() -> None:
        sent: list[tuple[str, list[int]]] = []
        gate = asyncio.Event()

        async def send(dest: str, batch: list[int]) -> None:
            sent.append((dest, list(batch)))
            if dest == "A" and len(sent) == 1:
                await gate.wait()
            if dest == "C":
                raise OSError("gone")

        notices: HandoffNotices[int] = HandoffNotices(asyncio.get_running_loop(), send)
        notices.offer("A", 1)
        await asyncio.sleep(0.01)
        t = threading.Thread(target=lambda: [notices.offer("A", i) for i in (2, 3, 4)])
        t.start()
        t.join()
        notices.offer("B", 10)
        await asyncio.sleep(0.01)
        assert sent == [("A", [1]), ("B", [10])]
        gate.set()
        await asyncio.sleep(0.01)
        assert sent[2:] == [("A", [2, 3, 4])]
        notices.offer("C", 5)
        await asyncio.sleep(0.01)
        notices.offer("C", 6)
        await asyncio.sleep(0.01)
        assert sent[3:] == [("C", [5]), ("C", [6])]
        assert notices.calls == 5

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_call_that_never_answers_is_given_up():
    """Worker A never answers its first call: after the call's timeout the notices that
    came meanwhile still go to A in a call of their own (nothing waits for ever)."""

    async def main() -> None:
        sent: list[tuple[str, list[int]]] = []

        async def send(dest: str, batch: list[int]) -> None:
            sent.append((dest, list(batch)))
            if len(sent) == 1:
                await asyncio.Event().wait()  # never answers

        notices: HandoffNotices[int] = HandoffNotices(
            asyncio.get_running_loop(), send, timeout_s=0.05
        )
        notices.offer("A", 1)
        await asyncio.sleep(0.01)
        notices.offer("A", 2)
        await asyncio.sleep(0.01)
        assert sent == [("A", [1])]
        await asyncio.sleep(0.2)
        assert sent == [("A", [1]), ("A", [2])]

    asyncio.run(asyncio.wait_for(main(), 10))
