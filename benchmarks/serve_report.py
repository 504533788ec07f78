"""Markdown table of the results ``benchmarks/serve_compare.sh`` wrote.

    python benchmarks/serve_report.py [.bench/serve] [--save-results]

Reads ``<server>-<client>.json`` (client ``mooncake-bench`` or ``vllm-bench``; both use
vLLM's key names) and prints one row per run. With ``--save-results`` it also writes the
claims of docs/performance.md's serving section (each mooncake mode against vllm serve,
per client: goodput, TTFT p50, TPOT p50) to ``benchmarks/results/serving.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SERVERS = {"vllm": "vllm serve", "mooncake": "mooncake serve (disaggregated 1P+1D)", "mooncake-colocated": "mooncake serve (colocated)"}
CLIENTS = {"mooncake-bench": "mooncake bench serve", "vllm-bench": "vllm bench serve"}
COLS = [
    ("completed", "done", "{:.0f}"),
    ("request_throughput", "req/s", "{:.2f}"),
    ("request_goodput", "goodput req/s", "{:.2f}"),
    ("output_throughput", "out tok/s", "{:.1f}"),
    ("mean_ttft_ms", "TTFT mean ms", "{:.0f}"),
    ("median_ttft_ms", "TTFT p50 ms", "{:.0f}"),
    ("p99_ttft_ms", "TTFT p99 ms", "{:.0f}"),
    ("mean_tpot_ms", "TPOT mean ms", "{:.1f}"),
    ("median_tpot_ms", "TPOT p50 ms", "{:.1f}"),
    ("p99_tpot_ms", "TPOT p99 ms", "{:.1f}"),
    ("median_itl_ms", "ITL p50 ms", "{:.1f}"),
    ("median_e2el_ms", "E2E p50 ms", "{:.0f}"),
]


def load(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    runs = {}
    for server in SERVERS:
        for client in CLIENTS:
            path = root / f"{server}-{client}.json"
            if path.is_file():
                runs[server, client] = json.loads(path.read_text())
    return runs


def table(runs: dict[tuple[str, str], dict[str, Any]]) -> None:
    print("| server | client | " + " | ".join(c[1] for c in COLS) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in COLS) + " |")
    for (server, client), data in runs.items():
        cells = [fmt.format(data[key]) if data.get(key) is not None else "n/a" for key, _, fmt in COLS]
        print(f"| {SERVERS[server]} | {CLIENTS[client]} | " + " | ".join(cells) + " |")


def save_results(runs: dict[tuple[str, str], dict[str, Any]], root: Path) -> None:
    import result_file as results

    claims = []
    for server in ("mooncake", "mooncake-colocated"):
        for client, cname in CLIENTS.items():
            ours, peer = runs.get((server, client)), runs.get(("vllm", client))
            if ours is None or peer is None:
                continue
            mode = "disaggregated" if server == "mooncake" else "colocated"
            for key, label, unit, target in (("request_goodput", "goodput", "req/s", "≥ 1.0"), ("median_ttft_ms", "TTFT p50", "ms", "≤ 1.0"), ("median_tpot_ms", "TPOT p50", "ms", "≤ 1.0")):
                if ours.get(key) is not None and peer.get(key) is not None:
                    claims.append(results.claim(f"{label}, {mode}, `{cname}` client", ours[key], unit, "vllm serve", peer[key], target=target))
    if not claims:
        raise SystemExit(f"no mooncake and vllm results side by side under {root}")
    results.save("serving", "Serving: mooncake serve vs vllm serve", claims, notes=f"Results of `benchmarks/serve_compare.sh` read from `{root}`; goodput counts requests that met every SLO given to the clients (`GOODPUT`).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path, default=Path(".bench/serve"))
    ap.add_argument("--save-results", action="store_true", help="write benchmarks/results/serving.json")
    args = ap.parse_args()
    runs = load(args.root)
    table(runs)
    if args.save_results:
        save_results(runs, args.root)


if __name__ == "__main__":
    main()
