"""A decode host whose network link goes down mid-stream (``ip link set eth0 down``: no
connection breaks, packets just stop). The scheduler would notice the silent worker only
after its ``worker-ttl``, set here past the test's end; the client's watch on the worker
is not answered in time and its address neither accepts nor refuses a connection, so the
client itself takes it as gone within a bounded time (``mooncake.client_liveness``).
The stream then resumes on the other decode host from the tokens it delivered, and its
text equals an uninterrupted run."""

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

WORKER_TTL = "600s"  # how long the scheduler waits for a silent worker: past the test's end
MAX_TOKENS = 900  # a stream long enough to outlast the moment its host goes silent
CLIENT_DEADLINE_S = 60.0
"""The stream must end this soon after the link went down: long before the scheduler's
TTL, so only the client's own deadline (about 6 s) can have moved it."""

# Runs on host 1: waits until the scheduler lists both decode workers, then one greedy
# stream with the official client; after the first chunks it writes the address of the
# decode worker running it (the scheduler's /metrics) to MARK (the test then pulls that
# host's link) and goes on reading; prints the text and how long the stream took.
CLIENT = r"""
import json, re, sys, time, urllib.request
from pathlib import Path
from openai import OpenAI

base, scheduler_http, prompt = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
mark, max_tokens = Path(sys.argv[4]), int(sys.argv[5])
client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=120, max_retries=0)
RUNNING = re.compile(r"^mooncake:num_requests_running\{([^}]*)\} ([0-9.e+-]+)$", re.M)


def decode_running():
    page = urllib.request.urlopen(scheduler_http + "/metrics", timeout=30).read().decode()
    out = {}
    for labels, n in RUNNING.findall(page):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if lab.get("role") == "decode":
            out[lab["worker"]] = float(n)
    return out


deadline = time.monotonic() + 150
while True:  # the server and its workers may still be starting
    try:
        client.completions.create(
            model="m", prompt=[5, 6, 7], max_tokens=2, temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        if len(decode_running()) == 2:
            break
    except Exception as e:
        if time.monotonic() > deadline:
            raise SystemExit(f"no answer from the server: {e!r}")
    if time.monotonic() > deadline:
        raise SystemExit(f"the scheduler never listed two decode workers: {decode_running()}")
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
        busy = {}
        while not busy and time.monotonic() - t0 < 30:
            busy = {w for w, n in decode_running().items() if n > 0}
        mark.write_text(json.dumps(sorted(busy)))
print(json.dumps({"text": text, "seconds": time.monotonic() - t0}))
"""


def test_decode_link_down_mid_stream_resumes_on_the_other_decode_host(
    network_of, tiny_llama, tmp_path: Path
):
    """Hosts: 1 scheduler + server + client, 2 prefill, 3 and 4 decode. The link of the
    decode host serving the stream goes down after 3 chunks: the stream completes on the
    other decode host, equal to the uninterrupted greedy run, within the client's own
    deadline (the scheduler's worker-ttl is longer than the test)."""
    prompt = [(7 * j) % 200 + 3 for j in range(48)]
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))
    want = engine.generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    )[0].text

    net = network_of(4)
    h1, h2, h3, h4 = net.hosts
    ttl = {"DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": WORKER_TTL}
    cluster = TestCluster(net, tmp_path, env=ttl)
    cluster.worker(h2, "prefill")
    cluster.worker(h3, "decode", "worker-decode-a")
    cluster.worker(h4, "decode", "worker-decode-b")
    cluster.serve(tiny_llama)
    mark = tmp_path / "mark"
    client = h1.start(
        [
            sys.executable,
            "-c",
            CLIENT,
            cluster.server_http,
            cluster.scheduler_http,
            json.dumps(prompt),
            str(mark),
            str(MAX_TOKENS),
        ],
        tmp_path / "client.log",
    )
    logs = cluster.logs

    deadline = time.monotonic() + 240
    while not (mark.exists() and mark.read_text()):
        assert client.poll() is None, f"client ended before the stream ran\n{logs()}"
        assert time.monotonic() < deadline, f"the stream never started\n{logs()}"
        time.sleep(0.05)
    busy = json.loads(mark.read_text())
    victim = next((h for h in (h3, h4) if any(f"//{h.ip}:" in w for w in busy)), None)
    assert victim is not None and len(busy) == 1, f"no decode host runs the stream: {busy}"
    victim.link(up=False)
    try:
        client.wait(timeout=CLIENT_DEADLINE_S)
    except Exception:
        pytest.fail(
            f"the stream did not end within {CLIENT_DEADLINE_S:g} s of the link going down"
            f"\n{logs()}"
        )
    out = (tmp_path / "client.log").read_text().strip().splitlines()
    assert client.returncode == 0, logs()
    got = json.loads(out[-1])
    assert got["text"] == want, logs()
    # It was moved (not finished before the cut): the server says so.
    assert "resuming on" in (tmp_path / "server.log").read_text(), logs()
