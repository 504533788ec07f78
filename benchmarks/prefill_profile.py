"""Where one request's time to first token goes on the Dask path, against the same
engine step in-process: one request at a time, built-in model (``--null`` for the null
model), timestamps from the client, the scheduler and inside the prefill worker.

Columns (p50 over the requests, wall clock; counts per step for faults and switches):
client -> graph at the scheduler, scheduler -> lookup in the prefill task, when the engine
admitted the request relative to the lookup task (negative: admitted at placement,
before the task), the engine step (wall, CPU of the engine thread, page faults,
involuntary / voluntary context switches), and the first token's way to the client.

    python benchmarks/prefill_profile.py [--null] [--gap 0.02] [--requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from typing import Any

from distributed import SchedulerPlugin

from mooncake.client import LLM
from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine
from mooncake.request_ids import parse_task_key
from mooncake.sampling_params import SamplingParams

PARAMS = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)


def _prompts(n: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 250) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def instrument_worker(dask_worker: Any) -> dict[str, Any]:
    """Time the worker's emit of token deltas and its lookup task; the engine process
    itself times its steps and admissions (``MOONCAKE_ENGINE_PROFILE=1``)."""
    from mooncake.worker import tasks

    plugin = dask_worker.plugins["mooncake"]
    log: list[tuple[Any, ...]] = []
    plugin.profile_log = log
    engine = plugin.engine
    emit, lookup = engine.emit, tasks.lookup

    def timed_emit(topic: str, msgs: list[dict[str, Any]]) -> None:
        t = time.time()
        emit(topic, msgs)
        log.append(("emit", [m["rid"] for m in msgs], t, time.time()))

    def timed_lookup(spec: Any, placement: Any, start: str = "prefill") -> Any:
        t = time.time()
        r = lookup(spec, placement, start)
        log.append(("lookup", spec.request_id, t, time.time()))
        return r

    start = dask_worker.stream_handlers["mooncake-start"]

    def timed_start(spec: Any, **kwargs: Any) -> None:
        log.append(("start", spec.request_id, time.time()))
        start(spec=spec, **kwargs)

    timed_lookup.__module__, timed_lookup.__qualname__ = (
        lookup.__module__,
        "lookup",
    )  # pickled by name
    engine.emit, tasks.lookup = timed_emit, timed_lookup
    dask_worker.stream_handlers["mooncake-start"] = timed_start
    return {"torch_threads": engine.info["torch_threads"], "engine_pid": engine.proc.pid}


def worker_log(dask_worker: Any) -> list[tuple[Any, ...]]:
    plugin = dask_worker.plugins["mooncake"]
    engine_log: list[tuple[Any, ...]] = plugin.engine.call("profile_log").result()
    return plugin.profile_log + engine_log


class _GraphTimes(SchedulerPlugin):
    name = "prefill-profile"

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str, float]] = []
        """(event, step, request id, time)."""

    def update_graph(self, scheduler: Any, *, keys: Any = (), **kwargs: Any) -> None:
        now = time.time()
        self.log += [("graph", *parsed, now) for k in keys if (parsed := parse_task_key(k))]

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        parsed = parse_task_key(key)
        if finish == "processing" and parsed is not None:
            self.log.append(("dispatch", *parsed, time.time()))


def instrument_scheduler(dask_scheduler: Any) -> None:
    plugin = _GraphTimes()
    dask_scheduler.add_plugin(plugin)
    place = dask_scheduler.handlers["mooncake_place"]

    def timed_place(request: dict[str, Any]) -> Any:
        plugin.log.append(("place", "place", request["request_id"], time.time()))
        try:
            return place(request=request)
        finally:
            plugin.log.append(("placed", "place", request["request_id"], time.time()))

    dask_scheduler.handlers["mooncake_place"] = timed_place


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--null", action="store_true", help="null model (no forward pass)")
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between requests")
    ap.add_argument("--requests", type=int, default=30)
    args = ap.parse_args()
    prompts = _prompts(args.requests + 3, 16, 256)

    engine = LLMEngine(
        EngineConfig(
            num_blocks=2048, num_threads=1, enable_prefix_caching=False, null_model=args.null
        )
    )
    steps = []
    for p in prompts:
        engine.add_request(None, p, PARAMS)
        t0, c0 = time.perf_counter(), time.thread_time()
        engine.step()
        steps.append((time.perf_counter() - t0, time.thread_time() - c0))
    del engine
    rows: list[tuple[str, float, float]] = []
    os.environ["MOONCAKE_ENGINE_PROFILE"] = "1"  # inherited by the workers' engine processes
    with LLM(
        engine_config=EngineConfig(
            num_blocks=2048, enable_prefix_caching=False, null_model=args.null
        ),
        dashboard_address=None,
    ) as llm:
        print("engine threads per worker:", llm.client.run(instrument_worker))
        llm.client.run_on_scheduler(instrument_scheduler)

        async def run() -> None:
            for p in prompts:
                t0 = time.time()
                async for out in llm.stream(p, PARAMS):
                    rows.append((out.request_id, t0, time.time()))
                    break
                await asyncio.sleep(args.gap)

        asyncio.run(run())
        logs = llm.client.run(worker_log)
        graph_log = llm.client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins["prefill-profile"].log
        )
    ev: dict[str, dict[str, Any]] = {}
    for log in logs.values():
        for item in log:
            if item[0] in ("step", "emit"):
                for rid in item[1]:
                    ev.setdefault(rid, {}).setdefault(item[0], item[2:])
            else:
                ev.setdefault(item[1], {}).setdefault(item[0], item[2:])
    for kind, step, rid, t in graph_log:
        ev.setdefault(rid, {}).setdefault(f"{kind}-{step}", t)
    cols: dict[str, list[float]] = {}

    def add(name: str, v: float) -> None:
        cols.setdefault(name, []).append(v)

    for rid, t0, t1 in rows[3:]:
        e = ev[rid]
        s0, s1, cpu, (faults, invol, vol) = e["step"]
        add("client -> placement at the scheduler (ms)", (e["place-place"] - t0) * 1e3)
        add("placement handler at the scheduler (ms)", (e["placed-place"] - e["place-place"]) * 1e3)
        add("placement -> start at the worker (ms)", (e["start"][0] - e["place-place"]) * 1e3)
        add("start at the worker -> engine admit (ms)", (e["admit"][0] - e["start"][0]) * 1e3)
        add("client -> graph at the scheduler (ms)", (e["graph-prefill"] - t0) * 1e3)
        add("graph -> lookup in the prefill task (ms)", (e["lookup"][0] - e["graph-prefill"]) * 1e3)
        add("engine admit - lookup task start (ms)", (e["admit"][0] - e["lookup"][0]) * 1e3)
        add("client -> engine admit (ms)", (e["admit"][0] - t0) * 1e3)
        add("step wall (ms)", (s1 - s0) * 1e3)
        add("step CPU, engine thread (ms)", cpu * 1e3)
        add("step page faults", faults)
        add("step involuntary switches", invol)
        add("step voluntary switches", vol)
        add("step end -> token at the client (ms)", (t1 - s1) * 1e3)
        add("total TTFT (ms)", (t1 - t0) * 1e3)
    print(
        f"in-process step: wall {statistics.median(s[0] for s in steps[3:]) * 1e3:.2f} "
        f"ms, CPU {statistics.median(s[1] for s in steps[3:]) * 1e3:.2f} ms (p50)"
    )
    for name, v in cols.items():
        print(f"{name:40s} p50 {statistics.median(v):8.2f}   max {max(v):8.2f}")


if __name__ == "__main__":
    main()
