"""What the Dask runtime costs, counted rather than timed: CPU time per process and
messages per worker, idle and per request.

Starts an embedded cluster (1 prefill + 1 decode worker, built-in model or ``--model``)
and reads, for each kind of process in the tree (this process: the client and the
embedded scheduler with its Conductor and the Nannies; the Dask workers; the engine
processes), summed over the processes of that kind:

1. idle: CPU ms per second over ``--idle`` seconds with no request;
2. load: CPU ms per request while ``--requests`` requests (``--max-tokens`` each) run,
   ``--concurrency`` at a time;

and, for each worker, the messages it sent in each window: reports to the Conductor and
everything on its batched stream to the scheduler (task results, secede notices,
token deltas that took the Dask path). CPU time and counts barely move with the
machine's load, unlike wall time, so this runs on a busy machine too.

    python benchmarks/runtime_overhead.py [--model DIR] [--idle 10] [--requests 32]
        [--concurrency 16] [--max-tokens 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from typing import Any

import psutil

from mooncake.client import LLM
from mooncake.config import EngineConfig
from mooncake.sampling_params import SamplingParams


def _counts(dask_worker: Any) -> dict[str, int]:
    """This worker's message counters (run on each worker with ``Client.run``)."""
    plugin = dask_worker.plugins["mooncake"]
    return {
        "reports": int(getattr(plugin, "reports_sent", 0)),
        "stream": int(dask_worker.batched_stream.message_count),
        "pid": os.getpid(),
    }


def _kind(p: psutil.Process, worker_pids: set[int]) -> str:
    if p.pid == os.getpid():
        return "client+scheduler"
    if p.pid in worker_pids:
        return "worker"
    if "engine_process" in " ".join(p.cmdline()):
        return "engine"
    return "other"  # multiprocessing's helpers


def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def _window(
    llm: LLM, procs: list[psutil.Process], kinds: dict[int, str], run: Any
) -> tuple[dict[str, float], dict[str, dict[str, int]], float]:
    """CPU seconds per process kind and message counts per worker over ``run()``."""
    c0, m0 = _cpu(procs), llm.client.run(_counts)
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    c1, m1 = _cpu(procs), llm.client.run(_counts)
    by_kind: dict[str, float] = {}
    for pid, t in c1.items():
        k = kinds[pid]
        by_kind[k] = by_kind.get(k, 0.0) + t - c0.get(pid, t)
    msgs = {w: {k: m1[w][k] - m0[w][k] for k in ("reports", "stream")} for w in m1 if w in m0}
    return by_kind, msgs, wall


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None)
    ap.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 250) for _ in range(rng.randrange(16, 128))] for _ in range(64)]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    res: dict[str, Any] = {}
    with LLM(
        args.model,
        engine_config=EngineConfig(num_blocks=2048, enable_prefix_caching=False),
        dashboard_address=None,
    ) as llm:
        llm.generate(prompts[:4], params, use_tqdm=False)  # warm up
        time.sleep(1.0)
        worker_pids = {c["pid"] for c in llm.client.run(_counts).values()}
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        kinds = {p.pid: _kind(p, worker_pids) for p in procs}

        cpu, msgs, wall = _window(llm, procs, kinds, lambda: time.sleep(args.idle))
        res["idle_cpu_ms_per_s"] = {k: v * 1e3 / wall for k, v in sorted(cpu.items())}
        res["idle_msgs_per_s"] = {
            w: {k: v / wall for k, v in m.items()} for w, m in sorted(msgs.items())
        }

        async def load() -> None:
            sem = asyncio.Semaphore(args.concurrency)

            async def one(p: list[int]) -> None:
                async with sem:
                    async for _ in llm.stream(p, params):
                        pass

            await asyncio.gather(*(one(prompts[i % len(prompts)]) for i in range(args.requests)))

        cpu, msgs, wall = _window(llm, procs, kinds, lambda: asyncio.run(load()))
        n = args.requests
        res["load_wall_s"] = wall
        res["load_cpu_ms_per_request"] = {k: v * 1e3 / n for k, v in sorted(cpu.items())}
        res["load_msgs_per_request"] = {
            w: {k: v / n for k, v in m.items()} for w, m in sorted(msgs.items())
        }
    res["loadavg"] = os.getloadavg()
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
