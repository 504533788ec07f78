"""Benchmark: replay the full conversation trace once, one policy, pinned to one core.

Usage: python benchmarks/sim_replay.py [--trace PATH] [--policy NAME] [--rate-scale X]
Prints the replay's wall time and the CPU time it used, in seconds (trace loading
excluded and reported apart). On a shared machine the CPU time is the number to
compare: it is what the replay costs on one otherwise idle core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mooncake.sim.cli import POLICIES  # noqa: E402
from mooncake.sim.config import SimConfig  # noqa: E402
from mooncake.sim.engine import simulate  # noqa: E402
from mooncake.sim.trace import load_trace, scale_rate  # noqa: E402

# The FAST'25 trace is public but not shipped: docs/paper-reproduction.md says how to
# fetch it into traces/ (or point MOONCAKE_TRACES at the folder that holds it).
DEFAULT_TRACE = (
    Path(os.environ.get("MOONCAKE_TRACES") or ROOT / "traces") / "conversation_trace.jsonl"
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--policy", default="mooncake", choices=POLICIES)
    p.add_argument("--rate-scale", type=float, default=1.0)
    p.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/sim-replay-POLICY.json for docs/performance.md",
    )
    args = p.parse_args()
    if not args.trace.exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    from mooncake.sim.cli import build_config, sim_args

    config: SimConfig = build_config(sim_args(), args.policy)
    t0 = time.perf_counter()
    reqs = scale_rate(load_trace(args.trace), args.rate_scale)
    load_s = time.perf_counter() - t0
    cpu0 = time.process_time()
    res = simulate(config, reqs)
    cpu_s = time.process_time() - cpu0
    print(
        f"sim_replay policy={args.policy} rate_scale={args.rate_scale:g} "
        f"requests={len(reqs)} load={load_s:.2f}s replay={res.wall_s:.2f}s cpu={cpu_s:.2f}s"
    )
    if args.save_results:
        import result_file as rf

        rf.save(
            f"sim-replay-{args.policy}",
            f"Simulator replay speed ({args.policy})",
            [
                rf.claim(
                    f"{len(reqs):,} requests, policy {args.policy}, CPU time",
                    cpu_s,
                    "s",
                    "target",
                    30.0,
                    target="≤ 1.0",
                ),
                rf.claim("same, wall time", res.wall_s, "s"),
            ],
            notes=(
                "One replay pinned to one core, trace loading excluded; "
                "the CPU time is the figure for one idle core."
            ),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
