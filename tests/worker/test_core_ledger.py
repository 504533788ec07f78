"""The host-wide core ledger (``mooncake.worker.core_ledger``): its file, liveness, and
core lending between two real processes."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mooncake.worker.core_ledger import (
    NUM_SLOTS,
    CoreLedger,
    Slot,
    ledger_path,
    process_alive,
    process_start_time,
)
from mooncake.worker.core_lending import CoreLender


def _slot(
    pid: int, owned: set[int], busy: bool = False, borrowed: frozenset[int] = frozenset()
) -> Slot:
    start = process_start_time(pid) or 0
    return Slot(pid, start, busy, 12.5, frozenset(owned), frozenset(borrowed))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=30)
    return p.pid


def test_a_slot_reads_back_as_written(tmp_path: Path) -> None:
    """Every field of a slot survives the file, CPU 1023 included, and a second handle
    on the same path (another process would open it so) reads it too."""
    a = CoreLedger(str(tmp_path / "l"))
    s = Slot(os.getpid(), 77, True, 3.25, frozenset({0, 5, 1023}), frozenset({64}))
    with a.locked():
        i = a.take(s)
    b = CoreLedger(str(tmp_path / "l"))
    with b.locked():
        assert b.read() == {i: s}
    with a.locked():
        a.clear(i)
    with b.locked():
        assert b.read() == {}
    with pytest.raises(ValueError, match="cpu_core_lending"):
        a.write(0, Slot(1, 1, False, 0.0, frozenset({1024}), frozenset()))
    a.close()
    b.close()


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    """A file of another size or another magic raises ValueError naming the setting."""
    (tmp_path / "x").write_bytes(b"hello")
    with pytest.raises(ValueError, match="cpu_core_lending"):
        CoreLedger(str(tmp_path / "x"))
    CoreLedger(str(tmp_path / "y")).close()
    data = bytearray((tmp_path / "y").read_bytes())
    data[:8] = b"SOMEELSE"
    (tmp_path / "y").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cpu_core_lending"):
        CoreLedger(str(tmp_path / "y"))


def test_a_dead_process_slot_is_taken_and_a_full_ledger_says_so(tmp_path: Path) -> None:
    """Slots of live processes are kept; one whose process exited is reused; with every
    slot live, taking one raises RuntimeError. A pid alive with another start time (a
    reused pid) counts as dead."""
    led = CoreLedger(str(tmp_path / "l"))
    me = os.getpid()
    dead = _dead_pid()
    assert not process_alive(dead, 0)
    assert process_alive(me, process_start_time(me) or 0)
    assert not process_alive(me, (process_start_time(me) or 0) + 1)
    with led.locked():
        first = led.take(_slot(dead, {1}))
        assert led.take(_slot(me, {2})) == first  # the dead process's slot
        for _ in range(NUM_SLOTS - 1):
            led.take(_slot(me, {3}))
        with pytest.raises(RuntimeError, match="in use"):
            led.take(_slot(me, {4}))
    led.close()
    assert ledger_path("/dev/shm") == f"/dev/shm/mooncake-cores-{os.getuid()}"


CHILD = r"""
import json, sys
from mooncake.worker.core_ledger import CoreLedger
from mooncake.worker.core_lending import CoreLender
path, own, real = sys.argv[1], [int(c) for c in sys.argv[2].split(",")], sys.argv[3] == "1"
if real:
    import torch
    from mooncake.engine.thread_bind import bind_threads
    bind_threads(own)
    rebind = bind_threads
    threads = torch.get_num_threads
else:
    rebind = lambda cpus: None
    threads = lambda: 0
lender = CoreLender(CoreLedger(path), own, range(1024), rebind)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "step":
        cores = lender.step()
    elif cmd == "idle":
        lender.idle()
        cores = lender.cores
    else:
        break
    print(json.dumps({"cores": list(cores), "threads": threads()}), flush=True)
lender.close()
"""


class Child:
    """A process with a lender on ``own``; ``real``: it re-pins torch's threads."""

    def __init__(self, path: str, own: int, real: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, str(own), "1" if real else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._read(120)["ready"]

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the child did not answer in time"
        line = self.proc.stdout.readline()
        assert line, f"the child exited with {self.proc.wait(timeout=10)}"
        out: dict[str, Any] = json.loads(line)
        return out

    def __call__(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.mark.slow
def test_two_processes_lend_and_give_back(tmp_path: Path) -> None:
    """A borrower process (its torch threads re-pinned for real, own CPU a) and a
    lender process (own CPU b), sharing a ledger. With the lender idle the borrower's
    step runs on a and b with 2 threads; once the lender steps (busy), the borrower's
    next step is on a alone with 1 thread; idle again, it lends again. Killed while
    it borrows b, the borrower keeps no claim: an engine in this process on a borrows
    b at its first step, and the dead process's slot is gone from the ledger."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    a, b = cpus[0], cpus[1]
    path = str(tmp_path / "ledger")
    lender = Child(path, b, real=False)
    borrower = Child(path, a, real=True)
    try:
        assert borrower("step") == {"cores": [a, b], "threads": 2}
        assert lender("step")["cores"] == [b]  # it has work now
        assert borrower("step") == {"cores": [a], "threads": 1}
        lender("idle")
        assert borrower("step") == {"cores": [a, b], "threads": 2}
        os.kill(borrower.proc.pid, signal.SIGKILL)
        borrower.proc.wait(timeout=30)
        here = CoreLender(CoreLedger(path), (a,), cpus, lambda c: None)
        try:
            assert here.step() == (a, b)
            with here.ledger.locked():
                pids = {s.pid for s in here.ledger.read().values()}
            assert pids == {lender.proc.pid, os.getpid()}
        finally:
            here.close()
    finally:
        t0 = time.monotonic()
        borrower.close()
        lender.close()
        assert time.monotonic() - t0 < 60
