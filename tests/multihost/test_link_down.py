"""A decode host whose network link goes down mid-stream (``ip link set eth0 down``: no
connection breaks, packets just stop). The scheduler notices the silent worker after its
``worker-ttl``; the stream then resumes on the other decode host from the tokens it
delivered, and its text equals an uninterrupted run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from tests.multihost.conftest import TestCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WORKER_TTL = "8s"  # how long the scheduler waits for a silent worker (Dask's default: 5 minutes)
MAX_TOKENS = 900  # a stream long enough to outlast the moment its host goes silent

# Runs on host 1: one greedy stream with the official client; after the first chunks it
# creates MARK (the test then pulls the decode host's link) and goes on reading; prints
# the text and how long the stream took.
CLIENT = r"""
import json, sys, time
from pathlib import Path
from openai import OpenAI

base, prompt = sys.argv[1], json.loads(sys.argv[2])
mark, max_tokens = Path(sys.argv[3]), int(sys.argv[4])
client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)
deadline = time.monotonic() + 150
while True:  # the server and its workers may still be starting
    try:
        client.completions.create(
            model="m", prompt=[5, 6, 7], max_tokens=2, temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        break
    except Exception as e:
        if time.monotonic() > deadline:
            raise SystemExit(f"no answer from the server: {e!r}")
        time.sleep(1.0)
t0 = time.monotonic()
text, chunks = "", 0
stream = client.completions.create(
    model="m", prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
    extra_body={"ignore_eos": True},
)
for chunk in stream:
    text += chunk.choices[0].text
    chunks += 1
    if chunks == 3:
        mark.write_text("go")
print(json.dumps({"text": text, "seconds": time.monotonic() - t0}))
"""


def test_decode_link_down_mid_stream_resumes_on_the_other_decode_host(
    network_of, tiny_llama, tmp_path: Path
):
    """Hosts: 1 scheduler + server + client, 2 prefill, 3 decode (serves the stream),
    4 decode (joins once the stream runs). Host 3's link goes down after 3 chunks: the
    stream completes, equal to the uninterrupted greedy run, within the deadline."""
    prompt = [(7 * j) % 200 + 3 for j in range(48)]
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))
    want = engine.generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    )[0].text

    net = network_of(4)
    h1, h2, h3, h4 = net.hosts
    cluster = TestCluster(
        net, tmp_path, env={"DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": WORKER_TTL}, dashboard=False
    )
    cluster.worker(h2, "prefill")
    cluster.worker(h3, "decode", "worker-decode-a")
    cluster.serve(tiny_llama)
    mark = tmp_path / "mark"
    client = h1.start(
        [
            sys.executable,
            "-c",
            CLIENT,
            cluster.server_http,
            json.dumps(prompt),
            str(mark),
            str(MAX_TOKENS),
        ],
        tmp_path / "client.log",
    )
    logs = cluster.logs

    deadline = time.monotonic() + 240
    while not mark.exists():
        assert client.poll() is None, f"client ended before the stream ran\n{logs()}"
        assert time.monotonic() < deadline, f"the stream never started\n{logs()}"
        time.sleep(0.1)
    # Only now does the second decode host exist: the stream is on host 3.
    cluster.worker(h4, "decode", "worker-decode-b")
    h3.link(up=False)
    try:
        client.wait(timeout=120)
    except Exception:
        pytest.fail(f"the stream did not end within 120 s of the link going down\n{logs()}")
    out = (tmp_path / "client.log").read_text().strip().splitlines()
    assert client.returncode == 0, logs()
    got = json.loads(out[-1])
    assert got["text"] == want, logs()
    # It waited for the silent host to be declared gone (not finished before the cut).
    assert got["seconds"] > 4, got
