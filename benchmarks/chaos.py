"""Chaos: a steady load through a 1 prefill + 2 decode cluster while a random worker is
killed (``kill -9``) every ``--kill-every`` seconds; the Nanny restarts each one.

Every request ends one of three ways:

- completed;
- failed with a clear error (``WorkerLost``, ``Unavailable`` or ``Rejected``);
- lost: neither within ``--request-timeout`` seconds (or any other exception): a bug.

For the requests that were moved off a lost worker (``LLM.moves``) it prints the extra
TTFT and end-to-end time over the median of the requests that were not moved, and, to
compare them with, the median TTFT of five of the workload's prompts run uncached (a
fresh cache salt each) before the first kill.

    python benchmarks/chaos.py [--model DIR] [--dataset prefix-repetition|mooncake-trace]
        [--num-prompts 200] [--rate 4] [--kill-every 10] [--kill-roles prefill,decode]
        [--json out.json]
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


async def uncached_prefill_s(llm: LLM, reqs: list[SampleRequest]) -> float:
    """Median TTFT of the workload's prompts with nothing cached (a fresh cache salt
    each), before any kill: what one uncached prefill of these prompts costs."""
    ttfts = []
    for i, req in enumerate(reqs):
        params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
        t0 = time.monotonic()
        async for _ in llm.stream(req.prompt, params, cache_salt=f"uncached-{i}"):
            break
        ttfts.append(time.monotonic() - t0)
    return statistics.median(ttfts)


def killer(
    llm: LLM,
    every: float,
    stop: threading.Event,
    rng: random.Random,
    log: list[tuple[float, str]],
    roles: tuple[str, ...] = ("prefill", "decode"),
) -> None:
    """Kill a random worker process (of one of ``roles``) every ``every`` seconds until
    ``stop``."""
    t0 = time.monotonic()
    while not stop.wait(every):
        # The client's own membership view (kept current by the scheduler's joined/left
        # events): asking the workers (``client.run``) would wait on the one just killed.
        with llm._lock:
            workers = {a: dict(i) for a, i in llm.workers.items()}
        eligible = sorted(
            a
            for a, info in workers.items()
            if set(info.get("roles", [])) & set(roles) and info.get("worker_pid")
        )
        if not eligible:
            continue
        addr = rng.choice(eligible)
        info = workers[addr]
        try:
            os.kill(int(info["worker_pid"]), signal.SIGKILL)
            log.append((time.monotonic() - t0, "+".join(info.get("roles", ["?"]))))
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
    ap.add_argument(
        "--kill-roles",
        default="prefill,decode",
        help="roles whose workers may be killed (decode: only decode workers, so a spare "
        "decode worker always remains)",
    )
    ap.add_argument("--prefix-len", type=int, default=256)
    ap.add_argument("--suffix-len", type=int, default=64)
    ap.add_argument("--num-prefixes", type=int, default=4)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--length-scale", type=float, default=0.05, help="trace lengths scale")
    ap.add_argument("--max-input-len", type=int, default=1024)
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/chaos-<kill roles>.json for docs/performance.md",
    )
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
            target=killer,
            args=(llm, args.kill_every, stop, rng, kills, tuple(args.kill_roles.split(","))),
            daemon=True,
        )

        async def drive() -> list[Outcome]:
            tasks = []
            for i, r in enumerate(reqs):
                tasks.append(asyncio.create_task(run_one(llm, i, r, args.request_timeout)))
                await asyncio.sleep(rng.expovariate(args.rate))
            return list(await asyncio.gather(*tasks))

        uncached = asyncio.run(uncached_prefill_s(llm, reqs[:5]))
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
        "uncached_prefill_p50_s": uncached,
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
        "uncached_prefill_p50_s",
    ):
        print(f"{key:>18}: {result[key]}")
    kill_list = ", ".join(f"{d['roles']}@{d['t_s']}s" for d in kills_out)
    print(f"{'kills':>18}: {kill_list}")
    print(f"{'errors':>18}: {result['errors']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.save_results:
        save_results(result, args)


def save_results(result: dict[str, object], args: argparse.Namespace) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import result_file as rf

    roles = args.kill_roles.replace(",", "+")
    n = int(result["requests"])  # type: ignore[call-overload]
    extra = result["extra_ttft_p50_s"]
    uncached = float(result["uncached_prefill_p50_s"])  # type: ignore[arg-type]
    spare = "decode" in roles and "prefill" not in roles
    claims = [
        dict(
            rf.claim("requests lost (neither completed nor a clear error)", result["lost"], ""),
            target="0",
            met=result["lost"] == 0,
        ),
        rf.claim(
            "requests completed",
            result["completed"],  # type: ignore[arg-type]
            "",
            "requests",
            n,
            target="≥ 0.99" if spare else None,
        ),
        rf.claim("requests failed with a clear error", result["failed"], "", "requests", n),
    ]
    if extra is not None:
        claims.append(
            rf.claim(
                "extra TTFT of moved requests (p50)",
                float(extra),  # type: ignore[arg-type]
                "s",
                "one uncached prefill (TTFT p50)",
                uncached,
                target="< 1.0",
            )
        )
    kills = ", ".join(f"{d['roles']}@{d['t_s']}s" for d in result["kills"])  # type: ignore[attr-defined]
    rf.save(
        f"chaos-{roles}",
        f"Chaos: a {roles} worker killed every {args.kill_every:g} s",
        claims,
        notes=(
            f"1 prefill + {args.decode_workers} decode workers, built-in model, "
            f"{args.dataset} load at {args.rate:g} req/s; a random {roles} worker killed "
            f"with kill -9 every {args.kill_every:g} s (the Nanny restarts it). Kills: {kills}. "
            f"Moved requests: {result['moved']} ({result['moved_completed']} completed). "
            f"Errors seen: {', '.join(result['errors']) or 'none'}."  # type: ignore[arg-type]
        ),
    )


if __name__ == "__main__":
    main()
