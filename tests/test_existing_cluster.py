"""Joining an existing cluster: ``dask scheduler`` plus ``mooncake worker`` processes,
then ``LLM(scheduler=...)``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

import mooncake
from mooncake.config import EngineConfig

pytestmark = pytest.mark.cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_llm_joins_scheduler_with_mooncake_workers(tiny_llama):
    """Prefill and decode run on the workers started by `mooncake worker --role ...`."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                ":0",
            ],
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        time.sleep(2)
        for role in ("prefill", "decode"):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "mooncake.cli",
                        "worker",
                        addr,
                        "--role",
                        role,
                        "--nthreads",
                        "2",
                    ],
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(addr) as c:
            c.wait_for_workers(2, timeout=60)
        with mooncake.LLM(
            str(tiny_llama), scheduler=addr, engine_config=EngineConfig(num_blocks=256)
        ) as llm:
            roles = sorted(tuple(i["roles"]) for i in llm.workers.values())
            assert roles == [("decode",), ("prefill",)]
            out = llm.generate(
                [list(range(1, 40))],
                mooncake.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                use_tqdm=False,
            )[0]
            assert len(out.token_ids) == 8
            ran = llm.history([out.request_id])[0]["ran_on"]
            assert llm.workers[ran["prefill"]]["roles"] == ["prefill"]
            assert llm.workers[ran["decode"]]["roles"] == ["decode"]
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
