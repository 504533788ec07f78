"""``mooncake sim``: replay a trace; ``mooncake sim sweep``: capacity curves.

:func:`add_parser` registers the subcommand on the top-level CLI's subparsers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mooncake.conductor import ADMISSIONS, PREFILL_POLICIES, ConductorConfig
from mooncake.sim.cache import EVICTIONS
from mooncake.sim.config import SimConfig
from mooncake.sim.engine import simulate
from mooncake.sim.sweep import SweepPoint, sweep
from mooncake.sim.trace import load_trace, scale_rate

#: CLI policy names: the Conductor's prefill policies (disaggregated) plus the
#: colocated baseline; ``mooncake`` is an alias of ``global_cache_aware``.
POLICIES = ("vllm", "mooncake", *PREFILL_POLICIES)


def build_config(args: argparse.Namespace, policy: str) -> SimConfig:
    """SimConfig from parsed arguments for one policy name."""
    name = policy.replace("-", "_")
    if name not in POLICIES:
        raise ValueError(f"policy: must be one of {POLICIES}, got {policy!r}")
    colocated = name == "vllm"
    prefill_policy = "load_balancing" if colocated else ("global_cache_aware" if name == "mooncake" else name)
    conductor = ConductorConfig(
        prefill_policy=prefill_policy,  # type: ignore[arg-type]
        admission=args.admission,
        ttft_slo_s=args.ttft_slo,
        tbt_slo_s=args.tbt_slo,
        kvcache_balancing_threshold=args.balancing_threshold,
        colocated=colocated,
    )
    return SimConfig(
        mode="colocated" if colocated else "disaggregated",
        prefill_instances=args.prefill_instances,
        decode_instances=args.decode_instances,
        conductor=conductor,
        prefill_cache_blocks=None if args.cache_blocks < 0 else args.cache_blocks,
        eviction=args.eviction,
        chunk_tokens=args.chunk_tokens,
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", type=Path, help="trace file (JSON lines)")
    p.add_argument("--admission", choices=ADMISSIONS, default="none", help="admission control (default: none)")
    p.add_argument("--prefill-instances", type=int, default=8, help="prefill instances (default 8)")
    p.add_argument("--decode-instances", type=int, default=8, help="decode instances (default 8); vllm runs P+D colocated instances")
    p.add_argument("--ttft-slo", type=float, default=30.0, help="TTFT SLO, seconds (default 30)")
    p.add_argument("--tbt-slo", type=float, default=0.1, help="TBT SLO used by admission, seconds (default 0.1)")
    p.add_argument("--balancing-threshold", type=float, default=1.0, help="kvcache_balancing_threshold (default 1.0)")
    p.add_argument("--cache-blocks", type=int, default=5859, help="KV cache blocks per prefill instance; -1 = unbounded (default 5859 = 3M tokens)")
    p.add_argument("--eviction", choices=EVICTIONS, default="lru", help="cache eviction policy (default lru)")
    p.add_argument("--chunk-tokens", type=int, default=512, help="colocated step token budget (default 512)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    p.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_parser(subparsers: Any) -> None:
    """Register ``sim`` (and ``sim sweep``) on an argparse subparsers object."""
    sim = subparsers.add_parser("sim", help="replay a Mooncake trace in the simulator", description=__doc__)
    _common(sim)
    sim.add_argument("--policy", default="mooncake", help=f"one of {', '.join(POLICIES)} (default mooncake)")
    sim.add_argument("--rate-scale", type=float, default=1.0, help="replay X times faster (default 1)")
    sim.set_defaults(func=run_sim)
    nested = sim.add_subparsers(dest="sim_command")
    sw = nested.add_parser("sweep", help="effective capacity of each policy over rate scales")
    _common(sw)
    sw.add_argument("--policies", default="vllm,mooncake", help="comma-separated policy names (default vllm,mooncake)")
    sw.add_argument("--scales", default="0.5,1,1.5,2,3,4", help="comma-separated rate scales (default 0.5,1,1.5,2,3,4)")
    sw.add_argument("--tbt-slos", default="0.1,0.2,0.3", help="TBT SLOs in seconds to evaluate (default 0.1,0.2,0.3)")
    sw.add_argument("--refine", type=int, default=3, help="bisection steps per SLO after the grid (default 3)")
    sw.add_argument("--target", type=float, default=0.9, help="attainment that counts as capacity (default 0.9)")
    sw.set_defaults(func=run_sweep)


def _need_trace(args: argparse.Namespace) -> Path | None:
    if args.trace is None or not args.trace.exists():
        print(f"error: --trace FILE required (got {args.trace})", file=sys.stderr)
        return None
    return Path(args.trace)


def run_sim(args: argparse.Namespace) -> int:
    """Handler of ``mooncake sim``."""
    path = _need_trace(args)
    if path is None:
        return 2
    try:
        config = build_config(args, args.policy)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reqs = scale_rate(load_trace(path, args.limit), args.rate_scale)
    result = simulate(config, reqs, progress=not args.no_progress)
    s = result.summary
    print(f"policy={args.policy} admission={args.admission} rate_scale={args.rate_scale:g} wall={result.wall_s:.1f}s")
    print(f"requests={s.requests} served={s.served} rejected={s.rejected} hit_rate={s.cache_hit_rate:.3f} prefill_gpu_s={s.prefill_gpu_s:.0f}")
    print(f"TTFT mean={s.ttft_mean_s:.2f}s p50={s.ttft_p50_s:.2f}s p90={s.ttft_p90_s:.2f}s p99={s.ttft_p99_s:.2f}s")
    print(f"TBT  mean={s.tbt_mean_s * 1e3:.1f}ms p50={s.tbt_p50_s * 1e3:.1f}ms p90={s.tbt_p90_s * 1e3:.1f}ms p99={s.tbt_p99_s * 1e3:.1f}ms")
    for label, value in s.slo_attainment.items():
        print(f"SLO {label}: {value:.3f}")
    if args.json is not None:
        payload = {"policy": args.policy, "rate_scale": args.rate_scale, "config": asdict(config), "summary": asdict(s), "wall_s": result.wall_s}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.plot is not None:
        from mooncake.sim.plot import plot_run

        plot_run(result, args.plot)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """Handler of ``mooncake sim sweep``."""
    path = _need_trace(args)
    if path is None:
        return 2
    try:
        scales = [float(x) for x in args.scales.split(",") if x]
        tbts = [float(x) for x in args.tbt_slos.split(",") if x]
        configs = {p: build_config(args, p) for p in args.policies.split(",") if p}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reqs = load_trace(path, args.limit)
    base_rate = len(reqs) / max(1e-9, reqs[-1].arrival_s - reqs[0].arrival_s) if len(reqs) > 1 else 0.0
    slos = [(args.ttft_slo, b) for b in tbts]
    curves = []
    for name, config in configs.items():
        bar = tqdm(desc=name, unit="run", disable=args.no_progress)

        def tick(point: SweepPoint, bar: tqdm = bar) -> None:
            bar.update(1)
            bar.set_postfix_str(f"x{point.rate_scale:g}")

        curves.append(sweep(name, config, reqs, scales, slos, args.refine, args.target, on_point=tick))
        bar.close()
    for c in curves:
        caps = ", ".join(f"{k}: {v:g}x ({v * base_rate:.2f} req/s)" for k, v in c.capacity.items())
        print(f"{c.name}: {caps}")
    if args.json is not None:
        payload = {
            "base_rate_rps": base_rate,
            "target": args.target,
            "curves": [{"name": c.name, "capacity": c.capacity, "points": [asdict(p) for p in c.points], "config": asdict(configs[c.name])} for c in curves],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.plot is not None:
        from mooncake.sim.plot import plot_curves

        plot_curves(curves, args.plot, args.target)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m mooncake.sim``)."""
    parser = argparse.ArgumentParser(prog="mooncake")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["sim", *(argv if argv is not None else sys.argv[1:])])
    code: int = args.func(args)
    return code


__all__ = ["POLICIES", "add_parser", "build_config", "main", "run_sim", "run_sweep"]
