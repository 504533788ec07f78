"""``mooncake sim`` and ``mooncake sim sweep`` on a small synthetic trace file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mooncake.sim.cli import add_parser, main


def write_trace(path: Path) -> Path:
    lines = [json.dumps({"timestamp": 500 * i, "input_length": 1024, "output_length": 8, "hash_ids": [0, i + 1]}) for i in range(30)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sim_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A replay of 30 requests exits 0, prints the summary and writes JSON with it."""
    trace = write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "r.json"
    code = main(["--trace", str(trace), "--policy", "mooncake", "--admission", "predictive", "--json", str(out), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["summary"]["requests"] == 30
    assert "TTFT" in capsys.readouterr().out


def test_sweep_writes_capacities(tmp_path: Path) -> None:
    """sweep over two policies writes a capacity per policy and TBT SLO."""
    trace = write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "s.json"
    code = main(["sweep", "--trace", str(trace), "--policies", "vllm,load_balancing", "--scales", "1,2", "--refine", "0", "--tbt-slos", "0.1,0.3", "--json", str(out), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["curves"]] == ["vllm", "load_balancing"]
    assert set(data["curves"][0]["capacity"]) == {"ttft<=30,tbt<=0.1", "ttft<=30,tbt<=0.3"}


def test_add_parser_registers_sim_on_a_host_cli(tmp_path: Path) -> None:
    """The top-level CLI only calls add_parser(subparsers); handlers return ints;
    a missing trace is exit code 2; an unknown policy too."""
    parser = argparse.ArgumentParser(prog="mooncake")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim", "--trace", str(tmp_path / "missing.jsonl")])
    assert args.func(args) == 2
    trace = write_trace(tmp_path / "t.jsonl")
    args = parser.parse_args(["sim", "--trace", str(trace), "--policy", "best"])
    assert args.func(args) == 2
    args = parser.parse_args(["sim", "sweep", "--trace", str(trace)])
    assert args.func.__name__ == "run_sweep"
