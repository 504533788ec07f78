"""Tables (and a goodput plot) of the results ``benchmarks/serve_compare.sh`` wrote.

    python benchmarks/serve_report.py .bench/serve
    python benchmarks/serve_report.py .bench/serve --plot goodput.png

Reads ``<server>-r<rate>-<client>.json`` (client ``mooncake-bench`` or ``vllm-bench``;
both use vLLM's key names) and prints one row per server, rate and client; then, per
rate and client, each mooncake server's goodput and p50 TTFT/TPOT as ratios to
``vllm serve``'s. ``--plot`` draws goodput against offered rate, one line per server and
client.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

SERVERS = {
    "vllm": "vllm serve",
    "mooncake": "mooncake serve (disaggregated 1P+1D)",
    "mooncake-colocated": "mooncake serve (colocated)",
}
CLIENTS = {"mooncake-bench": "mooncake bench serve", "vllm-bench": "vllm bench serve"}
COLS = [
    ("completed", "done", "{:.0f}"),
    ("request_throughput", "req/s", "{:.2f}"),
    ("request_goodput", "goodput req/s", "{:.2f}"),
    ("output_throughput", "out tok/s", "{:.1f}"),
    ("median_ttft_ms", "TTFT p50 ms", "{:.0f}"),
    ("p99_ttft_ms", "TTFT p99 ms", "{:.0f}"),
    ("median_tpot_ms", "TPOT p50 ms", "{:.1f}"),
    ("p99_tpot_ms", "TPOT p99 ms", "{:.1f}"),
    ("median_itl_ms", "ITL p50 ms", "{:.1f}"),
    ("median_e2el_ms", "E2E p50 ms", "{:.0f}"),
]
NAME = re.compile(
    r"^(?P<server>vllm|mooncake|mooncake-colocated)-r(?P<rate>[0-9.]+)-(?P<client>mooncake-bench|vllm-bench)\.json$"
)


def load(root: Path) -> dict[tuple[str, float, str], dict[str, Any]]:
    """Every result under ``root``, keyed by (server, rate, client)."""
    runs: dict[tuple[str, float, str], dict[str, Any]] = {}
    for path in sorted(root.glob("*.json")):
        m = NAME.match(path.name)
        if m:
            runs[(m["server"], float(m["rate"]), m["client"])] = json.loads(path.read_text())
    return runs


def table(runs: dict[tuple[str, float, str], dict[str, Any]]) -> None:
    print("| server | rate req/s | client | " + " | ".join(c[1] for c in COLS) + " |")
    print("| --- | ---: | --- | " + " | ".join("---:" for _ in COLS) + " |")
    for rate in sorted({r for _, r, _ in runs}):
        for server, sname in SERVERS.items():
            for client, cname in CLIENTS.items():
                data = runs.get((server, rate, client))
                if data is None:
                    continue
                cells = [
                    fmt.format(data[key]) if data.get(key) is not None else "n/a"
                    for key, _, fmt in COLS
                ]
                print(f"| {sname} | {rate:g} | {cname} | " + " | ".join(cells) + " |")


def ratios(runs: dict[tuple[str, float, str], dict[str, Any]]) -> None:
    """Each mooncake server against vllm serve at the same rate and client."""
    print("\n| server | rate req/s | client | goodput / vLLM | TTFT p50 / vLLM | TPOT p50 / vLLM |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for (server, rate, client), data in sorted(
        runs.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])
    ):
        base = runs.get(("vllm", rate, client))
        if server == "vllm" or base is None:
            continue

        def ratio(key: str, data: dict[str, Any] = data, base: dict[str, Any] = base) -> str:
            a, b = data.get(key), base.get(key)
            return f"{a / b:.2f}x" if a is not None and b else "n/a"

        print(
            f"| {SERVERS[server]} | {rate:g} | {CLIENTS[client]} | {ratio('request_goodput')} "
            f"| {ratio('median_ttft_ms')} | {ratio('median_tpot_ms')} |"
        )


def plot(runs: dict[tuple[str, float, str], dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rates = sorted({r for _, r, _ in runs})
    ax.plot(rates, rates, color="0.8", linestyle=":", label="offered rate")
    for server, sname in SERVERS.items():
        for client, cname in CLIENTS.items():
            pts = [
                (r, runs[(server, r, client)].get("request_goodput") or 0.0)
                for r in rates
                if (server, r, client) in runs
            ]
            if pts:
                style = "-" if client == "mooncake-bench" else "--"
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    style,
                    marker="o",
                    label=f"{sname} ({cname})",
                )
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("goodput (req/s within the SLO)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


CDF_RATES = (1.0, 3.0)
"""Rates whose per-request TTFT and TPOT distributions the results page draws."""


def cdfs(runs: dict[tuple[str, float, str], dict[str, Any]], rates: list[float]) -> dict[str, Any]:
    """TTFT and TPOT CDF panels (milliseconds, the mooncake client's per-request records)
    for each of ``rates``, one curve per server."""
    out: dict[str, Any] = {}
    for rate in rates:
        for field, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT")):
            groups = {
                SERVERS[s]: [
                    round(1000 * r[field], 2)
                    for r in runs[(s, rate, "mooncake-bench")].get("requests") or []
                    if isinstance(r, dict) and r.get("success") and r.get(field) is not None
                ]
                for s in SERVERS
                if (s, rate, "mooncake-bench") in runs
            }
            groups = {k: v for k, v in groups.items() if v}
            if groups:
                out[f"{label} CDF at {rate:g} req/s"] = {
                    "kind": "cdf",
                    "xlabel": f"{label} (ms)",
                    "groups": groups,
                }
    return out


def save_results(
    runs: dict[tuple[str, float, str], dict[str, Any]], root: Path, load: str = "prefix"
) -> None:
    """docs/performance.md's serving section (``benchmarks/results/serving.json``, or
    ``serving-trace.json`` for the trace-shaped load): each mooncake server against vllm
    serve at the same rate and client. On the trace-shaped load the disaggregated server's
    goodput target is 1.2x, where its prefix reuse and disaggregation should win."""
    import result_file as rf

    claims = []
    for (server, rate, client), data in sorted(
        runs.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])
    ):
        base = runs.get(("vllm", rate, client))
        if server == "vllm" or base is None:
            continue
        mode = "disaggregated" if server == "mooncake" else "colocated"
        for key, label, unit, target in (
            (
                "request_goodput",
                "goodput",
                "req/s",
                "≥ 1.2" if load == "trace" and mode == "disaggregated" else "≥ 1.0",
            ),
            ("median_ttft_ms", "TTFT p50", "ms", "≤ 1.0"),
            ("median_tpot_ms", "TPOT p50", "ms", "≤ 1.0"),
        ):
            if data.get(key) is not None and base.get(key) is not None:
                claims.append(
                    rf.claim(
                        f"{label} at {rate:g} req/s, {mode}, `{CLIENTS[client]}` client",
                        data[key],
                        unit,
                        "vllm serve",
                        base[key],
                        target=target,
                    )
                    | {"row": f"{rate:g} req/s, {mode}, `{CLIENTS[client]}`", "col": label}
                )
    if not claims:
        raise SystemExit(f"no mooncake and vllm serve results side by side under {root}")
    rates = sorted({r for _, r, _ in runs})
    groups = {
        f"{SERVERS[s]} ({CLIENTS[c]})": [
            float(runs[(s, r, c)].get("request_goodput") or 0.0) if (s, r, c) in runs else 0.0
            for r in rates
        ]
        for s in SERVERS
        for c in CLIENTS
        if any((s, r, c) in runs for r in rates)
    }
    series: dict[str, Any] = {
        "goodput by offered rate": {
            "x": [f"{r:g} req/s" for r in rates],
            "ylabel": "goodput (req/s within the SLO)",
            "groups": groups,
        }
    }
    series.update(cdfs(runs, [r for r in CDF_RATES if r in rates] or rates[:1]))
    rf.save(
        "serving" if load == "prefix" else "serving-trace",
        "Serving: mooncake serve vs vllm serve"
        + (" (a slice of the conversation trace)" if load == "trace" else ""),
        claims,
        series=series,
        notes=(
            "Results of `benchmarks/serve_compare.sh` read from "
            f"`{root}` (workload and SLOs: the script's header)."
        ),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, nargs="?", default=Path(".bench/serve"))
    ap.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/serving.json for docs/performance.md",
    )
    ap.add_argument(
        "--load",
        choices=("prefix", "trace"),
        default="prefix",
        help="the DATASET the runs used (trace: saved as serving-trace.json)",
    )
    ap.add_argument(
        "--plot", type=Path, default=None, help="write goodput vs offered rate to this PNG"
    )
    ap.add_argument("--title", default="goodput vs offered rate (llama-57m, fp32, 2 cores)")
    args = ap.parse_args()
    runs = load(args.root)
    if not runs:
        raise SystemExit(f"no <server>-r<rate>-<client>.json results under {args.root}")
    table(runs)
    ratios(runs)
    if args.plot is not None:
        plot(runs, args.plot, args.title)
        print(f"\nplot: {args.plot}")
    if args.save_results:
        save_results(runs, args.root, args.load)


if __name__ == "__main__":
    main()
