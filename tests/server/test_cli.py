"""``mooncake serve`` arguments and the command itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from mooncake.cli import build_parser
from mooncake.server.cli import config_from_args
from tests.server.conftest import free_port


def test_serve_arguments_build_config() -> None:
    """Flags map onto ServerConfig and EngineConfig; defaults serve the built-in model
    locally; streaming and core lending are off unless asked for."""
    cfg = config_from_args(build_parser().parse_args(["serve"]))
    assert (
        cfg.model is None and cfg.host == "127.0.0.1" and cfg.port == 8000 and cfg.api_key is None
    )
    assert (cfg.prefill_workers, cfg.decode_workers, cfg.mode) == (1, 1, "disaggregated")
    assert cfg.stream_kv is False
    assert config_from_args(build_parser().parse_args(["serve", "--stream-kv"])).stream_kv
    assert cfg.cpu_core_lending is False
    lend = ["serve", "--cpu-core-lending"]
    assert config_from_args(build_parser().parse_args(lend)).cpu_core_lending
    assert not config_from_args(
        build_parser().parse_args(lend + ["--no-cpu-core-lending"])
    ).cpu_core_lending
    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            "/m",
            "--prefill-workers",
            "2",
            "--decode-workers",
            "3",
            "--port",
            "9001",
            "--api-key",
            "k",
            "--ttft-slo",
            "2",
            "--tbt-slo",
            "0.2",
            "--mode",
            "colocated",
            "--max-model-len",
            "512",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.model, cfg.prefill_workers, cfg.decode_workers, cfg.port) == ("/m", 2, 3, 9001)
    assert (cfg.api_key, cfg.ttft_slo_s, cfg.tbt_slo_s, cfg.mode) == ("k", 2.0, 0.2, "colocated")
    assert cfg.engine.model == "/m" and cfg.engine.max_model_len == 512


def test_security_and_limit_flags_and_admission_default() -> None:
    """Defaults: dashboard on loopback, TLS for the embedded cluster (not insecure), body and
    prompt limits, and admission on (ttft against the documented default SLO); the flags
    override each, and ``--admission none`` turns admission off."""
    from mooncake.server.backend import conductor_config
    from mooncake.server.config import DEFAULT_TTFT_SLO_S

    cfg = config_from_args(build_parser().parse_args(["serve"]))
    assert cfg.dashboard_address == "127.0.0.1:0" and not cfg.insecure and cfg.tls_ca_file is None
    assert (cfg.max_body_bytes, cfg.max_prompts_per_request, cfg.max_prompt_chars) == (
        8 * 1024**2,
        32,
        None,
    )
    cc = conductor_config(cfg)
    assert (cc.admission, cc.ttft_slo_s) == ("ttft", DEFAULT_TTFT_SLO_S)
    assert (
        conductor_config(
            config_from_args(build_parser().parse_args(["serve", "--admission", "none"]))
        ).admission
        == "none"
    )
    assert (
        conductor_config(
            config_from_args(build_parser().parse_args(["serve", "--tbt-slo", "0.2"]))
        ).admission
        == "predictive"
    )
    cfg = config_from_args(
        build_parser().parse_args(
            [
                "serve",
                "--dashboard-address",
                ":8787",
                "--scheduler",
                "tls://10.0.0.1:8786",
                "--tls-ca-file",
                "ca.pem",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--max-body-bytes",
                "1000",
                "--max-prompts-per-request",
                "4",
                "--max-prompt-chars",
                "99",
            ]
        )
    )
    assert (cfg.dashboard_address, cfg.tls_ca_file, cfg.tls_cert, cfg.tls_key) == (
        ":8787",
        "ca.pem",
        "c.pem",
        "k.pem",
    )
    assert (cfg.max_body_bytes, cfg.max_prompts_per_request, cfg.max_prompt_chars) == (1000, 4, 99)
    assert (
        config_from_args(
            build_parser().parse_args(["serve", "--dashboard-address", "none"])
        ).dashboard_address
        is None
    )


def test_bad_values_name_the_field() -> None:
    """A bad value is a ValueError naming the field (the CLI prints it and exits 2)."""
    with pytest.raises(ValueError, match="prefill_workers"):
        config_from_args(build_parser().parse_args(["serve", "--prefill-workers", "0"]))
    with pytest.raises(ValueError, match="tbt_slo_s"):
        config_from_args(build_parser().parse_args(["serve", "--tbt-slo", "-1"]))
    with pytest.raises(ValueError, match="max_body_bytes"):
        config_from_args(build_parser().parse_args(["serve", "--max-body-bytes", "0"]))
    with pytest.raises(ValueError, match="tls_ca_file"):
        config_from_args(build_parser().parse_args(["serve", "--tls-cert", "c.pem"]))


@pytest.mark.slow
@pytest.mark.cluster
def test_mooncake_serve_default_model(tmp_path: object) -> None:
    """``mooncake serve`` with no model serves the built-in default model on an embedded cluster,
    and the documented curl request works."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mooncake.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.5)
        out = subprocess.run(
            [
                "curl",
                "-s",
                f"http://127.0.0.1:{port}/v1/completions",
                "-H",
                "Content-Type: application/json",
                "-d",
                '{"model": "mooncake-default-random-v1", "prompt": "Hello", "max_tokens": 8}',
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        body = json.loads(out)
        assert body["object"] == "text_completion"
        # The documented request samples (temperature 1): the random-weight model may
        # draw its end-of-sequence token before the 8th.
        choice = body["choices"][0]
        n = body["usage"]["completion_tokens"]
        assert 1 <= n <= 8 and choice["finish_reason"] == ("length" if n == 8 else "stop"), body
    finally:
        proc.terminate()
        proc.wait(timeout=60)
