"""TTFT and the first-to-second-token gap of uncached prompts (512 / 2,048 / 8,192
tokens by default), in four set-ups of the same engine: colocated (one worker, every
core), colocated on one engine's share of the cores (``colocated-1dev``: the cores each
engine of 1P+1D gets, as one device of a two-device deployment), 1 prefill + 1 decode
worker (the transfer task moves the KV after the prefill), and 1P+1D with the hand-off
streamed chunk by chunk during the prefill (``WorkerConfig.stream_kv``, docs/cluster.md).

The hand-off's cost is 1P+1D against ``colocated-1dev``: both run the prompt's prefill on
the same number of cores, so what is left is the hand-off (on a GPU host each engine has a
device of its own in both set-ups). Against ``colocated`` on every core, 1P+1D on a small
CPU host also pays for running its prefill on half of them.

In 1P+1D the prefill engine samples the first token and it reaches the client at once,
so the hand-off shows in the gap to the second token, which the decode worker samples
after the KV landed: that gap (and TTFT + gap, against colocated) is the number
streaming should shrink.

Each prompt is fresh random token ids (nothing cached), one request at a time, after
one warm-up request per set-up. ``--cpu-core-lending`` turns on
``WorkerConfig.cpu_core_lending`` in every set-up (an idle engine's cores go to the one
with work) and prints each worker's lending counters.
Run it alone on an idle machine::

    python benchmarks/handoff_stream.py                      # llama-57m-16k, 3 reps
    python benchmarks/handoff_stream.py --shape tiny-16k --prompts 64,256 --reps 1 --chunk 32

Prints one table; ``--out FILE`` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from dataclasses import dataclass, field

from mooncake.client import LLM, WorkerConfig
from mooncake.config import EngineConfig
from mooncake.sampling_params import SamplingParams

SETUPS = ("colocated", "colocated-1dev", "1p1d", "1p1d-stream")
COLOCATED = ("colocated", "colocated-1dev")


@dataclass
class Row:
    setup: str
    prompt_tokens: int
    ttft_s: list[float]
    gap_s: list[float]
    stream_blocks: dict[str, int]
    lending: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per worker role: steps, steps with borrowed cores, rebinds, us per ledger check."""


async def _one(llm: LLM, prompt: list[int]) -> tuple[float, float]:
    """(TTFT, first -> second token) of one request, seen by the client."""
    p = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    t0 = time.perf_counter()
    first = second = None
    async for out in llm.stream(prompt, p):
        n = len(out.outputs[0].token_ids)
        now = time.perf_counter()
        if first is None and n >= 1:
            first = now
        if second is None and n >= 2:
            second = now
    assert first is not None and second is not None
    return first - t0, second - first


def _stream_blocks(llm: LLM) -> dict[str, int]:
    total: dict[str, int] = {}
    for s in llm.worker_stats().values():
        for k, v in s.get("stream_blocks", {}).items():
            total[k] = total.get(k, 0) + v
    return total


def _lending(llm: LLM) -> dict[str, dict[str, float]]:
    out = {}
    for w, s in llm.worker_stats().items():
        cl = s.get("core_lending")
        if cl:
            out["+".join(llm.workers[w]["roles"])] = {
                k: cl[k] for k in ("steps", "borrowed_steps", "rebinds", "ledger_s", "rebind_s")
            }
    return out


def _lending_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    out = {}
    for role, a in after.items():
        b = before.get(role, {})
        d = {k: v - b.get(k, 0) for k, v in a.items()}
        steps = max(1, int(d["steps"]))
        out[role] = {
            "steps": d["steps"],
            "borrowed_steps": d["borrowed_steps"],
            "rebinds": d["rebinds"],
            "ledger_us_per_step": round(d["ledger_s"] / steps * 1e6, 1),
            "rebind_us_each": round(d["rebind_s"] / max(1, int(d["rebinds"])) * 1e6, 1),
        }
    return out


