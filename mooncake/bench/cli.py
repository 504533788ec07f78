"""``mooncake bench serve``: load-test an OpenAI-compatible server (``mooncake serve``,
``vllm serve``, ...) in the style of ``vllm bench serve``."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="benchmarks", description="Benchmarks.")
    bsub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    bsub.required = True
    p = bsub.add_parser("serve", help="load-test an OpenAI-compatible server", description=__doc__)
    p.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    p.add_argument("--endpoint", default="/v1/completions")
    p.add_argument(
        "--model", default=None, help="'model' of every request (default: the server's first model)"
    )
    p.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    p.add_argument(
        "--label", default=None, help="name of this run in the results and the plot title"
    )
    ds = p.add_argument_group("dataset")
    ds.add_argument(
        "--dataset-name",
        choices=["random", "prefix-repetition", "mooncake-trace"],
        default="random",
    )
    ds.add_argument("--num-prompts", type=int, default=100)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument(
        "--vocab-size",
        type=int,
        default=256,
        help="prompt token ids are drawn from [16, vocab-size)",
    )
    ds.add_argument("--random-input-len", type=int, default=256)
    ds.add_argument("--random-output-len", type=int, default=32)
    ds.add_argument("--random-range-ratio", type=float, default=0.0)
    ds.add_argument("--prefix-repetition-prefix-len", type=int, default=256)
    ds.add_argument("--prefix-repetition-suffix-len", type=int, default=256)
    ds.add_argument("--prefix-repetition-num-prefixes", type=int, default=10)
    ds.add_argument("--prefix-repetition-output-len", type=int, default=32)
    ds.add_argument(
        "--trace-path",
        type=Path,
        default=None,
        help="Mooncake trace (JSON Lines) for mooncake-trace",
    )
    ds.add_argument(
        "--time-scale", type=float, default=1.0, help="trace arrival times are multiplied by this"
    )
    ds.add_argument(
        "--length-scale",
        type=float,
        default=1.0,
        help="trace block/prompt/output lengths are multiplied by this",
    )
    ds.add_argument(
        "--max-input-len", type=int, default=None, help="cut trace prompts to this many tokens"
    )
    ds.add_argument(
        "--max-output-len", type=int, default=None, help="cap trace outputs at this many tokens"
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="mean requests/s (default inf: all at once)",
    )
    load.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape of arrival gaps (1: Poisson)"
    )
    load.add_argument("--max-concurrency", type=int, default=None)
    load.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at EOS")
    load.add_argument(
        "--goodput",
        nargs="+",
        default=None,
        metavar="NAME:MS",
        help="SLOs for goodput: ttft:MS tpot:MS e2el:MS",
    )
    load.add_argument("--metric-percentiles", default="50,90,99")
    load.add_argument("--disable-tqdm", action="store_true")
    out = p.add_argument_group("output")
    out.add_argument(
        "--save-result", action="store_true", help="write the JSON result (and the plot)"
    )
    out.add_argument("--result-dir", type=Path, default=Path("."))
    out.add_argument(
        "--result-filename", default=None, help="default: <label or dataset>-<rate>qps-<time>.json"
    )
    out.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG path (default with --save-result: next to the JSON)",
    )
    p.set_defaults(func=run)


def _dataset(args: argparse.Namespace) -> list[Any]:
    from mooncake.bench import datasets

    vocab = (16, args.vocab_size)
    if args.vocab_size <= 16:
        raise ValueError(f"vocab_size: must be above 16, got {args.vocab_size}")
    if args.dataset_name == "random":
        return datasets.random_dataset(
            args.num_prompts,
            args.random_input_len,
            args.random_output_len,
            args.random_range_ratio,
            vocab,
            args.seed,
        )
    if args.dataset_name == "prefix-repetition":
        return datasets.prefix_repetition_dataset(
            args.num_prompts,
            args.prefix_repetition_prefix_len,
            args.prefix_repetition_suffix_len,
            args.prefix_repetition_num_prefixes,
            args.prefix_repetition_output_len,
            vocab,
            args.seed,
        )
    if args.trace_path is None:
        raise ValueError("trace_path: --trace-path is required with --dataset-name mooncake-trace")
    return datasets.mooncake_trace_dataset(
        args.trace_path,
        args.num_prompts,
        args.time_scale,
        args.length_scale,
        args.max_input_len,
        args.max_output_len,
        vocab,
        args.seed,
    )


def run(args: argparse.Namespace) -> int:
    from mooncake.bench.metrics import format_table, parse_goodput, summarize
    from mooncake.bench.plot import plot_run
    from mooncake.bench.runner import LoadConfig, run_load

    slos = parse_goodput(args.goodput)
    percentiles = [float(p) for p in args.metric_percentiles.split(",") if p.strip()]
    requests = _dataset(args)
    cfg = LoadConfig(
        base_url=args.base_url,
        model=args.model,
        endpoint=args.endpoint,
        request_rate=args.request_rate,
        burstiness=args.burstiness,
        max_concurrency=args.max_concurrency,
        seed=args.seed,
        ignore_eos=not args.no_ignore_eos,
        api_key=args.api_key,
        progress=not args.disable_tqdm,
    )
    label = args.label or args.dataset_name
    print(
        f"{label}: {len(requests)} requests, dataset {args.dataset_name}, request rate "
        f"{args.request_rate}, burstiness {args.burstiness}, "
        f"max concurrency {args.max_concurrency}",
        file=sys.stderr,
    )
    results, duration, model = asyncio.run(run_load(cfg, requests))
    summary = summarize(results, duration, slos, percentiles)
    print(format_table(summary, percentiles))
    errors = sorted({r.error for r in results if r.error and not r.rejected})
    for e in errors[:5]:
        print(f"error: {e}", file=sys.stderr)
    if args.save_result or args.plot:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        name = args.result_filename or f"{label}-{args.request_rate:g}qps-{stamp}.json"
        record: dict[str, Any] = {
            "date": stamp,
            "label": label,
            "base_url": args.base_url,
            "model_id": model,
            "dataset_name": args.dataset_name,
            "request_rate": args.request_rate if math.isfinite(args.request_rate) else "inf",
            "burstiness": args.burstiness,
            "max_concurrency": args.max_concurrency,
            "command": " ".join(sys.argv),
            **summary,
            "requests": [
                {k: v for k, v in asdict(r).items() if k != "itl_s"} | {"tpot_s": r.tpot_s}
                for r in results
            ],
        }
        plot_path = args.plot
        if args.save_result:
            path = args.result_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1) + "\n")
            print(f"result: {path}", file=sys.stderr)
            plot_path = plot_path or path.with_suffix(".png")
        if plot_path is not None:
            plot_run(results, plot_path, f"{label} · {model} · {args.request_rate:g} req/s", slos)
            print(f"plot: {plot_path}", file=sys.stderr)
    return 0 if summary["completed"] > 0 else 1
