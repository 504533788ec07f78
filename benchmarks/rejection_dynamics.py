"""Why early and prediction-based rejection refuse different numbers of requests.

Replays a trace on a cluster with one decode instance under each admission mode and
samples, at every arrival, the decode instance's KV in use and the prefill instances'
mean queue; prints per mode:

- rejected, served, within the SLOs (TTFT 30 s, TBT 100 ms) and the mean prompt of the
  served requests (which requests a mode lets through);
- the decode instance's KV in use as a share of its capacity: mean (how full admission
  keeps it), standard deviation and p10 (how much it swings);
- the correlation between the prefill queue and the decode load a few seconds later
  (FAST'25 §7.3: early rejection makes them move in anti-phase; prediction should damp
  that);
- "served at full KV": served / mean KV share, the requests the same mix of served
  requests would give with the decode instance's KV always full (an upper bound on
  what better timing alone could add).

Usage:
  python benchmarks/rejection_dynamics.py --prefill-instances 12 --rate-scale 2.5
  python benchmarks/rejection_dynamics.py --prefill-instances 8 --rate-scale 1.75 \
      --decode-kv-tokens 700000 [--sim-args "--output-prediction max_tokens"]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mooncake.sim import load_trace, scale_rate  # noqa: E402
from mooncake.sim.cli import build_config, sim_args  # noqa: E402
from mooncake.sim.engine import Simulator  # noqa: E402
from mooncake.sim.sweep import slo_label  # noqa: E402

DEFAULT_TRACE = (
    Path(os.environ.get("MOONCAKE_TRACES") or ROOT / "traces") / "conversation_trace.jsonl"
)
WARMUP_S = 300.0
"""Seconds left out at both ends of the run (queues filling and draining)."""


def run(reqs: list[Any], prefill: int, kv_tokens: int | None, adm: str, extra: list[str]) -> str:
    cfg = build_config(
        sim_args(
            [
                "--prefill-instances",
                str(prefill),
                "--decode-instances",
                "1",
                "--admission",
                adm,
                *extra,
            ]
        ),
        "mooncake",
    )
    cfg = dataclasses.replace(cfg, decode_kv_tokens=kv_tokens)
    sim = Simulator(cfg, reqs)
    times: list[float] = []
    decode: list[float] = []
    queue: list[float] = []
    arrive = sim._on_arrive
    inst = next(iter(sim.batch.values()))
    loads = sim.conductor.prefill_loads

    def sampled(now: float, req: Any, b: Any) -> None:
        if not inst.stepping:
            inst.sync(now)  # what sync does at the next event anyway
        times.append(now)
        decode.append(inst.kv_used() / cfg.kv_tokens)
        queue.append(sum(x.queue_time(now) for x in loads.values()) / len(loads))
        arrive(now, req, b)

    sim._on_arrive = sampled  # type: ignore[method-assign]
    res = sim.run()
    s = res.summary
    t = np.asarray(times)
    grid = np.arange(WARMUP_S, t[-1] - WARMUP_S, 1.0)
    i = np.searchsorted(t, grid) - 1
    d, q = np.asarray(decode)[i], np.asarray(queue)[i]
    served = [r for r in res.records if not r.rejected]
    ok = round(s.slo_attainment[slo_label(30.0, 0.1)] * s.requests)
    corr = [float(np.corrcoef(q[: len(q) - lag], d[lag:])[0, 1]) for lag in (0, 2, 5)]
    return (
        f"| {adm} | {s.rejected:,} | {len(served):,} | {ok:,} | "
        f"{np.mean([r.prompt_len for r in served]):,.0f} | {d.mean():.3f} | {d.std():.3f} | "
        f"{np.percentile(d, 10):.3f} | {' / '.join(f'{c:+.2f}' for c in corr)} | "
        f"{len(served) / d.mean():,.0f} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--prefill-instances", type=int, default=12)
    p.add_argument("--rate-scale", type=float, default=2.5)
    p.add_argument("--decode-kv-tokens", type=int, default=None)
    p.add_argument("--admissions", default="early,predictive")
    p.add_argument("--sim-args", default="", help="extra 'mooncake sim' options")
    args = p.parse_args()
    if not args.trace.exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    reqs = scale_rate(load_trace(args.trace), args.rate_scale)
    print(
        "| admission | rejected | served | within SLOs | mean prompt served | decode KV in use "
        "(mean) | std | p10 | corr(prefill queue, decode load +0/2/5 s) | served at full KV |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    extra = shlex.split(args.sim_args)
    for adm in args.admissions.split(","):
        print(run(reqs, args.prefill_instances, args.decode_kv_tokens, adm, extra), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
