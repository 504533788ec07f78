"""Markdown table of the results ``benchmarks/serve_compare.sh`` wrote.

    python benchmarks/serve_report.py docs/serve-bench

Reads ``<server>-<client>.json`` (client ``mooncake-bench`` or ``vllm-bench``; both use
vLLM's key names) and prints one row per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def main(root: Path) -> None:
    print("| server | client | " + " | ".join(c[1] for c in COLS) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in COLS) + " |")
    for server, sname in SERVERS.items():
        for client, cname in CLIENTS.items():
            path = root / f"{server}-{client}.json"
            if not path.is_file():
                continue
            data = json.loads(path.read_text())
            cells = [fmt.format(data[key]) if data.get(key) is not None else "n/a" for key, _, fmt in COLS]
            print(f"| {sname} | {cname} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/serve-bench"))
