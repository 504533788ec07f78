"""What core lending (``WorkerConfig.cpu_core_lending``) costs an engine per step.

1. The ledger check every step takes (lock, read the slots, write its own) with
   ``--peers`` idle peers in the ledger, when the set of cores does not change (no
   rebind: the steady state).
2. Re-pinning torch's thread pool when the set changes: growing from the first CPU to
   the first two and shrinking back, each followed by a small matmul (the pool's
   threads wake on the next parallel region, which is where a grow pays).
3. The same matmul on one thread and on two, for scale.

Single process, no cluster; uses the first two CPUs this process may run on. Medians
over ``--reps``. A busy machine inflates (2) and (3), which wait for a core::

    python benchmarks/core_lending_cost.py [--reps 2000] [--peers 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mooncake.engine.thread_bind import bind_threads
from mooncake.worker.core_ledger import CoreLedger, Slot
from mooncake.worker.core_lending import CoreLender


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--peers", type=int, default=1, help="idle peers in the ledger")
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs two CPUs")
    a, b = cpus[0], cpus[1]
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "ledger")
        peers = CoreLedger(path)
        with peers.locked():
            for i in range(args.peers):
                own = frozenset({b}) if i == 0 else frozenset({cpus[(i + 1) % len(cpus)]})
                peers.take(Slot(os.getpid(), 0, False, 0.0, own, frozenset()))
        lender = CoreLender(CoreLedger(path), (a,), cpus, lambda c: None)
        lender.step()
        samples = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            lender.step()
            samples.append(time.perf_counter() - t0)
        print(
            f"ledger check per step ({args.peers} idle peer(s), set unchanged): "
            f"{_median_us(samples):.1f} us median, p90 "
            f"{statistics.quantiles(samples, n=10)[-1] * 1e6:.1f} us"
        )
        lender.close()
        peers.close()

    x = torch.randn(64, 512)
    w = torch.randn(512, 512)
    bind_threads([a])
    grow, shrink, mm1, mm2 = [], [], [], []
    for _ in range(max(50, args.reps // 20)):
        t0 = time.perf_counter()
        bind_threads([a, b])
        t1 = time.perf_counter()
        x @ w
        t2 = time.perf_counter()
        bind_threads([a])
        t3 = time.perf_counter()
        x @ w
        t4 = time.perf_counter()
        grow.append(t1 - t0)
        mm2.append(t2 - t1)
        shrink.append(t3 - t2)
        mm1.append(t4 - t3)
    print(f"rebind grow 1 -> 2 threads: {_median_us(grow):.1f} us median")
    print(f"rebind shrink 2 -> 1 thread: {_median_us(shrink):.1f} us median")
    print(
        f"64x512x512 matmul right after: 2 threads {_median_us(mm2):.1f} us, "
        f"1 thread {_median_us(mm1):.1f} us"
    )


if __name__ == "__main__":
    main()
