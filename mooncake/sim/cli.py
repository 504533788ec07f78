"""``mooncake sim``: replay a trace; ``mooncake sim sweep``: capacity curves.

:func:`add_parser` registers the subcommand on the top-level CLI's subparsers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mooncake.conductor import ADMISSIONS, PREFILL_POLICIES, ConductorConfig
from mooncake.conductor.config import OUTPUT_PREDICTIONS
from mooncake.conductor.cost_export import load_cost_model
from mooncake.conductor.cost_model import CostModel
from mooncake.sim.cache import EVICTIONS
from mooncake.sim.config import WHAT_IFS, SimConfig
from mooncake.sim.engine import simulate
from mooncake.sim.sweep import CapacityCurve, SweepPoint, sweep
from mooncake.sim.trace import TraceError, TraceRequest, load_trace, scale_rate

#: CLI policy names: the Conductor's prefill policies (disaggregated) plus the
#: colocated baseline, routed by load (``vllm``) or by load and local prefix
#: (``vllm_cache_aware``); ``mooncake`` is an alias of ``global_cache_aware``.
POLICIES = ("vllm", "vllm_cache_aware", "mooncake", *PREFILL_POLICIES)
COLOCATED_POLICIES = {"vllm": "load_balancing", "vllm_cache_aware": "local_cache_aware"}

#: Version of the ``--json`` layout; bumped when a field changes meaning or goes away.
JSON_SCHEMA_VERSION = 1

SIM_DESCRIPTION = (
    "Replay a Mooncake trace (JSON lines: timestamp ms, input_length, output_length, "
    "hash_ids) through a simulated cluster whose placement and admission are made by "
    "the live Conductor's code. 'mooncake sim sweep' finds each policy's effective "
    "capacity over arrival-rate scales."
)
SWEEP_DESCRIPTION = (
    "Replay the trace at several arrival-rate scales per policy and report the highest "
    "scale at which the target share of all requests meets both the TTFT and the TBT SLO."
)


def _name(policy: str) -> str:
    name = policy.replace("-", "_")
    if name not in POLICIES:
        raise ValueError(f"policy: must be one of {POLICIES}, got {policy!r}")
    return name


def build_config(
    args: argparse.Namespace, policy: str, split: tuple[int, int] | None = None
) -> SimConfig:
    """SimConfig from parsed arguments for one policy name.

    Args:
        args: parsed ``sim``/``sweep`` arguments.
        policy: one of :data:`POLICIES`.
        split: (prefill, decode) instances; default ``--prefill-instances``/``--decode-instances``.
    """
    name = _name(policy)
    colocated = name in COLOCATED_POLICIES
    prefill_policy = COLOCATED_POLICIES.get(
        name, "global_cache_aware" if name == "mooncake" else name
    )
    conductor = ConductorConfig(
        prefill_policy=prefill_policy,  # type: ignore[arg-type]
        admission=args.admission,
        ttft_slo_s=args.ttft_slo,
        tbt_slo_s=args.tbt_slo,
        decode_token_time_s=args.decode_token_time,
        kvcache_balancing_threshold=args.balancing_threshold,
        colocated=colocated,
        output_prediction=args.output_prediction,
    )
    p, d = split if split is not None else (args.prefill_instances, args.decode_instances)
    what_ifs = parse_what_ifs(args.what_if)
    cost = load_cost_model(args.cost_model) if args.cost_model is not None else CostModel()
    if args.step_overhead is not None:
        cost = dataclasses.replace(
            cost, hardware=dataclasses.replace(cost.hardware, step_overhead_s=args.step_overhead)
        )
    return SimConfig(
        cost=cost,
        mode="colocated" if colocated else "disaggregated",
        prefill_instances=p,
        decode_instances=d,
        conductor=conductor,
        prefill_cache_blocks=None if args.cache_blocks < 0 else args.cache_blocks,
        colocated_cache_blocks=None
        if args.colocated_cache_blocks < 0
        else args.colocated_cache_blocks,
        eviction=args.eviction,
        chunk_tokens=args.chunk_tokens,
        max_tokens=args.max_tokens,
        layerwise_transfer="layerwise_transfer" in what_ifs,
        decode_refusal="decode_refusal" in what_ifs,
        reserve_full_output="reserve_full_output" in what_ifs,
    )


def parse_what_ifs(spec: str) -> list[str]:
    """``--what-if``: comma-separated names of :data:`~mooncake.sim.config.WHAT_IFS`
    (dashes or underscores)."""
    out: list[str] = []
    for item in (x.strip().replace("-", "_") for x in spec.split(",")):
        if not item:
            continue
        if item not in WHAT_IFS:
            names = ", ".join(n.replace("_", "-") for n in WHAT_IFS)
            raise ValueError(f"what_if: must be among {names}, got {item.replace('_', '-')!r}")
        out.append(item)
    return out


def split_label(config: SimConfig) -> str:
    """``8P+8D`` or ``16 colocated``."""
    if config.mode == "colocated":
        return f"{config.num_instances} colocated"
    return f"{config.prefill_instances}P+{config.decode_instances}D"


def parse_instances(spec: str) -> dict[str, tuple[int, int] | None]:
    """``--instances``: ``POLICY=P:D`` (or ``POLICY=auto``) items, comma-separated.

    Returns policy -> (prefill, decode), ``None`` for ``auto``. For ``vllm`` ``P:D``
    means P+D colocated instances, and a single number N means N of them.
    """
    out: dict[str, tuple[int, int] | None] = {}
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        policy, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"instances: expected POLICY=P:D or POLICY=auto, got {item!r}")
        name = _name(policy.strip())
        value = value.strip()
        if value == "auto":
            if name in COLOCATED_POLICIES:
                raise ValueError("instances: 'auto' searches prefill/decode splits; vllm has none")
            out[name] = None
            continue
        try:
            if ":" in value:
                p_s, d_s = value.split(":", 1)
                p, d = int(p_s), int(d_s)
            elif name in COLOCATED_POLICIES:
                p, d = int(value), 0
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"instances: expected P:D (e.g. 8:8) or auto for {name}, got {value!r}"
            ) from None
        colocated = name in COLOCATED_POLICIES
        if p < 0 or d < 0 or (not colocated and (p == 0 or d == 0)) or p + d == 0:
            raise ValueError(f"instances: {name}={value} needs positive counts")
        out[name] = (p + d, 0) if colocated else (p, d)  # colocated: P+D instances in all
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", type=Path, help="trace file (JSON lines)")
    p.add_argument(
        "--admission", choices=ADMISSIONS, default="none", help="admission control (default: none)"
    )
    p.add_argument("--prefill-instances", type=int, default=8, help="prefill instances (default 8)")
    p.add_argument(
        "--decode-instances",
        type=int,
        default=8,
        help="decode instances (default 8); vllm runs P+D colocated instances",
    )
    p.add_argument("--ttft-slo", type=float, default=30.0, help="TTFT SLO, seconds (default 30)")
    p.add_argument(
        "--tbt-slo",
        type=float,
        default=0.1,
        help="TBT SLO used by admission, seconds (default 0.1)",
    )
    p.add_argument(
        "--decode-token-time",
        type=float,
        default=None,
        metavar="S",
        help=(
            "uniform decode seconds per token t_d the predictive admission projects with "
            "(default: each decode instance's estimated step time at the load projected "
            "for the new request)"
        ),
    )
    p.add_argument(
        "--balancing-threshold",
        type=float,
        default=1.0,
        help="kvcache_balancing_threshold (default 1.0)",
    )
    p.add_argument(
        "--cache-blocks",
        type=int,
        default=5859,
        help="KV cache blocks per prefill instance; -1 = unbounded (default 5859 = 3M tokens)",
    )
    p.add_argument(
        "--colocated-cache-blocks",
        type=int,
        default=-1,
        help=(
            "prefix cache per colocated instance, blocks; 0 = no "
            "prefix caching; -1 = its HBM KV capacity (default)"
        ),
    )
    p.add_argument(
        "--eviction", choices=EVICTIONS, default="lru", help="cache eviction policy (default lru)"
    )
    p.add_argument(
        "--chunk-tokens", type=int, default=512, help="colocated step token budget (default 512)"
    )
    p.add_argument(
        "--cost-model",
        type=Path,
        default=None,
        metavar="FILE",
        help=(
            "timings from a cost model a live Conductor fitted ('mooncake "
            "cost-model --out FILE'; default: LLaMA3-70B on 8xA800)"
        ),
    )
    p.add_argument(
        "--step-overhead",
        type=float,
        default=None,
        metavar="S",
        help=(
            "engine overhead per continuous-batching step, "
            "seconds (default 0.005, or the cost model file's)"
        ),
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="output cap every request states (default: its trace output length)",
    )
    p.add_argument(
        "--output-prediction",
        choices=OUTPUT_PREDICTIONS,
        default="expected",
        help=(
            "output length decode-load prediction plans with: expected (online distribution "
            "of finished requests, capped by max_tokens) or max_tokens (default expected)"
        ),
    )
    what_ifs = "; ".join(f"{n.replace('_', '-')}: {d}" for n, d in WHAT_IFS.items())
    p.add_argument(
        "--what-if",
        default="",
        metavar="NAMES",
        help=(
            "comma-separated behaviour the live system does "
            f"not have, all off by default ({what_ifs})"
        ),
    )
    p.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"write results as JSON here (schema version {JSON_SCHEMA_VERSION})",
    )
    p.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_parser(subparsers: Any) -> None:
    """Register ``sim`` (and ``sim sweep``) on an argparse subparsers object."""
    sim = subparsers.add_parser(
        "sim", help="replay a Mooncake trace in the simulator", description=SIM_DESCRIPTION
    )
    _common(sim)
    sim.add_argument(
        "--policy", default="mooncake", help=f"one of {', '.join(POLICIES)} (default mooncake)"
    )
    sim.add_argument(
        "--rate-scale", type=float, default=1.0, help="replay X times faster (default 1)"
    )
    sim.add_argument(
        "--records",
        action="store_true",
        help=(
            "with --json: add one record per request "
            "(arrival, TTFT, TBT, instances, rejection reason)"
        ),
    )
    sim.set_defaults(func=run_sim)
    nested = sim.add_subparsers(dest="sim_command")
    sw = nested.add_parser(
        "sweep",
        help="effective capacity of each policy over rate scales",
        description=SWEEP_DESCRIPTION,
    )
    _common(sw)
    sw.add_argument(
        "--policies",
        default="vllm,mooncake",
        help="comma-separated policy names (default vllm,mooncake)",
    )
    sw.add_argument(
        "--instances",
        default="",
        help=(
            "per-policy cluster shape, comma-separated POLICY=P:D (e.g. vllm=16,mooncake=12:4) or "
            "POLICY=auto (try every P:D split of --prefill-instances + --decode-instances nodes "
            "and keep the best); policies not named use --prefill-instances/--decode-instances"
        ),
    )
    sw.add_argument(
        "--scales",
        default="0.5,1,1.5,2,3,4",
        help="comma-separated rate scales (default 0.5,1,1.5,2,3,4)",
    )
    sw.add_argument(
        "--tbt-slos",
        default="0.1,0.2,0.3",
        help="TBT SLOs in seconds to evaluate (default 0.1,0.2,0.3)",
    )
    sw.add_argument(
        "--refine", type=int, default=3, help="bisection steps per SLO after the grid (default 3)"
    )
    sw.add_argument(
        "--target", type=float, default=0.9, help="attainment that counts as capacity (default 0.9)"
    )
    sw.set_defaults(func=run_sweep)
    syn = nested.add_parser(
        "synthetic",
        help="write a synthetic trace built from FAST'25's description of its synthetic workload",
        description=SYNTHETIC_DESCRIPTION,
    )
    syn.add_argument("--out", type=Path, required=True, help="trace file to write (JSON lines)")
    syn.add_argument(
        "--requests", type=int, default=3993, help="requests (default 3993, FAST'25 Table 2)"
    )
    syn.add_argument(
        "--rate",
        type=float,
        default=3.40,
        help="Poisson arrivals per second (default 3.40, the conversation trace's base rate)",
    )
    syn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    syn.set_defaults(func=run_synthetic)


SYNTHETIC_DESCRIPTION = (
    "Generate a trace shaped like FAST'25's synthetic workload (multi-turn conversations "
    "and long-document questions, Poisson arrivals), calibrated to its Table 2: 3,993 "
    "requests, 15,325 input and 149 output tokens on average, 66%% cache ratio. "
    "Deterministic for a seed."
)


def run_synthetic(args: argparse.Namespace) -> int:
    """Handler of ``mooncake sim synthetic``."""
    from mooncake.sim.synthetic import PAPER_TABLE2, SyntheticSpec, generate, trace_stats
    from mooncake.sim.synthetic import write_trace as write

    try:
        spec = SyntheticSpec(requests=args.requests, rate=args.rate, seed=args.seed)
        reqs = generate(spec)
        write(reqs, args.out)
    except ValueError as e:
        return _error(str(e))
    except OSError as e:
        return _error(f"{args.out}: {e.strerror or e}")
    st = trace_stats(reqs)
    p = PAPER_TABLE2
    print(f"wrote {st.requests} requests over {st.duration_s:.0f} s to {args.out}")
    print(f"input tokens, mean: {st.input_mean:,.0f} (FAST'25 Table 2: {p['input_mean']:,})")
    print(f"output tokens, mean: {st.output_mean:.0f} (FAST'25 Table 2: {p['output_mean']})")
    print(f"cache ratio: {st.cache_ratio:.2f} (FAST'25 Table 2: {p['cache_ratio']:.2f})")
    return 0


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _load(args: argparse.Namespace) -> list[TraceRequest]:
    """The trace named by ``--trace``; raises TraceError (one line) when unusable."""
    if args.trace is None:
        raise TraceError("--trace", None, "a trace file is required (--trace FILE)")
    return load_trace(args.trace, args.limit)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(
        json.dumps({"schema_version": JSON_SCHEMA_VERSION, **payload}, indent=2, default=str)
    )


def run_sim(args: argparse.Namespace) -> int:
    """Handler of ``mooncake sim``."""
    try:
        config = build_config(args, args.policy)
        if args.records and args.json is None:
            raise ValueError("records: --records needs --json FILE")
        reqs = scale_rate(_load(args), args.rate_scale)
    except ValueError as e:  # TraceError included: one line naming the file and line
        return _error(str(e))
    result = simulate(config, reqs, progress=not args.no_progress)
    s = result.summary
    print(
        f"policy={args.policy} split={split_label(config)} admission={args.admission} "
        f"rate_scale={args.rate_scale:g} wall={result.wall_s:.1f}s"
    )
    print(
        f"requests={s.requests} served={s.served} rejected={s.rejected} "
        f"hit_rate={s.cache_hit_rate:.3f} prefill_gpu_s={s.prefill_gpu_s:.0f}"
    )
    print(
        f"TTFT mean={s.ttft_mean_s:.2f}s p50={s.ttft_p50_s:.2f}s "
        f"p90={s.ttft_p90_s:.2f}s p99={s.ttft_p99_s:.2f}s"
    )
    print(
        f"TBT  mean={s.tbt_mean_s * 1e3:.1f}ms p50={s.tbt_p50_s * 1e3:.1f}ms "
        f"p90={s.tbt_p90_s * 1e3:.1f}ms p99={s.tbt_p99_s * 1e3:.1f}ms"
    )
    print(
        f"preemptions={s.preemptions} output-length prediction: MAE={s.output_len_mae:.0f} "
        f"tokens bias={s.output_len_bias:+.0f} relative={s.output_len_rel_error:.2f}"
    )
    for label, value in s.slo_attainment.items():
        print(f"SLO {label}: {value:.3f}")
    if args.json is not None:
        payload: dict[str, Any] = {
            "kind": "run",
            "trace": str(args.trace),
            "policy": args.policy,
            "split": split_label(config),
            "rate_scale": args.rate_scale,
            "config": asdict(config),
            "summary": asdict(s),
            "wall_s": result.wall_s,
        }
        if args.records:
            payload["records"] = [asdict(r) for r in result.records]
        _write_json(args.json, payload)
    if args.plot is not None:
        from mooncake.sim.plot import plot_run

        title = (
            f"{args.policy}, {split_label(config)}, rate x{args.rate_scale:g}, "
            f"admission {args.admission}"
        )
        plot_run(
            result,
            args.plot,
            title=title,
            ttft_slo_s=args.ttft_slo,
            tbt_slos_s=sorted({args.tbt_slo, 0.1, 0.2, 0.3}),
        )
    return 0


def _splits(
    args: argparse.Namespace, name: str, shapes: dict[str, tuple[int, int] | None]
) -> list[tuple[int, int]]:
    """Cluster shapes to try for one policy."""
    if name not in shapes:
        return [(args.prefill_instances, args.decode_instances)]
    shape = shapes[name]
    if shape is not None:
        return [shape]
    nodes = args.prefill_instances + args.decode_instances
    return [(p, nodes - p) for p in range(1, nodes)]


def _best(curves: list[CapacityCurve]) -> CapacityCurve:
    """The curve with the highest capacity at the strictest SLO, the next SLOs breaking ties."""
    return max(curves, key=lambda c: tuple(c.capacity[k] for k in c.capacity))


def run_sweep(args: argparse.Namespace) -> int:
    """Handler of ``mooncake sim sweep``."""
    try:
        scales = [float(x) for x in args.scales.split(",") if x]
        tbts = sorted(float(x) for x in args.tbt_slos.split(",") if x)
        names = [_name(p) for p in args.policies.split(",") if p]
        shapes = parse_instances(args.instances)
        unknown = sorted(set(shapes) - set(names))
        if unknown:
            raise ValueError(f"instances: {', '.join(unknown)} not in --policies")
        plans = {
            n: [build_config(args, n, split) for split in _splits(args, n, shapes)] for n in names
        }
        reqs = _load(args)
    except ValueError as e:
        return _error(str(e))
    base_rate = (
        len(reqs) / max(1e-9, reqs[-1].arrival_s - reqs[0].arrival_s) if len(reqs) > 1 else 0.0
    )
    slos = [(args.ttft_slo, b) for b in tbts]
    curves: list[CapacityCurve] = []
    configs: dict[str, SimConfig] = {}
    tried: dict[str, dict[str, dict[str, float]]] = {}
    for name, candidates in plans.items():
        found: list[CapacityCurve] = []
        for config in candidates:
            label = f"{name} {split_label(config)}"
            bar = tqdm(desc=label, unit="run", disable=args.no_progress)

            def tick(point: SweepPoint, bar: tqdm = bar) -> None:
                bar.update(1)
                bar.set_postfix_str(f"x{point.rate_scale:g}")

            found.append(
                sweep(name, config, reqs, scales, slos, args.refine, args.target, on_point=tick)
            )
            configs[f"{name}/{split_label(config)}"] = config
            bar.close()
        best = _best(found)
        best_config = candidates[found.index(best)]
        configs[name] = best_config
        if len(found) > 1:
            tried[name] = {split_label(cfg): c.capacity for cfg, c in zip(candidates, found)}
        curves.append(best)
    for c in curves:
        caps = ", ".join(f"{k}: {v:g}x ({v * base_rate:.2f} req/s)" for k, v in c.capacity.items())
        auto = " (best split found)" if c.name in tried else ""
        print(f"{c.name} {split_label(configs[c.name])}{auto}: {caps}")
    if args.json is not None:
        payload = {
            "kind": "sweep",
            "trace": str(args.trace),
            "base_rate_rps": base_rate,
            "target": args.target,
            "curves": [
                {
                    "name": c.name,
                    "split": split_label(configs[c.name]),
                    "capacity": c.capacity,
                    "points": [asdict(p) for p in c.points],
                    "config": asdict(configs[c.name]),
                    **({"splits_tried": tried[c.name]} if c.name in tried else {}),
                }
                for c in curves
            ],
        }
        _write_json(args.json, payload)
    if args.plot is not None:
        from mooncake.sim.plot import plot_curves

        labels = {c.name: f"{c.name} {split_label(configs[c.name])}" for c in curves}
        plot_curves(
            curves,
            args.plot,
            args.target,
            labels=labels,
            title=f"{args.trace.name}, admission {args.admission}",
        )
    return 0


def sim_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``mooncake sim`` arguments parsed from ``argv`` (defaults for the rest): a
    namespace :func:`build_config` accepts, for scripts."""
    parser = argparse.ArgumentParser(prog="mooncake")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["sim", *(argv or [])])


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m mooncake.sim``)."""
    parser = argparse.ArgumentParser(prog="mooncake")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["sim", *(argv if argv is not None else sys.argv[1:])])
    code: int = args.func(args)
    return code


__all__ = [
    "JSON_SCHEMA_VERSION",
    "POLICIES",
    "add_parser",
    "build_config",
    "main",
    "parse_instances",
    "run_sim",
    "run_sweep",
    "sim_args",
    "split_label",
]
