"""``mooncake cost-model`` against a live cluster, and the simulator reading its file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import mooncake
from mooncake.cli import main
from mooncake.conductor.cost_export import load_cost_model
from mooncake.config import EngineConfig

pytestmark = pytest.mark.cluster


def test_export_from_live_cluster_feeds_the_simulator(tiny_llama: Path, tmp_path: Path) -> None:
    """1P+1D cluster serves 4 requests; `mooncake cost-model --scheduler ADDR --out F`
    writes the Conductor's fit (with its observed prefills counted), which loads as a
    CostModel with the served model's shape, and `mooncake sim --cost-model F` replays
    a small trace with it (exit 0)."""
    params = mooncake.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    with mooncake.LLM(
        str(tiny_llama),
        prefill_workers=1,
        decode_workers=1,
        engine_config=EngineConfig(num_blocks=256),
        dashboard_address=None,
    ) as llm:
        llm.generate([[i % 300 + 1] * (40 + 20 * i) for i in range(4)], params, use_tqdm=False)
        # The workers report their engines' steps every 50 ms: the last decode steps may
        # reach the Conductor just after the outputs do.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fitted = llm.client.sync(llm.client.scheduler.mooncake_cost_model)
            if fitted["decode_observations"] >= 1:
                break
            time.sleep(0.1)
        out = tmp_path / "cost.json"
        # The embedded cluster is TLS with an in-memory CA: hand its certificate to the CLI.
        sec = llm.cluster.security
        pem, key = tmp_path / "cluster.pem", tmp_path / "cluster.key"
        pem.write_text(sec.tls_ca_file)
        key.write_text(sec.tls_client_key)
        tls = ["--tls-ca-file", str(pem), "--tls-cert", str(pem), "--tls-key", str(key)]
        assert (
            main(
                ["cost-model", "--scheduler", llm.client.scheduler.address, "--out", str(out), *tls]
            )
            == 0
        )
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and doc["prefill_observations"] >= 1
    # The decode worker ran decode-only steps: the fit left the prior.
    assert doc["decode_observations"] >= 1 and doc["decode_fit"] is not None
    cost = load_cost_model(out)
    assert cost.prefill_fit is not None and cost.model.num_layers == doc["model"]["num_layers"]
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        "\n".join(
            json.dumps(
                {"timestamp": 100 * i, "input_length": 64, "output_length": 4, "hash_ids": [0, i]}
            )
            for i in range(10)
        )
        + "\n"
    )
    assert (
        main(
            [
                "sim",
                "--trace",
                str(trace),
                "--cost-model",
                str(out),
                "--prefill-instances",
                "1",
                "--decode-instances",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )


def test_unreachable_scheduler_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """No scheduler at the address: one error line, exit 2, within the timeout."""
    assert main(["cost-model", "--scheduler", "tcp://127.0.0.1:9", "--timeout", "1"]) == 2
    assert "cannot reach" in capsys.readouterr().err
