"""`mooncake serve` over a cluster of four test hosts (network namespaces, see conftest):
host 1 runs `dask scheduler` and `mooncake serve --scheduler`, host 2 and host 4 a
prefill worker each, host 3 a decode worker. The official `openai` client on host 1
talks to the server; KV crosses from a prefill host to the decode host over TCP. The
cluster's comms are TLS (docs/security.md), with one certificate for every process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from tests.multihost.conftest import TestCluster, metric_sum

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Runs on host 1: waits for the server to answer, then sends the prompts one at a time
# with the official client and prints the texts and the scheduler's /metrics (where the
# Conductor publishes the cluster's KV transfers by path) as JSON.
CLIENT = r"""
import json, sys, time, urllib.request
from openai import OpenAI

base, scheduler_http, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=60, max_retries=0)
deadline = time.monotonic() + 150
texts, last = [], None
for prompt in prompts:
    while True:
        try:
            r = client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0.0)
            texts.append(r.choices[0].text)
            break
        except Exception as e:  # the server or its workers still starting
            last = e
            if time.monotonic() > deadline:
                raise SystemExit(f"no answer from the server: {last!r}")
            time.sleep(1.0)
metrics = urllib.request.urlopen(scheduler_http + "/metrics", timeout=30).read().decode()
print(json.dumps({"texts": texts, "metrics": metrics}))
"""


def test_openai_client_across_four_hosts(network_of, tiny_llama, tmp_path: Path):
    """Greedy completions through the HTTP server on host 1 equal the in-process
    engine's; the KV reached the decode host over TCP (the transfer metrics say so, and
    no byte went through shared memory, which the hosts do not share)."""
    prompts = [[(11 * i + j) % 200 + 3 for j in range(n)] for i, n in enumerate((40, 70, 33))]
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))
    want = [
        o.text for o in engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12))
    ]

    net = network_of(4)
    h1, h2, h3, h4 = net.hosts
    cluster = TestCluster(net, tmp_path)
    for host, role in ((h2, "prefill"), (h3, "decode"), (h4, "prefill")):
        cluster.worker(host, role)
    cluster.serve(tiny_llama)
    res = h1.run(
        [
            sys.executable,
            "-c",
            CLIENT,
            cluster.server_http,
            cluster.scheduler_http,
            json.dumps(prompts),
        ],
        timeout=240,
    )
    assert res.returncode == 0, f"client failed: {res.stderr[-3000:]}\n{cluster.logs()}"
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["texts"] == want
    tcp = metric_sum(got["metrics"], "mooncake:kv_transfer_bytes", 'path="tcp"')
    assert tcp > 0, got["metrics"][-3000:]
    assert metric_sum(got["metrics"], "mooncake:kv_transfer_bytes", 'path="shm"') == 0
