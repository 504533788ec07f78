"""``mooncake sim`` and ``mooncake sim sweep`` on a small synthetic trace file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mooncake.sim.cli import add_parser, main


def write_trace(path: Path) -> Path:
    lines = [
        json.dumps(
            {"timestamp": 500 * i, "input_length": 1024, "output_length": 8, "hash_ids": [0, i + 1]}
        )
        for i in range(30)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sim_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A replay of 30 requests exits 0, prints the summary and writes JSON with it."""
    trace = write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "r.json"
    code = main(
        [
            "--trace",
            str(trace),
            "--policy",
            "mooncake",
            "--admission",
            "predictive",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert data["summary"]["requests"] == 30
    assert "TTFT" in capsys.readouterr().out


def test_sweep_writes_capacities(tmp_path: Path) -> None:
    """sweep over two policies writes a capacity per policy and TBT SLO."""
    trace = write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "s.json"
    code = main(
        [
            "sweep",
            "--trace",
            str(trace),
            "--policies",
            "vllm,load_balancing",
            "--scales",
            "1,2",
            "--refine",
            "0",
            "--tbt-slos",
            "0.1,0.3",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
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


BAD_TRACES = {
    "no_key.jsonl": (
        '{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": '
        '[0]}\n{"timestamp": 1, "input_length": 10, "output_length": 1}\n',
        ":2: missing key 'hash_ids'",
    ),
    "bad_json.jsonl": (
        '{"timestamp": 0, "input_length": 10, "output_length": '
        '1, "hash_ids": [0]}\n\n{"timestamp": 1,\n',
        ":3: not valid JSON",
    ),
    "bad_type.jsonl": (
        '{"timestamp": 0, "input_length": "10", "output_length": 1, "hash_ids": [0]}\n',
        ":1: input_length",
    ),
    "empty.jsonl": ("\n\n", ": no requests"),
}


@pytest.mark.parametrize("name", sorted(BAD_TRACES))
def test_bad_trace_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A line without a key, bad JSON, a wrong type and an empty file each exit 2 with a
    single stderr line naming the file and (when there is one) the line; the same for
    sim and sim sweep."""
    text, expected = BAD_TRACES[name]
    path = tmp_path / name
    path.write_text(text)
    for argv in (["--trace", str(path)], ["sweep", "--trace", str(path)]):
        assert main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"error: {path}") and expected in err, err


def test_missing_file_directory_and_no_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file, a directory and no --trace at all: one line, exit 2."""
    cases = [
        (["--trace", str(tmp_path / "nope.jsonl")], "no such file"),
        (["--trace", str(tmp_path)], "is a directory"),
        ([], "--trace FILE"),
    ]
    for argv, expected in cases:
        assert main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and expected in err, err


def test_json_has_schema_version_and_optional_records(tmp_path: Path) -> None:
    """--json carries schema_version 1, the split and no records; --records adds one
    record per request, in trace order."""
    trace = write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "r.json"
    assert main(["--trace", str(trace), "--json", str(out), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert (
        data["schema_version"] == 1
        and data["kind"] == "run"
        and data["split"] == "8P+8D"
        and "records" not in data
    )
    assert main(["--trace", str(trace), "--json", str(out), "--records", "--no-progress"]) == 0
    records = json.loads(out.read_text())["records"]
    assert [r["index"] for r in records] == list(range(30))
    assert all(r["ttft_s"] > 0 and r["prefill_instance"].startswith("prefill-") for r in records)


def test_help_has_no_rest_markup() -> None:
    """``mooncake sim --help`` and ``sim sweep --help`` print plain text: no ``double
    backticks`` or :role: markup from docstrings."""
    parser = argparse.ArgumentParser(prog="mooncake")
    add_parser(parser.add_subparsers(dest="command"))
    sim = parser._subparsers._group_actions[0].choices["sim"]  # type: ignore[union-attr]
    sweep = sim._subparsers._group_actions[0].choices["sweep"]  # type: ignore[union-attr]
    for p in (sim, sweep):
        text = p.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text


def test_plot_title_names_policy_split_scale_and_slos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--plot draws a title with policy, split, rate scale and admission, and SLO lines
    at the TTFT SLO and the TBT SLOs; the PNG is written."""
    import mooncake.sim.plot as plot

    seen: dict[str, object] = {}
    real = plot.plot_run

    def spy(result: object, path: Path, **kw: object) -> None:
        seen.update(kw)
        real(result, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(plot, "plot_run", spy)
    trace = write_trace(tmp_path / "t.jsonl")
    png = tmp_path / "p.png"
    assert (
        main(
            [
                "--trace",
                str(trace),
                "--policy",
                "vllm",
                "--prefill-instances",
                "3",
                "--decode-instances",
                "1",
                "--rate-scale",
                "2",
                "--plot",
                str(png),
                "--no-progress",
            ]
        )
        == 0
    )
    assert seen["title"] == "vllm, 4 colocated, rate x2, admission none"
    assert seen["ttft_slo_s"] == 30.0 and 0.1 in seen["tbt_slos_s"]  # type: ignore[operator]
    assert png.stat().st_size > 0


def test_parse_instances() -> None:
    """POLICY=P:D per policy, vllm=N for N colocated instances, mooncake=auto; bad
    items name the field."""
    from mooncake.sim.cli import parse_instances

    assert parse_instances("vllm=16,mooncake=12:4,random=auto") == {
        "vllm": (16, 0),
        "mooncake": (12, 4),
        "random": None,
    }
    for bad in ("mooncake", "mooncake=12", "vllm=auto", "mooncake=0:4", "best=1:1"):
        with pytest.raises(ValueError, match=r"instances|policy"):
            parse_instances(bad)


def test_sweep_per_policy_instances_and_auto_split(tmp_path: Path) -> None:
    """--instances vllm=2,mooncake=auto over 3 nodes: vllm runs 2 colocated instances;
    mooncake tries 1P+2D and 2P+1D and reports the best with every split's capacity."""
    trace = write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "s.json"
    argv = [
        "sweep",
        "--trace",
        str(trace),
        "--policies",
        "vllm,mooncake",
        "--instances",
        "vllm=2,mooncake=auto",
        "--prefill-instances",
        "2",
        "--decode-instances",
        "1",
    ]
    assert (
        main(
            [
                *argv,
                "--scales",
                "1,4",
                "--refine",
                "0",
                "--tbt-slos",
                "0.1",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["kind"] == "sweep"
    vllm, moon = data["curves"]
    assert vllm["split"] == "2 colocated" and "splits_tried" not in vllm
    assert set(moon["splits_tried"]) == {"1P+2D", "2P+1D"}
    assert moon["split"] in moon["splits_tried"]
    assert main([*argv[:5], "--instances", "random=2:2", "--no-progress"]) == 2


def test_what_if_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--what-if decode-refusal,layerwise-transfer sets both SimConfig fields (written
    in the JSON config); an unknown name is a one-line error, exit 2."""
    trace = write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "--trace",
                str(trace),
                "--what-if",
                "decode-refusal,layerwise-transfer",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    cfg = json.loads(out.read_text())["config"]
    assert (cfg["decode_refusal"], cfg["layerwise_transfer"], cfg["reserve_full_output"]) == (
        True,
        True,
        False,
    )
    assert main(["--trace", str(trace), "--what-if", "magic", "--no-progress"]) == 2
    assert "what_if" in capsys.readouterr().err


def test_vllm_cache_aware_policy_and_prefix_cache_flag(tmp_path: Path) -> None:
    """--policy vllm-cache-aware is the colocated baseline routed by load and local
    prefix; --colocated-cache-blocks 0 turns its prefix caching off."""
    trace = write_trace(tmp_path / "t.jsonl")
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "--trace",
                str(trace),
                "--policy",
                "vllm-cache-aware",
                "--colocated-cache-blocks",
                "0",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    cfg = data["config"]
    assert (cfg["mode"], cfg["conductor"]["prefill_policy"], cfg["colocated_cache_blocks"]) == (
        "colocated",
        "local_cache_aware",
        0,
    )
    assert data["summary"]["cache_hit_rate"] == 0.0


def test_sim_uses_an_exported_cost_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cost-model FILE replays with the file's timings: a cost model whose prefill is
    10× slower than the default gives a higher mean TTFT; a broken file is one line,
    exit 2."""
    from dataclasses import asdict

    from mooncake.conductor import CostModel

    trace = write_trace(tmp_path / "t.jsonl")
    base = CostModel()
    rate = 1.0 / (base.hardware.peak_flops * base.hardware.mfu)
    doc = {
        "schema_version": 1,
        "model": asdict(base.model),
        "hardware": asdict(base.hardware),
        "prefill_fit": {
            "per_attn_flop_s": 10 * rate,
            "per_linear_flop_s": 10 * rate,
            "fixed_s": 0.0,
        },
    }
    cm = tmp_path / "cost.json"
    cm.write_text(json.dumps(doc))
    fast, slow = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["--trace", str(trace), "--json", str(fast), "--no-progress"]) == 0
    assert (
        main(["--trace", str(trace), "--cost-model", str(cm), "--json", str(slow), "--no-progress"])
        == 0
    )
    t_fast = json.loads(fast.read_text())["summary"]["ttft_mean_s"]
    t_slow = json.loads(slow.read_text())["summary"]["ttft_mean_s"]
    assert t_slow > 5 * t_fast
    cm.write_text("{}")
    capsys.readouterr()
    assert main(["--trace", str(trace), "--cost-model", str(cm), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "schema_version" in err
