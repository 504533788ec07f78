"""``mooncake bench serve``'s load generator against a real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from mooncake.bench import LoadConfig, prefix_repetition_dataset, run_load, summarize
from mooncake.cli import main
from tests.server.conftest import ServerThread


def test_run_load_prefix_repetition(server: ServerThread) -> None:
    """Eight requests over two shared prefixes at 20 req/s: all succeed with exactly their output
    lengths, TTFT/TPOT are measured, and the server reports cached prefix tokens."""
    reqs = prefix_repetition_dataset(
        8, prefix_len=48, suffix_len=8, num_prefixes=2, output_len=5, vocab=(16, 250)
    )
    cfg = LoadConfig(base_url=server.base_url, request_rate=20.0, progress=False)
    results, duration, _ = asyncio.run(run_load(cfg, reqs))
    assert all(r.success for r in results), [r.error for r in results]
    assert [r.output_tokens for r in results] == [5] * 8
    assert all(r.ttft_s > 0 and r.latency_s >= r.ttft_s for r in results)
    s = summarize(results, duration, {"ttft": 60_000.0})
    assert s["completed"] == 8 and s["total_output_tokens"] == 40 and s["request_goodput"] > 0
    assert s["cached_prompt_tokens"] > 0


def test_cli_writes_json_and_plot(server: ServerThread, tmp_path: Path) -> None:
    """The command prints the table and writes the JSON result and the PNG plot."""
    rc = main(
        [
            "bench",
            "serve",
            "--base-url",
            server.base_url,
            "--dataset-name",
            "random",
            "--num-prompts",
            "3",
            "--random-input-len",
            "8",
            "--random-output-len",
            "3",
            "--vocab-size",
            "250",
            "--request-rate",
            "50",
            "--goodput",
            "ttft:60000",
            "--save-result",
            "--result-dir",
            str(tmp_path),
            "--result-filename",
            "r.json",
            "--disable-tqdm",
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert (
        data["completed"] == 3 and data["total_output_tokens"] == 9 and len(data["requests"]) == 3
    )
    assert (tmp_path / "r.png").stat().st_size > 1000
