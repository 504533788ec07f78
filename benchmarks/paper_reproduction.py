"""Runs the FAST'25 comparisons on the conversation trace and prints Markdown tables.

Usage:
  python benchmarks/paper_reproduction.py hitrate
  python benchmarks/paper_reproduction.py scheduling [--scales 1.25,1.5] [--sim-args "..."]
  python benchmarks/paper_reproduction.py rejection
      [--prefill-instances 8 --rej-decode-instances 8 --rate-scale 2] [--sim-args "..."]
  python benchmarks/paper_reproduction.py variants --policy vllm --rate-scale 1.2
      --variant "" --variant "--step-overhead 0" ...

``--sim-args`` / ``--variant`` take ``mooncake sim`` options (e.g. ``--what-if
decode-refusal``, ``--step-overhead 0``, ``--cost-model FILE``). Effective capacity comes
from ``python -m mooncake.sim sweep`` (docs/paper-reproduction.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mooncake.sim import EVICTIONS, SimConfig, hit_rate, load_trace, scale_rate, simulate  # noqa: E402
from mooncake.sim.cli import build_config, sim_args  # noqa: E402
from mooncake.sim.sweep import slo_label  # noqa: E402

# The FAST'25 trace is public but not shipped: docs/paper-reproduction.md says how to
# fetch it into traces/ (or point MOONCAKE_TRACES at the folder that holds it).
DEFAULT_TRACE = (
    Path(os.environ.get("MOONCAKE_TRACES") or ROOT / "traces") / "conversation_trace.jsonl"
)


def config(policy: str, argv: list[str]) -> SimConfig:
    return build_config(sim_args(argv), policy)


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


def scheduling(trace: Path, scales: list[float], decode: int, extra: list[str]) -> dict[str, Any]:
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
            cfg = config(
                pol, ["--prefill-instances", "10", "--decode-instances", str(decode), *extra]
            )
            s = simulate(cfg, scale_rate(reqs, scale)).summary
            out[f"{scale}/{pol}"] = asdict(s)
            row.append(
                f"{s.ttft_mean_s:.2f} s (p90 {s.ttft_p90_s:.1f}, hit {s.cache_hit_rate:.2f})"
            )
        print(f"| {scale:g}x | " + " | ".join(row) + " |")
    return out


def rejection(
    trace: Path, scale: float, prefill: int, decode: int, kv_tokens: int | None, extra: list[str]
) -> dict[str, Any]:
    """Table 3 setup: rejected requests with no / TTFT-only / early / predictive admission."""
    reqs = scale_rate(load_trace(trace), scale)
    out: dict[str, Any] = {}
    print(
        f"{prefill}P+{decode}D at {scale:g}x, decode KV "
        f"{kv_tokens or 'HBM'} tokens, extra args: {' '.join(extra) or '-'}"
    )
    print(
        "| admission | rejected | of which after prefill | within TTFT 30 s & TBT 100 ms "
        "| preemptions | prefill GPU s | mean TTFT s | TBT p90 ms | output-length MAE |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for adm in ("none", "ttft", "early", "predictive"):
        cfg = config(
            "mooncake",
            [
                "--prefill-instances",
                str(prefill),
                "--decode-instances",
                str(decode),
                "--admission",
                adm,
                *extra,
            ],
        )
        cfg = dataclasses.replace(cfg, decode_kv_tokens=kv_tokens)
        res = simulate(cfg, reqs)
        s = res.summary
        late = sum(1 for r in res.records if r.rejected and r.ttft_s is not None)
        ok = round(s.slo_attainment[slo_label(30.0, 0.1)] * s.requests)
        out[adm] = {**asdict(s), "rejected_at_decode": late, "within_slo": ok}
        print(
            f"| {adm} | {s.rejected:,} | {late:,} | {ok:,} | {s.preemptions:,} | "
            f"{s.prefill_gpu_s:,.0f} | {s.ttft_mean_s:.2f} | "
            f"{s.tbt_p90_s * 1e3:.0f} | {s.output_len_mae:.0f} |"
        )
    return out


def variants(trace: Path, policy: str, scale: float, variant_args: list[str]) -> dict[str, Any]:
    """One policy at one rate scale under several option sets: the effect of switching
    one mechanism at a time."""
    reqs = scale_rate(load_trace(trace), scale)
    out: dict[str, Any] = {}
    print(f"{policy} at {scale:g}x")
    print(
        "| options | rejected | preemptions | hit rate | mean TTFT "
        "s | TBT p50 / p90 / p99 ms | within SLO I / II / III |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v in variant_args:
        cfg = config(policy, shlex.split(v))
        s = simulate(cfg, reqs).summary
        out[v] = asdict(s)
        att = " / ".join(f"{s.slo_attainment[slo_label(30.0, b)]:.3f}" for b in (0.1, 0.2, 0.3))
        print(
            f"| `{v or 'default'}` | {s.rejected:,} | {s.preemptions:,} | {s.cache_hit_rate:.3f} | "
            f"{s.ttft_mean_s:.2f} | {s.tbt_p50_s * 1e3:.0f} / "
            f"{s.tbt_p90_s * 1e3:.0f} / {s.tbt_p99_s * 1e3:.0f} | {att} |"
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("experiment", choices=("hitrate", "scheduling", "rejection", "variants"))
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--sim-args", default="", help="extra 'mooncake sim' options for scheduling/rejection"
    )
    p.add_argument("--scales", default="1.25,1.5", help="scheduling: rate scales")
    p.add_argument("--decode-instances", type=int, default=6, help="scheduling: decode instances")
    p.add_argument("--rate-scale", type=float, default=2.0, help="rejection/variants: rate scale")
    p.add_argument("--prefill-instances", type=int, default=8, help="rejection: prefill instances")
    p.add_argument(
        "--rej-decode-instances", type=int, default=8, help="rejection: decode instances"
    )
    p.add_argument(
        "--decode-kv-tokens",
        type=int,
        default=None,
        help="rejection: KV tokens per decode instance",
    )
    p.add_argument("--policy", default="vllm", help="variants: policy")
    p.add_argument(
        "--variant", action="append", default=None, help="variants: one option set (repeatable)"
    )
    args = p.parse_args()
    if not args.trace.exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    extra = shlex.split(args.sim_args)
    if args.experiment == "hitrate":
        data = hitrate(args.trace)
    elif args.experiment == "scheduling":
        data = scheduling(
            args.trace, [float(x) for x in args.scales.split(",")], args.decode_instances, extra
        )
    elif args.experiment == "rejection":
        data = rejection(
            args.trace,
            args.rate_scale,
            args.prefill_instances,
            args.rej_decode_instances,
            args.decode_kv_tokens,
            extra,
        )
    else:
        data = variants(args.trace, args.policy, args.rate_scale, args.variant or [""])
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
