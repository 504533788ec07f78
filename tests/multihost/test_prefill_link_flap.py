"""A prefill host whose link flaps (``ip link set eth0 down`` ... ``up``, twice: once
shorter than the scheduler's ``worker-ttl``, once longer) while requests keep coming:
nothing hangs, every request completes or fails with an error the client can read,
and every completed one equals the uninterrupted greedy run (no KV was served from a
half-received block). Hosts: 1 scheduler + server + client, 2 prefill (flaps),
3 decode, 4 prefill."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pytest

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from tests.multihost.conftest import TestCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WORKER_TTL = "8s"
PROMPTS = 6
PROMPT_LEN = 300
MAX_TOKENS = 16
REQUEST_TIMEOUT_S = 60  # a request taking longer counts as hung

# Runs on host 1: three threads send the prompts round and round until STOP exists
# (RUNNING is written once a few have completed, for the test to start flapping), then
# one more request after the flaps. Every request's outcome: "ok" with its text,
# "error" with the HTTP status and message, or "hung" (the client gave up waiting).
CLIENT = r"""
import json, sys, threading, time
from pathlib import Path
import openai
from openai import OpenAI

base, prompts_file, running, stop, timeout, max_tokens = sys.argv[1:7]
prompts = json.loads(Path(prompts_file).read_text())
client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=float(timeout), max_retries=0)


def one(i):
    t0 = time.monotonic()
    try:
        r = client.completions.create(
            model="m", prompt=prompts[i], max_tokens=int(max_tokens), temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        out = {"kind": "ok", "text": r.choices[0].text}
    except openai.APITimeoutError as e:
        out = {"kind": "hung", "message": repr(e)}
    except openai.APIStatusError as e:
        out = {"kind": "error", "status": e.status_code, "message": str(e)}
    except Exception as e:
        out = {"kind": "other", "message": repr(e)}
    out.update(prompt=i, seconds=time.monotonic() - t0)
    return out


deadline = time.monotonic() + 150
while one(0)["kind"] != "ok":  # the server and its workers may still be starting
    if time.monotonic() > deadline:
        raise SystemExit("no answer from the server")
    time.sleep(1.0)
results, lock, turn = [], threading.Lock(), iter(range(10**6))


def loop():
    while not Path(stop).exists():
        with lock:
            i = next(turn) % len(prompts)
        r = one(i)
        with lock:
            results.append(r)
            if len(results) >= 3:
                Path(running).write_text("go")


threads = [threading.Thread(target=loop) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
after = one(len(results) % len(prompts))
print(json.dumps({"results": results, "after": after}))
"""


def test_prefill_link_flaps_nothing_hangs_nothing_half_served(
    network_of, tiny_llama, tmp_path: Path
):
    """Requests flow through both prefill hosts; host 2's link goes down for 3 s (under
    the 8 s worker-ttl: connections stall, then resume), comes back, then goes down for
    12 s (the scheduler declares the worker gone) and comes back. Every request ends
    within 60 s, completed or with an HTTP error carrying a message; completed texts
    equal the in-process engine's; a request after the flaps completes."""
    rng = random.Random(9)
    prompts = [[rng.randrange(3, 300) for _ in range(PROMPT_LEN)] for _ in range(PROMPTS)]
    engine = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))
    want = [
        o.text
        for o in engine.generate(
            prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
        )
    ]
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))

    net = network_of(4)
    h1, h2, h3, h4 = net.hosts
    cluster = TestCluster(
        net, tmp_path, env={"DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": WORKER_TTL}, dashboard=False
    )
    cluster.worker(h2, "prefill")
    cluster.worker(h3, "decode")
    cluster.worker(h4, "prefill")
    cluster.serve(tiny_llama)
    running, stop = tmp_path / "running", tmp_path / "stop"
    client = h1.start(
        [
            sys.executable,
            "-c",
            CLIENT,
            cluster.server_http,
            str(prompts_file),
            str(running),
            str(stop),
            str(REQUEST_TIMEOUT_S),
            str(MAX_TOKENS),
        ],
        tmp_path / "client.log",
    )
    deadline = time.monotonic() + 200
    while not running.exists():
        assert client.poll() is None, f"client ended before requests ran\n{cluster.logs()}"
        assert time.monotonic() < deadline, f"no requests within 200 s\n{cluster.logs()}"
        time.sleep(0.2)
    for down_s in (3.0, 12.0):
        h2.link(up=False)
        time.sleep(down_s)
        h2.link(up=True)
        time.sleep(4.0)
    stop.write_text("stop")
    try:
        # The threads finish their current requests (each bounded by the client's
        # timeout), then one more request.
        client.wait(timeout=2 * REQUEST_TIMEOUT_S + 30)
    except Exception:
        pytest.fail(f"the client did not finish: something hung\n{cluster.logs()}")
    assert client.returncode == 0, cluster.logs()
    got = json.loads((tmp_path / "client.log").read_text().strip().splitlines()[-1])
    results = got["results"]
    kinds = [r["kind"] for r in results]
    assert "hung" not in kinds and "other" not in kinds, (results, cluster.logs())
    for r in results:
        if r["kind"] == "ok":
            assert r["text"] == want[r["prompt"]], (r, cluster.logs())
        else:
            assert r["status"] >= 400 and r["message"], r
    assert kinds.count("ok") >= 3
    after = got["after"]
    assert after["kind"] == "ok" and after["text"] == want[after["prompt"]], after
