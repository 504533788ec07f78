"""Algorithm 1's remote-prefix path between two hosts: a prefix cached on prefill host 2
is fetched by prefill host 4 once host 2's queue makes that faster, and the requests
that fetched it report it as cached tokens. Hosts: 1 scheduler + server + client,
2 and 4 prefill, 3 decode (see conftest)."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from tests.multihost.conftest import TestCluster, metric_sum

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PREFIX = 480  # 30 blocks of 16 tokens
SUFFIX = 400
BURST = 8
ROUNDS = 3
MAX_TOKENS = 4

# Runs on host 1. The warm-up request leaves PREFIX on host 2 (the only prefill worker
# then); WARM tells the test to start host 4's worker, and the client waits until the
# Conductor lists it. Then bursts of requests sharing the prefix, sent at once, until
# one of them was served with a prefix fetched from another worker (the holder's queue
# grows with each placement until fetching to the idle worker is faster). Prints every
# prompt sent with its text and cached tokens, the scheduler's /metrics and, through a
# Dask client (TLS), each worker's lookup counters.
CLIENT = r"""
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from distributed import Client
from openai import OpenAI
from mooncake.security import TLSFiles, client_security
from mooncake.worker.tasks import engine_stats

base, scheduler_http, prompts_file, warm_mark, max_tokens, sched, ca, cert, key = sys.argv[1:10]
warm, rounds = json.loads(Path(prompts_file).read_text())
client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=60, max_retries=0)


def complete(prompt):
    r = client.completions.create(
        model="m", prompt=prompt, max_tokens=int(max_tokens), temperature=0.0,
        extra_body={"ignore_eos": True},
    )
    return r.choices[0].text, r.usage.prompt_tokens_details.cached_tokens


def metrics():
    return urllib.request.urlopen(scheduler_http + "/metrics", timeout=30).read().decode()


def remote_hits(page):
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
        if line.startswith("mooncake:prefix_cache_hits_total{") and 'source="remote"' in line
    )


deadline = time.monotonic() + 150
while True:  # the server and its workers may still be starting
    try:
        complete([5, 6, 7])
        break
    except Exception as e:
        if time.monotonic() > deadline:
            raise SystemExit(f"no answer from the server: {e!r}")
        time.sleep(1.0)
sent = [(warm, *complete(warm))]
Path(warm_mark).write_text("warm")
deadline = time.monotonic() + 120
while 'worker="tls://10.77.0.4:' not in metrics():  # host 4 joined the Conductor
    if time.monotonic() > deadline:
        raise SystemExit("host 4's prefill worker never joined")
    time.sleep(0.5)
used = 0
with ThreadPoolExecutor(len(rounds[0])) as pool:
    for burst in rounds:
        used += 1
        sent += [(p, *r) for p, r in zip(burst, pool.map(complete, burst))]
        time.sleep(1.0)  # the transfer counters reach the scheduler with the workers' reports
        if remote_hits(metrics()) > 0:
            break
with Client(sched, security=client_security(TLSFiles(ca, cert, key)), timeout=60) as dc:
    stats = {
        w: {k: s[k] for k in ("hit_blocks", "prefix_fetch_paths")}
        for w, s in dc.run(engine_stats).items()
    }
print(json.dumps({"sent": sent, "rounds": used, "metrics": metrics(), "stats": stats}))
"""


def test_prefix_on_host2_is_fetched_by_host4(network_of, tiny_llama, tmp_path: Path):
    """A 480-token prefix prefilled on host 2; bursts of 8 requests sharing it (400-token
    suffixes each) until the Conductor sends some to host 4 with the prefix fetched from
    host 2: every burst request reports the 480 prefix tokens as cached (host 4's
    included: fetched, not recomputed), greedy texts equal the in-process engine's, the
    remote hits and the fetched bytes show in the scheduler's metrics, host 4's
    counters say its remote blocks came over TCP from the block server, and no byte
    went through shared memory (the hosts have none in common)."""
    rng = random.Random(5)
    prefix = [rng.randrange(3, 300) for _ in range(PREFIX)]

    def prompt() -> list[int]:
        return prefix + [rng.randrange(3, 300) for _ in range(SUFFIX)]

    warm = prompt()
    rounds = [[prompt() for _ in range(BURST)] for _ in range(ROUNDS)]
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps([warm, rounds]))

    net = network_of(4)
    h1, h2, h3, h4 = net.hosts
    cluster = TestCluster(net, tmp_path)
    cluster.worker(h2, "prefill")
    cluster.worker(h3, "decode")
    cluster.serve(tiny_llama)
    warm_mark = tmp_path / "warm"
    client = h1.start(
        [
            sys.executable,
            "-c",
            CLIENT,
            cluster.server_http,
            cluster.scheduler_http,
            str(prompts_file),
            str(warm_mark),
            str(MAX_TOKENS),
            cluster.address,
            *cluster.tls[1::2],  # CA, certificate, key
        ],
        tmp_path / "client.log",
    )
    deadline = time.monotonic() + 200
    while not warm_mark.exists():
        assert client.poll() is None, f"client ended before the warm-up\n{cluster.logs()}"
        assert time.monotonic() < deadline, f"no warm-up within 200 s\n{cluster.logs()}"
        time.sleep(0.2)
    cluster.worker(h4, "prefill")
    try:
        client.wait(timeout=150)
    except Exception:
        pytest.fail(f"the client did not finish within 150 s\n{cluster.logs()}")
    assert client.returncode == 0, cluster.logs()
    got = json.loads((tmp_path / "client.log").read_text().strip().splitlines()[-1])
    metrics = got["metrics"]
    assert metric_sum(metrics, "mooncake:prefix_cache_hits", 'source="remote"') >= PREFIX, (
        f"no prefix was fetched from another worker in {got['rounds']} bursts\n{metrics[-3000:]}"
    )
    assert metric_sum(metrics, "mooncake:kv_transfer_bytes", 'path="prefix-fetch"') > 0
    assert metric_sum(metrics, "mooncake:kv_transfer_bytes", 'path="shm"') == 0
    # Host 4 fetched the prefix, through host 2's block server (TCP); host 2 never did.
    stats = {w.split("://")[1].split(":")[0]: s for w, s in got["stats"].items()}
    assert stats[h4.ip]["hit_blocks"].get("remote", 0) >= PREFIX // 16, stats
    assert set(stats[h4.ip]["prefix_fetch_paths"]) == {"tcp"}, stats
    assert stats[h2.ip]["hit_blocks"].get("remote", 0) == 0, stats
    sent = got["sent"]
    assert all(cached == PREFIX for _, _, cached in sent[1:]), [c for _, _, c in sent]
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=512))
    want = engine.generate(
        [p for p, _, _ in sent],
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True),
    )
    assert [t for _, t, _ in sent] == [o.text for o in want]
