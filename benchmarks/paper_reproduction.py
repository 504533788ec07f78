"""Runs the FAST'25 comparisons on the conversation trace and prints Markdown tables.

Usage: python benchmarks/paper_reproduction.py {hitrate,scheduling,rejection} [--trace PATH] [--json PATH]
(Effective capacity comes from ``python -m mooncake.sim sweep``, see docs/paper-reproduction.md.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mooncake.conductor import ConductorConfig  # noqa: E402
from mooncake.sim import EVICTIONS, SimConfig, hit_rate, load_trace, scale_rate, simulate  # noqa: E402
from mooncake.sim.sweep import slo_label  # noqa: E402

# The FAST'25 trace is public but not shipped: docs/paper-reproduction.md says how to
# fetch it into traces/ (or point MOONCAKE_TRACES at the folder that holds it).
DEFAULT_TRACE = Path(os.environ.get("MOONCAKE_TRACES") or ROOT / "traces") / "conversation_trace.jsonl"


def hitrate(trace: Path) -> dict[str, Any]:
    """Table 1 shape: one global cache, block hit rate per eviction policy and size."""
    keys = [r.hash_ids for r in load_trace(trace)]
    sizes: list[int | None] = [1000, 10_000, 50_000, 100_000, None]
    out: dict[str, Any] = {}
    print("| policy | " + " | ".join("inf" if s is None else f"{s}" for s in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for ev in EVICTIONS:
        row = [hit_rate(keys, s, ev) for s in sizes]
        out[ev] = dict(zip(["inf" if s is None else str(s) for s in sizes], row))
        print(f"| {ev} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return out


def scheduling(trace: Path, scales: list[float], decode: int) -> dict[str, Any]:
    """Fig. 9 setup: 10 prefill instances with 3M tokens of cache each; mean TTFT per
    prefill policy."""
    reqs = load_trace(trace)
    out: dict[str, Any] = {}
    policies = ("random", "load_balancing", "local_cache_aware", "global_cache_aware")
    print("| rate scale | " + " | ".join(policies) + " |")
    print("|---" * (len(policies) + 1) + "|")
    for scale in scales:
        row = []
        for pol in policies:
            cfg = SimConfig(prefill_instances=10, decode_instances=decode, conductor=ConductorConfig(prefill_policy=pol))  # type: ignore[arg-type]
            s = simulate(cfg, scale_rate(reqs, scale)).summary
            out[f"{scale}/{pol}"] = asdict(s)
            row.append(f"{s.ttft_mean_s:.2f} s (p90 {s.ttft_p90_s:.1f}, hit {s.cache_hit_rate:.2f})")
        print(f"| {scale:g}x | " + " | ".join(row) + " |")
    return out


def rejection(trace: Path, scale: float, prefill: int, decode: int, kv_tokens: int | None) -> dict[str, Any]:
    """Table 3 setup: rejected requests with no / early / predictive admission."""
    reqs = scale_rate(load_trace(trace), scale)
    out: dict[str, Any] = {}
    print(f"{prefill}P+{decode}D at {scale:g}x, decode KV {kv_tokens or 'HBM'} tokens")
    print("| admission | rejected | at decode (after prefill) | served within TTFT 30 s & TBT 100 ms | prefill GPU s | mean TTFT s |")
    print("|---|---|---|---|---|---|")
    for adm in ("none", "ttft", "early", "predictive"):
        cfg = SimConfig(prefill_instances=prefill, decode_instances=decode, decode_kv_tokens=kv_tokens, conductor=ConductorConfig(admission=adm))  # type: ignore[arg-type]
        res = simulate(cfg, reqs)
        s = res.summary
        late = sum(1 for r in res.records if r.rejected and r.ttft_s is not None)
        ok = round(s.slo_attainment[slo_label(30.0, 0.1)] * s.requests)
        out[adm] = {**asdict(s), "rejected_at_decode": late, "within_slo": ok}
        print(f"| {adm} | {s.rejected} | {late} | {ok} | {s.prefill_gpu_s:.0f} | {s.ttft_mean_s:.2f} |")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("experiment", choices=("hitrate", "scheduling", "rejection"))
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--scales", default="1,1.5,2", help="scheduling: rate scales")
    p.add_argument("--decode-instances", type=int, default=6, help="scheduling: decode instances")
    p.add_argument("--rate-scale", type=float, default=2.0, help="rejection: rate scale")
    p.add_argument("--prefill-instances", type=int, default=8, help="rejection: prefill instances")
    p.add_argument("--rej-decode-instances", type=int, default=8, help="rejection: decode instances")
    p.add_argument("--decode-kv-tokens", type=int, default=None, help="rejection: KV tokens per decode instance")
    args = p.parse_args()
    if not args.trace.exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    if args.experiment == "hitrate":
        data = hitrate(args.trace)
    elif args.experiment == "scheduling":
        data = scheduling(args.trace, [float(x) for x in args.scales.split(",")], args.decode_instances)
    else:
        data = rejection(args.trace, args.rate_scale, args.prefill_instances, args.rej_decode_instances, args.decode_kv_tokens)
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
