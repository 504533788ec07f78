"""The Conductor at scale: decision time per request and memory, from a simulator replay.

    # the FAST'25 trace (docs/paper-reproduction.md):
    python benchmarks/conductor_scale.py --trace traces/conversation_trace.jsonl
    python benchmarks/conductor_scale.py --trace T --instances 16,64,128 --rate-scale 8

For each instance count N the simulator replays the trace with N prefill + N decode
instances at ``--rate-scale`` times the trace's rate (``--rate-per-16`` scales it
further by N/16, so every size sees the load per instance of the 16-instance run), with
the same Conductor code the live scheduler plugin runs. Every ``Conductor.place`` call
(prefix match over the global block index, Algorithm 1 over every prefill instance, the
decode choice, admission) is timed with ``perf_counter``; the table gives its p50, p99
and max, and the Conductor's memory (tracemalloc, allocated by the Conductor's own code
and still held at the end: the global block index and the per-instance state). Memory
is measured in a second, untimed replay: tracemalloc hooks every allocation and would
inflate the times several-fold.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mooncake.conductor import policy as conductor_policy
from mooncake.sim import cli as sim_cli


def run(trace: Path, n: int, rate_scale: float, limit: int | None) -> dict[str, float]:
    """The timed replay, then the memory replay."""
    out = replay(trace, n, rate_scale, limit, memory=False)
    out["conductor_mib"] = replay(trace, n, rate_scale, limit, memory=True)["conductor_mib"]
    return out


def replay(
    trace: Path, n: int, rate_scale: float, limit: int | None, memory: bool
) -> dict[str, float]:
    times: list[float] = []
    kept: list[conductor_policy.Conductor] = []  # alive past the replay, for its memory
    place = conductor_policy.Conductor.place

    def timed(self: conductor_policy.Conductor, *a: object, **k: object) -> object:
        if not kept:
            kept.append(self)
        t = time.perf_counter()
        try:
            return place(self, *a, **k)  # type: ignore[arg-type]
        finally:
            times.append(time.perf_counter() - t)

    conductor_policy.Conductor.place = timed  # type: ignore[method-assign]
    argv = [
        "--trace",
        str(trace),
        "--policy",
        "mooncake",
        "--prefill-instances",
        str(n),
        "--decode-instances",
        str(n),
        "--rate-scale",
        str(rate_scale),
        "--no-progress",
    ]
    if limit:
        argv += ["--limit", str(limit)]
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim", *argv])
    if memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    try:
        rc = args.func(args)
    finally:
        conductor_policy.Conductor.place = place  # type: ignore[method-assign]
    wall = time.perf_counter() - t0
    held = 0
    if memory:
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, "*mooncake/conductor/*")]
        )
        held = sum(s.size for s in snap.statistics("filename"))
        tracemalloc.stop()
    if rc != 0:
        raise SystemExit(f"simulator exited {rc}")
    times.sort()
    return {
        "decisions": len(times),
        "p50_ms": statistics.median(times) * 1e3,
        "p99_ms": times[int(0.99 * (len(times) - 1))] * 1e3,
        "max_ms": times[-1] * 1e3,
        "conductor_mib": held / 2**20,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, required=True)
    ap.add_argument(
        "--instances", default="16,128", help="comma-separated prefill (= decode) instance counts"
    )
    ap.add_argument(
        "--rate-scale", type=float, default=8.0, help="times the trace's rate (at every size)"
    )
    ap.add_argument("--rate-per-16", action="store_true", help="also scale the rate by N/16")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    ap.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/conductor-scale.json for docs/performance.md",
    )
    args = ap.parse_args()
    rows: list[tuple[int, float, dict[str, float]]] = []
    print(
        "| instances (P + D) | rate x | decisions | place p50 "
        "ms | place p99 ms | max ms | Conductor MiB | replay s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in (int(x) for x in args.instances.split(",")):
        rate = args.rate_scale * (n / 16 if args.rate_per_16 else 1.0)
        r = run(args.trace, n, rate, args.limit)
        rows.append((n, rate, r))
        print(
            f"| {n} + {n} | {rate:g} | {r['decisions']:.0f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['max_ms']:.2f} | "
            f"{r['conductor_mib']:.1f} | {r['wall_s']:.1f} |",
            flush=True,
        )
    if args.save_results:
        import result_file as rf

        claims = []
        for n, rate, r in rows:
            row = f"{n} + {n} instances, {rate:g}x rate"
            claims.append(
                rf.claim(
                    f"Conductor.place p50, {n} + {n} instances, {rate:g}x rate",
                    r["p50_ms"],
                    "ms",
                    "1 ms budget",
                    1.0,
                    ratio=r["p50_ms"],
                )
                | {"row": row, "col": "`place` p50"}
            )
            claims.append(
                rf.claim(
                    f"Conductor.place p99, {n} + {n} instances, {rate:g}x rate",
                    r["p99_ms"],
                    "ms",
                    "1 ms budget",
                    1.0,
                    ratio=r["p99_ms"],
                    target="≤ 1.0" if n >= 256 else None,
                )
                | {"row": row, "col": "`place` p99"}
            )
            claims.append(
                rf.claim(
                    f"Conductor memory, {n} + {n} instances", r["conductor_mib"], "MiB", "", None
                )
                | {"row": row, "col": "memory"}
            )
        rf.save(
            "conductor-scale",
            "The Conductor at scale",
            claims,
            notes=(
                f"Every `Conductor.place` of a simulator replay of the first {args.limit or 'all'} "
                "requests of the conversation trace (policy mooncake, admission none), timed with "
                "perf_counter; ratio = time / 1 ms. Memory (a second, untimed replay): what "
                "the Conductor's own code allocated and still holds at the end (tracemalloc)."
            ),
        )


if __name__ == "__main__":
    main()
