"""Chaos: a steady load through a 1 prefill + 2 decode cluster while a random worker is
killed (``kill -9``) every ``--kill-every`` seconds; the Nanny restarts each one.

Every request ends one of three ways:

- completed;
- failed with a clear error (``WorkerLost``, ``Unavailable`` or ``Rejected``);
- lost: neither within ``--request-timeout`` seconds (or any other exception): a bug.

For the requests that were moved off a lost worker (``LLM.moves``) it prints the extra
TTFT and end-to-end time over the median of the requests that were not moved.

    python benchmarks/chaos.py [--model DIR] [--dataset prefix-repetition|mooncake-trace]
        [--num-prompts 200] [--rate 4] [--kill-every 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mooncake.bench.datasets import SampleRequest, mooncake_trace_dataset, prefix_repetition_dataset
from mooncake.client import LLM, Rejected, Unavailable
from mooncake.config import EngineConfig
from mooncake.sampling_params import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
TRACE = Path(os.environ.get("MOONCAKE_TRACES") or ROOT / "traces") / "conversation_trace.jsonl"
"""The FAST'25 conversation trace (docs/paper-reproduction.md says where to get it)."""


@dataclass
class Outcome:
    request_id: str
    kind: str = "lost"
    """``completed``, ``failed`` (a clear error) or ``lost``."""
    error: str = ""
    ttft_s: float | None = None
    e2e_s: float | None = None


def workload(args: argparse.Namespace) -> list[SampleRequest]:
    if args.dataset == "mooncake-trace":
        return mooncake_trace_dataset(
            Path(args.trace),
            args.num_prompts,
            length_scale=args.length_scale,
            max_input_len=args.max_input_len,
            max_output_len=args.output_len,
        )
    return prefix_repetition_dataset(
        args.num_prompts, args.prefix_len, args.suffix_len, args.num_prefixes, args.output_len
    )


async def run_one(llm: LLM, i: int, req: SampleRequest, timeout: float) -> Outcome:
    rid = f"chaos-{i}"
    out = Outcome(rid)
    params = SamplingParams(temperature=0.0, max_tokens=req.output_len, ignore_eos=True)
    t0 = time.monotonic()

    async def consume() -> None:
        async for o in llm.stream(req.prompt, params, request_id=rid):
            if out.ttft_s is None and o.outputs[0].token_ids:
                out.ttft_s = time.monotonic() - t0
            if o.finished:
                out.kind, out.e2e_s = "completed", time.monotonic() - t0

    try:
        await asyncio.wait_for(consume(), timeout)
    except (Unavailable, Rejected) as e:  # WorkerLost is an Unavailable
        out.kind, out.error = "failed", type(e).__name__
    except asyncio.TimeoutError:
        out.kind, out.error = "lost", "timeout"
    except Exception as e:
        out.kind, out.error = "lost", f"{type(e).__name__}: {e}"
    return out


def killer(
    llm: LLM, every: float, stop: threading.Event, rng: random.Random, log: list[tuple[float, str]]
) -> None:
    """Kill a random worker process every ``every`` seconds until ``stop``."""
    t0 = time.monotonic()
    while not stop.wait(every):
        try:
            pids: dict[str, int] = llm.client.run(os.getpid, on_error="ignore")
        except Exception:
            continue
        if not pids:
            continue
        addr = rng.choice(sorted(pids))
        roles = "+".join(llm.workers.get(addr, {}).get("roles", ["?"]))
        try:
            os.kill(pids[addr], signal.SIGKILL)
            log.append((time.monotonic() - t0, roles))
        except ProcessLookupError:
            pass


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default=None, help="HF checkpoint directory (default: the built-in model)"
    )
    ap.add_argument(
        "--dataset", choices=("prefix-repetition", "mooncake-trace"), default="prefix-repetition"
    )
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second (Poisson)")
    ap.add_argument("--kill-every", type=float, default=10.0)
    ap.add_argument("--decode-workers", type=int, default=2)
    ap.add_argument("--prefix-len", type=int, default=256)
    ap.add_argument("--suffix-len", type=int, default=64)
    ap.add_argument("--num-prefixes", type=int, default=4)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--length-scale", type=float, default=0.05, help="trace lengths scale")
    ap.add_argument("--max-input-len", type=int, default=1024)
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    reqs = workload(args)
    rng = random.Random(args.seed)
    kills: list[tuple[float, str]] = []
    with LLM(
        args.model,
        prefill_workers=1,
        decode_workers=args.decode_workers,
        engine_config=EngineConfig(),
        dashboard_address=None,
    ) as llm:
        stop = threading.Event()
        k = threading.Thread(
            target=killer, args=(llm, args.kill_every, stop, rng, kills), daemon=True
        )

        async def drive() -> list[Outcome]:
            tasks = []
            for i, r in enumerate(reqs):
                tasks.append(asyncio.create_task(run_one(llm, i, r, args.request_timeout)))
                await asyncio.sleep(rng.expovariate(args.rate))
            return list(await asyncio.gather(*tasks))

        t0 = time.monotonic()
        k.start()
        try:
            outcomes = asyncio.run(drive())
        finally:
            stop.set()
            k.join(timeout=5)
        wall = time.monotonic() - t0
        moves = dict(llm.moves)

    counts = {
        kind: sum(o.kind == kind for o in outcomes) for kind in ("completed", "failed", "lost")
    }
    moved = [o for o in outcomes if moves.get(o.request_id) and o.kind == "completed"]
    still = [o for o in outcomes if not moves.get(o.request_id) and o.kind == "completed"]

    def extra(attr: str) -> float | None:
        base = [getattr(o, attr) for o in still if getattr(o, attr) is not None]
        vals = [getattr(o, attr) for o in moved if getattr(o, attr) is not None]
        if not base or not vals:
            return None
        return statistics.median(vals) - statistics.median(base)

    result = {
        "requests": len(outcomes),
        **counts,
        "completed_fraction": counts["completed"] / max(1, len(outcomes)),
        "moved": sum(1 for o in outcomes if moves.get(o.request_id)),
        "moved_completed": len(moved),
        "extra_ttft_p50_s": extra("ttft_s"),
        "extra_e2e_p50_s": extra("e2e_s"),
        "kills": (kills_out := [{"t_s": round(t, 1), "roles": r} for t, r in kills]),
        "errors": sorted({o.error for o in outcomes if o.error}),
        "wall_s": wall,
        "args": vars(args),
    }
    for key in (
        "requests",
        "completed",
        "failed",
        "lost",
        "moved",
        "moved_completed",
        "extra_ttft_p50_s",
        "extra_e2e_p50_s",
    ):
        print(f"{key:>18}: {result[key]}")
    kill_list = ", ".join(f"{d['roles']}@{d['t_s']}s" for d in kills_out)
    print(f"{'kills':>18}: {kill_list}")
    print(f"{'errors':>18}: {result['errors']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
