"""``benchmarks/store_bench.py``'s CPU accounting of the TCP rows: readings of this
process and of another one, and the per-GB table built from them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import store_bench  # noqa: E402

SPIN_THEN_WAIT = """
import sys, time
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
sys.stdin.read()
"""


def test_proc_cpu_counts_this_process_and_a_busy_child() -> None:
    """A child that spins for ~0.3 s shows at least 0.2 s of total CPU in its reading,
    and this process's own reading grows while it computes."""
    child = subprocess.Popen([sys.executable, "-c", SPIN_THEN_WAIT], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while store_bench.proc_cpu(child.pid)[2] < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        user, sys_, total = store_bench.proc_cpu(child.pid)
        assert total >= 0.2 and user + sys_ >= 0
    finally:
        child.communicate(b"", timeout=10)
    before = store_bench.proc_cpu()[2]
    sum(i * i for i in range(300_000))
    assert store_bench.proc_cpu()[2] > before


def test_cpu_table_gives_per_gb_totals_and_the_ratio_to_raw(capsys) -> None:
    """Two reps of 0.5 GB: the raw socket used 0.2 s receiving and 0.1 s sending per rep
    (0.6 s/GB), the fetch a third more; the table shows both totals and 1.33."""
    used = {
        "raw socket": [(0.05, 0.15, 0.2, 0.05, 0.05, 0.1)] * 2,
        "TCP fetch": [(0.1, 0.15, 0.25, 0.05, 0.1, 0.15)] * 2,
    }
    store_bench.print_cpu(used, int(0.5e9))
    out = capsys.readouterr().out
    raw = next(line for line in out.splitlines() if line.startswith("| raw socket"))
    fetch = next(line for line in out.splitlines() if line.startswith("| TCP fetch"))
    assert "| 0.600 | 1.00 |" in raw
    assert "0.500 (0.200 / 0.300)" in fetch and "| 0.800 | 1.33 |" in fetch