def one_device_cpus() -> str:
    """The CPUs the first worker of a 1P+1D cluster pins its engine to (half of this
    process's CPUs, as ``LLM`` splits them between two workers), as a CPU list."""
    allowed = sorted(os.sched_getaffinity(0))
    return ",".join(str(c) for c in allowed[: max(1, len(allowed) // 2)])


def run_setup(
    setup: str,
    model: str,
    lengths: list[int],
    reps: int,
    chunk: int,
    seed: int,
    lending: bool = False,
) -> list[Row]:
    ec = EngineConfig(
        model=model,
        long_prefill_chunk=chunk,
        max_num_batched_tokens=max(chunk, 2048),
        max_model_len=max(lengths) + 64,
        cpu_threads_bind=one_device_cpus() if setup == "colocated-1dev" else None,
    )
    llm = LLM(
        mode="colocated" if setup in COLOCATED else "disaggregated",
        engine_config=ec,
        worker_config=WorkerConfig(stream_kv=setup == "1p1d-stream", cpu_core_lending=lending),
        dashboard_address=None,
    )
    rng = random.Random(seed)
    vocab = int(llm.info["vocab_size"])
    rows = []
    try:
        asyncio.run(_one(llm, [rng.randrange(vocab) for _ in range(min(lengths))]))  # warm-up
        for n in lengths:
            before = _stream_blocks(llm)
            lent = _lending(llm)
            ttft, gap = [], []
            for _ in range(reps):
                t, g = asyncio.run(_one(llm, [rng.randrange(vocab) for _ in range(n)]))
                ttft.append(t)
                gap.append(g)
            after = _stream_blocks(llm)
            rows.append(
                Row(
                    setup,
                    n,
                    ttft,
                    gap,
                    {k: v - before.get(k, 0) for k, v in after.items()},
                    _lending_delta(lent, _lending(llm)),
                )
            )
    finally:
        llm.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: --shape's)")
    ap.add_argument("--shape", default="llama-57m-16k", help="benchmarks/checkpoints.py shape")
    ap.add_argument("--prompts", default="512,2048,8192", help="prompt lengths, tokens")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--chunk", type=int, default=512, help="EngineConfig.long_prefill_chunk, every set-up"
    )
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cpu-core-lending",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="WorkerConfig.cpu_core_lending in every set-up (idle engines lend their cores; "
        "default: off, as WorkerConfig's default)",
    )
    ap.add_argument("--out", default=None, help="also write the rows here (JSON)")
    ap.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/handoff-stream.json for docs/performance.md",
    )
    args = ap.parse_args(argv)
    model = args.model
    if model is None:
        from checkpoints import ensure_checkpoint

        model = str(ensure_checkpoint(args.shape))
    lengths = [int(x) for x in args.prompts.split(",")]
    setups = args.setups.split(",")
    for s in setups:
        if s not in SETUPS:
            raise SystemExit(f"--setups: unknown {s!r}; known: {', '.join(SETUPS)}")
    rows: list[Row] = []
    for i, s in enumerate(setups):
        rows += run_setup(
            s, model, lengths, args.reps, args.chunk, args.seed + i, args.cpu_core_lending
        )
    med = statistics.median
    lend = ", core lending on" if args.cpu_core_lending else ""
    print(f"model {model}, chunk {args.chunk} tokens, {args.reps} rep(s), medians{lend}")
    print(
        f"{'setup':14s} {'prompt':>7s} {'TTFT ms':>9s} {'x colo':>7s} {'x 1dev':>7s} "
        f"{'gap 1->2 ms':>12s} {'TTFT+gap x 1dev':>16s}  streamed blocks"
    )
    for r in rows:
        t, g = med(r.ttft_s), med(r.gap_s)
        c, d = _baseline(rows, "colocated", r), _baseline(rows, "colocated-1dev", r)
        ratio = f"{t / med(c.ttft_s):7.2f}" if c else f"{'-':>7s}"
        ratio1 = f"{t / med(d.ttft_s):7.2f}" if d else f"{'-':>7s}"
        ratio2 = f"{(t + g) / (med(d.ttft_s) + med(d.gap_s)):16.2f}" if d else f"{'-':>16s}"
        print(
            f"{r.setup:14s} {r.prompt_tokens:7d} {t * 1e3:9.1f} {ratio} {ratio1} "
            f"{g * 1e3:12.1f} {ratio2}  {r.stream_blocks or ''}"
        )
        for role, counts in r.lending.items():
            print(f"{'':14s} lending {role}: {counts}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    if args.save_results:
        save_results(rows, args)


def _baseline(rows: list[Row], setup: str, r: Row) -> Row | None:
    """The ``setup`` row with ``r``'s prompt length, if that set-up ran."""
    return next((b for b in rows if b.setup == setup and b.prompt_tokens == r.prompt_tokens), None)


def save_results(rows: list[Row], args: argparse.Namespace) -> None:
    """Each 1P+1D set-up per prompt length: TTFT (the prefill engine samples the first
    token) and TTFT + the gap to the second token (the first token the decode worker
    samples, after the hand-off) against the colocated set-up with as many cores for
    its prefill, which the target is read against: ``colocated-1dev``, or colocated on
    every core when the engines lend each other their cores (``--cpu-core-lending``);
    and TTFT against the other colocated set-up."""
    import result_file as rf

    med = statistics.median
    lending = getattr(args, "cpu_core_lending", False)
    main, other = ("colocated", "colocated-1dev") if lending else ("colocated-1dev", "colocated")
    claims = []
    for r in rows:
        if r.setup in COLOCATED:
            continue
        label = f"{r.setup}, {r.prompt_tokens}-token prompt"
        t, g = med(r.ttft_s), med(r.gap_s)
        target = "≤ 1.1" if r.prompt_tokens == 2048 else None
        note = f"streamed blocks {r.stream_blocks}" if r.stream_blocks else None
        d = _baseline(rows, main, r)
        if d is not None:
            dt, dg = med(d.ttft_s), med(d.gap_s)
            claims.append(
                rf.claim(f"{label}: TTFT (p50)", t * 1e3, "ms", main, dt * 1e3, target=target)
                | {"row": label, "col": f"TTFT p50 vs {main}"}
            )
            claims.append(
                rf.claim(
                    f"{label}: TTFT + gap to 2nd token (p50)",
                    (t + g) * 1e3,
                    "ms",
                    main,
                    (dt + dg) * 1e3,
                    target=target,
                    note=note,
                )
                | {"row": label, "col": f"TTFT + gap to the 2nd token, p50, vs {main}"}
            )
        c = _baseline(rows, other, r)
        if c is not None:
            claims.append(
                rf.claim(
                    f"{label}: TTFT (p50) vs {other}", t * 1e3, "ms", other, med(c.ttft_s) * 1e3
                )
                | {"row": label, "col": f"TTFT p50 vs {other}"}
            )
    rf.save(
        "handoff-stream",
        "The prefill-to-decode hand-off: 1P+1D, with and without streaming, vs colocated",
        claims,
        notes=(
            f"Uncached prompts, one at a time, {args.reps} rep(s) each, medians; "
            f"`--shape {args.shape}`, prefill chunk {args.chunk} tokens. In 1P+1D the first "
            "token comes from the prefill engine, so the hand-off shows in the gap to the "
            "second token; `1p1d-stream` streams each chunk's blocks to the decode worker "
            "while the prefill runs (`--stream-kv`). `colocated-1dev` is one colocated "
            "worker pinned to the cores each 1P+1D engine gets (half of them), so the "
            "ratio against it is the hand-off's own cost, as with one device per engine; "
            "`colocated` uses every core, so against it 1P+1D also pays for prefilling on "
            "half the cores of this small host."
            + (
                " Core lending on (`--cpu-core-lending`): an idle engine's cores go to the "
                "engine with work; `colocated-1dev` has no idle peer to borrow from."
                if getattr(args, "cpu_core_lending", False)
                else ""
            )
        ),
    )


if __name__ == "__main__":
    main()
