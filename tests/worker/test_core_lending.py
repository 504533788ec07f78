"""Core lending (``WorkerConfig.cpu_core_lending``): the policy as a pure function, then
the lender against a real ledger file whose peers are written by the test (no other
processes; ``test_core_ledger.py`` has the two-process test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mooncake.worker.config import WorkerConfig
from mooncake.worker.core_ledger import CoreLedger, Slot
from mooncake.worker.core_lending import CoreLender, cores_to_use

ALL = frozenset(range(8))


def peer(
    owned: set[int],
    busy: bool = False,
    last_busy: float = 0.0,
    borrowed: frozenset[int] = frozenset(),
) -> Slot:
    return Slot(4242, 1, busy, last_busy, frozenset(owned), frozenset(borrowed))


def test_an_idle_peer_lends_its_cores_after_the_engines_own() -> None:
    """Own cores (2, 3) keep their order (thread 0 stays on core 2); an idle peer's
    cores (0, 1) follow, sorted; a busy peer's (4, 5) are not taken."""
    got = cores_to_use((3, 2), [peer({1, 0}), peer({4, 5}, busy=True)], 10.0, 0.0, ALL)
    assert got == (3, 2, 0, 1)


def test_a_peer_idle_for_less_than_idle_s_lends_nothing() -> None:
    """A peer whose last step was 10 ms ago lends with idle_s=0 and 5 ms, not 50 ms."""
    p = [peer({1}, last_busy=9.99)]
    assert cores_to_use((0,), p, 10.0, 0.0, ALL) == (0, 1)
    assert cores_to_use((0,), p, 10.0, 0.005, ALL) == (0, 1)
    assert cores_to_use((0,), p, 10.0, 0.05, ALL) == (0,)


def test_a_core_another_engine_borrows_is_not_lent_twice() -> None:
    """Two busy engines and one idle owner of cores 4 and 5: the other borrower holds
    core 4, so this one gets core 5 only."""
    peers = [peer({4, 5}), peer({2}, busy=True, borrowed={4})]
    assert cores_to_use((0,), peers, 1.0, 0.0, ALL) == (0, 5)


def test_a_core_owned_by_a_busy_and_an_idle_engine_is_not_lent() -> None:
    """Core 1 is owned by two engines (overlapping slices); one has work, so neither
    lends it, while core 2, owned by the idle one alone, is lent."""
    peers = [peer({1, 2}), peer({1}, busy=True)]
    assert cores_to_use((0,), peers, 1.0, 0.0, ALL) == (0, 2)


def test_only_cores_this_process_may_run_on_and_not_its_own() -> None:
    """An idle peer owning cores 0, 1 and 6: core 6 is outside this process's CPUs and
    core 0 is the engine's own, so only core 1 is borrowed."""
    assert cores_to_use((0,), [peer({0, 1, 6})], 1.0, 0.0, frozenset({0, 1, 2})) == (0, 1)


def test_worker_config_checks_the_idle_time() -> None:
    """A negative lending idle time is refused, naming the field; off by default."""
    assert WorkerConfig().cpu_core_lending is False
    with pytest.raises(ValueError, match="cpu_core_lending_idle_s"):
        WorkerConfig(cpu_core_lending_idle_s=-1.0)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Host:
    """A ledger file with peers the test writes, and a lender whose rebinds are recorded."""

    def __init__(self, tmp_path: Path, own: tuple[int, ...] = (0,)) -> None:
        self.path = str(tmp_path / "ledger")
        self.peers = CoreLedger(self.path)
        self.dead: set[int] = set()
        self.clock = Clock()
        self.binds: list[list[int]] = []
        self.lender = CoreLender(
            CoreLedger(self.path),
            own,
            range(8),
            self.binds.append,
            clock=self.clock,
            alive=self.alive,
        )

    def alive(self, pid: int, start_time: int) -> bool:
        return pid not in self.dead

    def add_peer(self, pid: int, owned: set[int], busy: bool = False) -> int:
        with self.peers.locked():
            return self.peers.take(
                Slot(pid, 1, busy, self.clock(), frozenset(owned), frozenset()),
                alive=self.alive,
            )

    def set_peer(self, index: int, **kw: object) -> None:
        with self.peers.locked():
            s = self.peers.read()[index]
            fields = {f: getattr(s, f) for f in Slot.__slots__} | kw  # type: ignore[attr-defined]
            self.peers.write(index, Slot(**fields))  # type: ignore[arg-type]

    def slot(self, index: int) -> Slot | None:
        with self.peers.locked():
            return self.peers.read().get(index)


