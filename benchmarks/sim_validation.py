"""Sim-to-real validation: one trace slice through a live cluster and through the simulator.

1. Start an embedded cluster (``mooncake.LLM``: P prefill + D decode workers) serving a
   random-weight checkpoint (``benchmarks/checkpoints.py``).
2. Replay a slice of a Mooncake trace against it at the trace's own arrival times
   (``--time-scale`` stretches or shrinks them to a load the machine can serve). Prompts
   are token ids built from the trace's ``hash_ids`` (``mooncake.bench.datasets``: the
   same id is the same token block), so requests share prefixes exactly as in the
   trace; lengths are scaled by ``--length-scale``. Each request's TTFT, TBT (the
   mean of its slowest 10% token gaps, as the simulator defines it), prefix-cache hit
   and rejection are recorded at the client.
3. Export the cost model the live Conductor fitted while serving it
   (``mooncake_cost_model``: prefill time, decode step time, transfer bandwidth).
4. Replay the same slice in the simulator with that cost model, the same cluster shape,
   the same Conductor configuration, the engines' block size and KV capacity.
5. Compare: TTFT and TBT p50/p90 within ±25%, rejection rate and prefix-cache hit rate
   within 5 points.

Usage::

    python benchmarks/sim_validation.py --trace traces/conversation_trace.jsonl \\
        --count 200 --save-results
    python benchmarks/sim_validation.py --render-doc    # docs/sim-validation.md from the results

Timings depend on the machine being otherwise idle; run it alone (docs/sim-validation.md).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mooncake.bench.datasets import TRACE_BLOCK_TOKENS, mooncake_trace_dataset  # noqa: E402
from mooncake.conductor import ConductorConfig  # noqa: E402
from mooncake.conductor.cost_export import cost_model_from_dict  # noqa: E402
from mooncake.sim.config import SimConfig  # noqa: E402
from mooncake.sim.engine import simulate  # noqa: E402
from mooncake.sim.metrics import (  # noqa: E402
    RequestRecord,
    RunSummary,
    slowest_gaps_mean,
    summarize,
)
from mooncake.sim.trace import TraceRequest, parse_trace  # noqa: E402

DEFAULT_TRACE = (
    Path(os.environ.get("MOONCAKE_TRACES") or ROOT / "traces") / "conversation_trace.jsonl"
)
RESULT_NAME = "sim-validation"
DOC = ROOT / "docs" / "sim-validation.md"
DOC_FIGURE = ROOT / "docs" / "sim-validation" / "cdf.png"
BEGIN, END = "<!-- sim-validation results: begin -->", "<!-- sim-validation results: end -->"
LATENCY_TOLERANCE = 0.25
"""Simulator / live within ±25% (the issue's target for p50 TTFT and TBT)."""
RATE_TOLERANCE_POINTS = 5.0
"""Rejection and prefix-hit rates within 5 percentage points."""


@dataclass(frozen=True)
class SliceRequest:
    """One request of the slice, as the live client sends it and the simulator sees it."""

    index: int
    arrival_s: float
    prompt: list[int]
    output_len: int
    trace: TraceRequest
    """The simulator's view: same arrival and lengths, one hash id per full engine block."""


# -- the slice -----------------------------------------------------------------------------
def build_slice(
    trace: Path,
    start: int,
    count: int,
    time_scale: float,
    length_scale: float,
    block_size: int,
    max_input_len: int | None = None,
    max_output_len: int | None = None,
) -> list[SliceRequest]:
    """Records ``start .. start+count`` of ``trace``, scaled for one machine.

    Each trace block (512 tokens) becomes ``512·length_scale`` tokens, which must be a
    whole number of engine blocks (``block_size``); engine block ``j`` of trace block
    ``h`` gets hash id ``h·k + j`` (``k`` engine blocks per trace block), so two requests
    share simulated blocks exactly where their token ids agree.

    Raises:
        ValueError: naming the bad argument.
    """
    if start < 0:
        raise ValueError(f"start: must be >= 0, got {start}")
    if count <= 0:
        raise ValueError(f"count: must be positive, got {count}")
    block = max(1, round(TRACE_BLOCK_TOKENS * length_scale))
    if block % block_size:
        raise ValueError(
            f"length_scale: a trace block becomes {block} tokens, not a multiple of the "
            f"engine's block size {block_size}"
        )
    k = block // block_size
    with open(trace, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()][start : start + count]
    if not lines:
        raise ValueError(f"start: the trace has no records from {start}")
    records = sorted(parse_trace(lines, str(trace)), key=lambda r: r.index)
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "slice.jsonl"
        part.write_text("".join(lines))
        samples = mooncake_trace_dataset(
            part,
            time_scale=time_scale,
            length_scale=length_scale,
            max_input_len=max_input_len,
            max_output_len=max_output_len,
        )
    out = []
    for rec, s in zip(records, samples):
        n_in = s.prompt_len
        ids = tuple(rec.hash_ids[j // k] * k + j % k for j in range(n_in // block_size))
        arrival = float(s.arrival_s or 0.0)
        out.append(
            SliceRequest(
                rec.index,
                arrival,
                s.prompt,
                s.output_len,
                TraceRequest(rec.index, arrival, n_in, s.output_len, ids),
            )
        )
    return sorted(out, key=lambda r: (r.arrival_s, r.index))


# -- live side -----------------------------------------------------------------------------
@dataclass
class LiveRecord:
    """A live request's record plus what only the live side can split out."""

    record: RequestRecord
    tbt_after_first_s: float | None = None
    """TBT over the gaps after the second token: without the prefill → decode handoff
    (the transfer and the decode worker picking the request up), compared with the
    simulator's TBT without its hand-off (``hardware.handoff_s`` = 0)."""


async def _serve_one(llm: Any, req: SliceRequest, t_start: float) -> LiveRecord:
    from mooncake import SamplingParams
    from mooncake.client import Rejected, Unavailable

    delay = req.arrival_s - (time.perf_counter() - t_start)
    if delay > 0:
        await asyncio.sleep(delay)
    rec = RequestRecord(req.index, req.arrival_s, len(req.prompt), req.output_len)
    params = SamplingParams(temperature=0.0, max_tokens=req.output_len, ignore_eos=True)
    t0 = time.perf_counter()
    arrivals: list[tuple[float, int]] = []  # (client time, new tokens)
    seen = 0
    try:
        async for out in llm.stream(req.prompt, params, request_id=f"validate-{req.index}"):
            n = len(out.outputs[0].token_ids)
            if n > seen:
                arrivals.append((time.perf_counter(), n - seen))
                seen = n
            if out.finished:
                rec.cached_tokens = out.num_cached_tokens
    except (Rejected, Unavailable) as e:
        rec.rejected, rec.reason = True, str(getattr(e, "reason", e))
        return LiveRecord(rec)
    live = LiveRecord(rec)
    if arrivals:
        rec.ttft_s = arrivals[0][0] - t0
        gaps: list[tuple[float, float]] = []
        for (t_prev, _), (t, n) in itertools.pairwise(arrivals):
            gaps.append(((t - t_prev) / n, float(n)))  # tokens that came together share a gap
        rec.tbt_s = slowest_gaps_mean(gaps)
        live.tbt_after_first_s = slowest_gaps_mean(gaps[1:])
        rec.finish_s = arrivals[-1][0] - t_start
    return live


async def replay_live(llm: Any, reqs: list[SliceRequest], timeout_s: float) -> list[LiveRecord]:
    """Send every request at its arrival time; records in request order."""
    t_start = time.perf_counter()
    records = await asyncio.wait_for(
        asyncio.gather(*(_serve_one(llm, r, t_start) for r in reqs)), timeout_s
    )
    return sorted(records, key=lambda r: r.record.index)


def warm_up(llm: Any, n: int) -> None:
    """A few requests with tokens outside the trace's blocks, so the first timed request
    does not pay for first-call costs (their timings feed the fit like any other)."""
    from mooncake import SamplingParams

    if n <= 0:
        return
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    llm.generate([[1 + i] * (64 + 32 * i) for i in range(n)], params, use_tqdm=False)


# -- simulator side ------------------------------------------------------------------------
def replay_sim(
    reqs: list[SliceRequest],
    cost_doc: dict[str, Any],
    conductor: ConductorConfig,
    prefill_instances: int,
    decode_instances: int,
    kv_tokens: int,
) -> list[RequestRecord]:
    """The same slice through the simulator with the live cluster's fitted cost model."""
    config = SimConfig(
        mode="disaggregated",
        prefill_instances=prefill_instances,
        decode_instances=decode_instances,
        conductor=conductor,
        cost=cost_model_from_dict(cost_doc),
        prefill_cache_blocks=None,  # the live prefill worker's pool + host store outsize a slice
        decode_kv_tokens=kv_tokens,
    )
    return simulate(config, [r.trace for r in reqs]).records


# -- comparison ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One compared figure."""

    metric: str
    live: float
    sim: float
    unit: str
    """``s`` (compared as a ratio) or ``%`` (compared as a difference in points)."""

    @property
    def ratio(self) -> float | None:
        return self.sim / self.live if self.unit == "s" and self.live > 0 else None

    @property
    def ok(self) -> bool:
        if self.unit == "%":
            return abs(self.sim - self.live) <= RATE_TOLERANCE_POINTS
        r = self.ratio
        return r is not None and abs(r - 1.0) <= LATENCY_TOLERANCE

    @property
    def target(self) -> str:
        return (
            f"within ±{RATE_TOLERANCE_POINTS:g} points"
            if self.unit == "%"
            else f"sim/live within ±{LATENCY_TOLERANCE:.0%}"
        )


def _pctl(values: list[float], q: float) -> float:
    """The q-th percentile as the simulator's summary computes it (numpy, linear)."""
    import numpy as np

    return float(np.percentile(values, q)) if values else math.nan


def compare(
    live: RunSummary,
    sim: RunSummary,
    live_tbt_after_first: list[float] | None = None,
    sim_without_handoff: RunSummary | None = None,
) -> list[Row]:
    """The validation's figures, live against simulated (``live_tbt_after_first``: the
    live requests' TBT without their handoff gap, see :class:`LiveRecord`, compared
    with ``sim_without_handoff``: the replay without the hand-off's fixed cost)."""

    def pct(x: float) -> float:
        return 100.0 * x

    tbt2 = live_tbt_after_first or []
    bare = sim_without_handoff or sim
    return [
        Row("TTFT p50", live.ttft_p50_s, sim.ttft_p50_s, "s"),
        Row("TTFT p90", live.ttft_p90_s, sim.ttft_p90_s, "s"),
        Row("TBT p50", live.tbt_p50_s, sim.tbt_p50_s, "s"),
        Row("TBT p90", live.tbt_p90_s, sim.tbt_p90_s, "s"),
        Row("TBT p50 without the handoff gap", _pctl(tbt2, 50), bare.tbt_p50_s, "s"),
        Row("TBT p90 without the handoff gap", _pctl(tbt2, 90), bare.tbt_p90_s, "s"),
        Row(
            "rejection rate",
            pct(live.rejected / max(1, live.requests)),
            pct(sim.rejected / max(1, sim.requests)),
            "%",
        ),
        Row("prefix-cache hit rate", pct(live.cache_hit_rate), pct(sim.cache_hit_rate), "%"),
    ]


def table(rows: list[Row]) -> str:
    """Markdown table of the comparison."""

    def fmt(x: float, unit: str) -> str:
        if math.isnan(x):
            return "—"
        return f"{x * 1000:.1f} ms" if unit == "s" else f"{x:.1f}%"

    lines = [
        "| figure | live cluster | simulator | sim / live | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r.unit == "s":
            diff = "—" if r.ratio is None else f"{r.ratio:.2f}×"
        else:
            diff = f"{r.sim - r.live:+.1f} points"
        verdict = "met" if r.ok else "**not met**"
        lines.append(
            f"| {r.metric} | {fmt(r.live, r.unit)} | {fmt(r.sim, r.unit)} | {diff} | "
            f"{r.target} ({verdict}) |"
        )
    return "\n".join(lines)


def cdf(values: list[float], points: int = 100) -> list[list[float]]:
    """[[value, fraction ≤ value], ...], at most ``points`` evenly spaced ranks."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return []
    n = len(xs)
    idx = sorted({min(n - 1, round(i * (n - 1) / max(1, points - 1))) for i in range(points)})
    return [[xs[i], (i + 1) / n] for i in idx]


def cdfs(live: list[RequestRecord], sim: list[RequestRecord]) -> dict[str, Any]:
    def served(rs: list[RequestRecord], key: str) -> list[float]:
        return [getattr(r, key) for r in rs if not r.rejected and getattr(r, key) is not None]

    return {
        m: {"live": cdf(served(live, f"{m}_s")), "simulator": cdf(served(sim, f"{m}_s"))}
        for m in ("ttft", "tbt")
    }


# -- results and the doc -------------------------------------------------------------------
def results_doc(
    rows: list[Row],
    live: list[RequestRecord],
    sim: list[RequestRecord],
    cost_doc: dict[str, Any],
    setup: dict[str, Any],
) -> dict[str, Any]:
    """Everything the run found (saved as ``--json`` and, with ``--save-results``, in
    ``benchmarks/results/sim-validation.json``)."""
    return {
        "rows": [{**asdict(r), "ratio": r.ratio, "ok": r.ok, "target": r.target} for r in rows],
        "setup": setup,
        "cost_model": cost_doc,
        "cdf": cdfs(live, sim),
        "summary": {"live": asdict(summarize(live, 0.0)), "simulator": asdict(summarize(sim, 0.0))},
        "records": {"live": [asdict(r) for r in live], "simulator": [asdict(r) for r in sim]},
    }


def save_results(rows: list[Row], extra: dict[str, Any], results_dir: Path | None) -> Path:
    import result_file as rf

    claims = []
    for r in rows:
        c = rf.claim(
            f"{r.metric}, simulator",
            r.sim * (1000 if r.unit == "s" else 1),
            "ms" if r.unit == "s" else "%",
            "live cluster",
            r.live * (1000 if r.unit == "s" else 1),
            ratio=r.ratio,
            target=r.target,
        )
        c["met"] = r.ok
        claims.append(c)

    def samples(side: str, key: str) -> list[float]:
        return [
            1000 * r[key]
            for r in extra["records"][side]
            if not r["rejected"] and r[key] is not None
        ]

    # Both CDFs in one figure of the results page (report.draw: "kind": "cdf").
    series = {
        f"{m.upper()} CDF": {
            "kind": "cdf",
            "groups": {
                "live": samples("live", f"{m}_s"),
                "simulator": samples("simulator", f"{m}_s"),
            },
            "xlabel": f"{m.upper()} (ms)",
        }
        for m in ("ttft", "tbt")
    }
    s = extra["setup"]
    notes = (
        f"{s['requests']} requests of {s['trace']} (records {s['start']}–"
        f"{s['start'] + s['requests'] - 1}, time ×{s['time_scale']:g}, lengths "
        f"×{s['length_scale']:g}) through a live {s['prefill_workers']}P+{s['decode_workers']}D "
        f"cluster ({s['model']}) and through the simulator with the cost model the live "
        "Conductor fitted. Method and CDFs: [sim-validation.md](sim-validation.md)."
    )
    return rf.save(
        RESULT_NAME,
        "Simulator vs live cluster",
        claims,
        notes=notes,
        series=series,
        results_dir=results_dir,
        extra={k: v for k, v in extra.items() if k != "records"},  # records: --json only
    )


def render_doc(results: Path, doc: Path = DOC, figure: Path = DOC_FIGURE) -> str:
    """Rewrite the results block of docs/sim-validation.md from a saved result (and draw
    the CDF figure next to it); returns the block."""
    data = json.loads(results.read_text())
    rows = [Row(r["metric"], r["live"], r["sim"], r["unit"]) for r in data["rows"]]
    s = data["setup"]
    block = [
        BEGIN,
        "",
        table(rows),
        "",
        f"Run: {data.get('date', '?')}, commit `{data.get('commit')}`; machine: "
        f"{data.get('machine', {}).get('cpu', '?')}, {data.get('machine', {}).get('cores', '?')} "
        f"cores, load average {data.get('machine', {}).get('load_avg', '?')}.  ",
        f"Command: `{data.get('command', '?')}`  ",
        f"Slice: {s['requests']} requests from record {s['start']}, time ×{s['time_scale']:g}, "
        f"lengths ×{s['length_scale']:g}; cluster {s['prefill_workers']}P+{s['decode_workers']}D, "
        f"model {s['model']}.",
    ]
    if _draw_cdfs(data["cdf"], figure):
        block += ["", f"![TTFT and TBT CDFs, live and simulated]({figure.parent.name}/cdf.png)"]
    block += ["", END]
    text = "\n".join(block)
    page = doc.read_text()
    if BEGIN not in page or END not in page:
        raise ValueError(f"{doc}: no results markers ({BEGIN} ... {END})")
    head, rest = page.split(BEGIN, 1)
    doc.write_text(head + text + rest.split(END, 1)[1])
    return text


def _draw_cdfs(data: dict[str, Any], out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("ttft", "tbt")):
        for side, style in (("live", "-"), ("simulator", "--")):
            pts = data[metric][side]
            if pts:
                ax.step(
                    [1000 * x for x, _ in pts], [y for _, y in pts], style, where="post", label=side
                )
        ax.set_xlabel(f"{metric.upper()} (ms)")
        ax.set_ylabel("fraction of served requests")
        ax.set_title(f"{metric.upper()} CDF", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return True


# -- main ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    """Live replay, export, simulated replay, comparison; returns the results document."""
    import mooncake
    from mooncake.config import EngineConfig

    model = args.model
    if model is None:
        from checkpoints import ensure_checkpoint

        model = ensure_checkpoint(args.shape)
    ec = EngineConfig(model=str(model), num_blocks=args.num_blocks)
    conductor = ConductorConfig(
        admission=args.admission,
        ttft_slo_s=args.ttft_slo,
        tbt_slo_s=args.tbt_slo,
        block_size=ec.block_size,
        max_decode_batch=ec.max_num_seqs,
    )
    reqs = build_slice(
        args.trace,
        args.start,
        args.count,
        args.time_scale,
        args.length_scale,
        ec.block_size,
        args.max_input_len,
        args.max_output_len,
    )
    print(
        f"slice: {len(reqs)} requests over {reqs[-1].arrival_s:.1f} s, "
        f"{sum(len(r.prompt) for r in reqs)} prompt tokens, "
        f"{sum(r.output_len for r in reqs)} output tokens"
    )
    with mooncake.LLM(
        str(model),
        prefill_workers=args.prefill_workers,
        decode_workers=args.decode_workers,
        engine_config=ec,
        conductor_config=conductor,
        dashboard_address=None,
    ) as llm:
        warm_up(llm, args.warmup)
        served = asyncio.run(replay_live(llm, reqs, args.timeout))
        live = [r.record for r in served]
        time.sleep(0.5)  # the workers' last reports (every 50 ms) reach the Conductor
        cost_doc: dict[str, Any] = llm.client.sync(
            llm.client.scheduler.mooncake_cost_model, callback_timeout=30
        )
        if "error" in cost_doc:
            raise RuntimeError(f"cost model export: {cost_doc['error']}")
        decode_kv = [
            int(i["kv_capacity_tokens"]) for i in llm.workers.values() if "decode" in i["roles"]
        ]
        used = llm.conductor_config
    shape = (replace(used, colocated=False), args.prefill_workers, args.decode_workers)
    sim = replay_sim(reqs, cost_doc, *shape, min(decode_kv))
    # The same replay without the hand-off's fixed cost, for the rows without it.
    bare_doc = {**cost_doc, "hardware": {**cost_doc["hardware"], "handoff_s": 0.0}}
    bare = replay_sim(reqs, bare_doc, *shape, min(decode_kv))
    rows = compare(
        summarize(live, 0.0),
        summarize(sim, 0.0),
        [r.tbt_after_first_s for r in served if r.tbt_after_first_s is not None],
        summarize(bare, 0.0),
    )
    setup = {
        "trace": args.trace.name,
        "start": args.start,
        "requests": len(reqs),
        "time_scale": args.time_scale,
        "length_scale": args.length_scale,
        "prefill_workers": args.prefill_workers,
        "decode_workers": args.decode_workers,
        "model": Path(model).name,
        "conductor": asdict(used),
        "decode_kv_tokens": min(decode_kv),
    }
    return results_doc(rows, live, sim, cost_doc, setup)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="Mooncake trace (JSON lines)")
    p.add_argument("--start", type=int, default=0, help="first record of the slice (default 0)")
    p.add_argument("--count", type=int, default=200, help="records in the slice (default 200)")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="arrival times × this (2: half the trace's rate; default 1)",
    )
    p.add_argument(
        "--length-scale",
        type=float,
        default=1 / 16,
        help="prompt, block and output lengths × this (default 1/16: 32-token trace blocks)",
    )
    p.add_argument("--max-input-len", type=int, default=3072, help="prompt cap (default 3072)")
    p.add_argument("--max-output-len", type=int, default=128, help="output cap (default 128)")
    p.add_argument("--prefill-workers", type=int, default=1)
    p.add_argument("--decode-workers", type=int, default=1)
    p.add_argument("--model", type=Path, default=None, help="checkpoint directory")
    p.add_argument(
        "--shape", default="tiny", help="benchmarks/checkpoints.py shape when no --model"
    )
    p.add_argument("--num-blocks", type=int, default=4096, help="engine KV blocks per worker")
    p.add_argument("--admission", default="none", help="Conductor admission (default none)")
    p.add_argument("--ttft-slo", type=float, default=30.0)
    p.add_argument("--tbt-slo", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=2, help="untimed requests first (default 2)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the live replay may take")
    p.add_argument("--json", type=Path, default=None, help="write the full results here")
    p.add_argument(
        "--save-results",
        action="store_true",
        help=f"write benchmarks/results/{RESULT_NAME}.json for docs/performance.md",
    )
    p.add_argument("--results-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--render-doc",
        action="store_true",
        help="only rewrite docs/sim-validation.md's results from the saved results",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_doc:
        import result_file as rf

        src = (args.results_dir or rf.RESULTS_DIR) / f"{RESULT_NAME}.json"
        if not src.exists():
            print(f"no results to render: {src} (run with --save-results first)", file=sys.stderr)
            return 2
        print(render_doc(src))
        return 0
    if not args.trace.exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    doc = run(args)
    rows = [Row(r["metric"], r["live"], r["sim"], r["unit"]) for r in doc["rows"]]
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.save_results:
        save_results(rows, doc, args.results_dir)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