def test_the_lender_borrows_rebinds_once_and_gives_back_when_the_owner_gets_work(
    tmp_path: Path,
) -> None:
    """Engine on core 0, an idle peer on core 1: the first step borrows core 1 (one
    rebind to [0, 1], the claim in the ledger); further steps change nothing (no
    rebind); once the peer marks itself busy the next step is on core 0 alone (rebind
    to [0], claim dropped). Out of work, the engine marks itself idle in the ledger."""
    h = Host(tmp_path)
    p = h.add_peer(5001, {1})
    assert h.lender.step() == (0, 1)
    assert h.binds == [[0, 1]]
    me = h.slot(h.lender.index)
    assert me is not None and me.busy and me.borrowed == {1} and me.owned == {0}
    for _ in range(5):
        h.clock.t += 0.01
        assert h.lender.step() == (0, 1)
    assert h.binds == [[0, 1]], "an unchanged set is not rebound"
    h.set_peer(p, busy=True)
    assert h.lender.step() == (0,)
    assert h.binds == [[0, 1], [0]]
    me = h.slot(h.lender.index)
    assert me is not None and me.borrowed == frozenset()
    h.lender.idle()
    me = h.slot(h.lender.index)
    assert me is not None and not me.busy and me.last_busy == h.clock()
    r = h.lender.report()
    assert (r["steps"], r["borrowed_steps"], r["rebinds"]) == (7, 6, 2)
    assert r["own"] == [0] and r["cores"] == [0]


def test_running_out_of_work_gives_borrowed_cores_back_at_once(tmp_path: Path) -> None:
    """Two engines (cores 0 and 2) and an idle owner of core 1. The second borrows 0
    and 1 while the first is idle, then goes idle: the first borrows 1 and 2. With both
    busy, the first keeps 1 (its claim) and the second gets nothing. Once the first
    runs out of work it rebinds to its own core and drops its claim, and the second
    borrows 0 and 1 at its next step."""
    h = Host(tmp_path)
    h.add_peer(5001, {1})
    second = CoreLender(
        CoreLedger(h.path), (2,), range(8), lambda cpus: None, clock=h.clock, alive=h.alive
    )
    assert second.step() == (2, 0, 1)
    second.idle()
    assert h.lender.step() == (0, 1, 2)
    assert second.step() == (2,)
    assert h.lender.step() == (0, 1)
    h.lender.idle()
    assert h.binds == [[0, 1, 2], [0, 1], [0]]
    assert second.step() == (2, 0, 1)


def test_a_dead_borrowers_claim_and_a_dead_owners_cores_are_cleared(tmp_path: Path) -> None:
    """A peer that borrowed core 1 and died holds no claim: its slot is cleared at the
    next step and core 1 is borrowed. An owner that died lends nothing afterwards (its
    slot is gone), and the cleared slots are counted."""
    h = Host(tmp_path)
    owner = h.add_peer(5001, {1})
    thief = h.add_peer(5002, {2}, busy=True)
    h.set_peer(thief, borrowed=frozenset({1}))
    assert h.lender.step() == (0,)
    h.dead.add(5002)
    h.clock.t += 2.0  # past the liveness recheck
    assert h.lender.step() == (0, 1)
    assert h.slot(thief) is None
    h.dead.add(5001)
    h.clock.t += 2.0
    assert h.lender.step() == (0,)
    assert h.slot(owner) is None
    assert h.lender.report()["reclaimed"] == 2


def test_an_engine_whose_slot_was_cleared_takes_one_again(tmp_path: Path) -> None:
    """If a peer wrongly cleared this engine's slot, its next step takes a slot again
    instead of writing into one another process may now hold."""
    h = Host(tmp_path)
    with h.peers.locked():
        h.peers.clear(h.lender.index)
    h.add_peer(5001, {1})  # takes the freed slot
    h.lender.step()
    with h.peers.locked():
        slots = h.peers.read()
    mine = [s for s in slots.values() if s.owned == {0}]
    assert len(mine) == 1 and mine[0].busy and len(slots) == 2


def test_close_leaves_the_ledger(tmp_path: Path) -> None:
    """A lender that closes frees its slot."""
    h = Host(tmp_path)
    i = h.lender.index
    h.lender.close()
    assert h.slot(i) is None


def test_an_engine_lends_only_when_cpu_pinned_and_the_ledger_is_sound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine process lends when asked, on CPU, with its threads pinned. A GPU
    engine, an unpinned one (a warning says why) or a file in the ledger's place that is
    not a ledger (a warning) leave the engine serving without lending."""
    from types import SimpleNamespace

    from mooncake.worker.core_lending import LendingSetup
    from mooncake.worker.engine_process import _lender

    def engine(device: str, cpus: list[int] | None) -> Any:
        return SimpleNamespace(config=SimpleNamespace(device=device), bound_cpus=cpus)

    good = LendingSetup(str(tmp_path / "ledger"))
    lender = _lender(engine("cpu", [0]), good, {0, 1})
    assert lender is not None and lender.own == (0,)
    lender.close()
    assert _lender(engine("cpu", [0]), None, {0, 1}) is None
    assert _lender(engine("cuda:0", [0]), good, {0, 1}) is None
    assert _lender(engine("cpu", None), good, {0, 1}) is None
    assert "not pinned" in caplog.text
    (tmp_path / "junk").write_bytes(b"junk")
    assert _lender(engine("cpu", [0]), LendingSetup(str(tmp_path / "junk")), {0, 1}) is None
    assert "not lending cores" in caplog.text
