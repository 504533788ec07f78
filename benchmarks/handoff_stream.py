"""TTFT and the first-to-second-token gap of uncached prompts (512 / 2,048 / 8,192
tokens by default), in three set-ups of the same engine: colocated (one worker),
1 prefill + 1 decode worker (the transfer task moves the KV after the prefill), and
1P+1D with the hand-off streamed chunk by chunk during the prefill
(``WorkerConfig.stream_kv``, docs/cluster.md).

In 1P+1D the prefill engine samples the first token and it reaches the client at once,
so the hand-off shows in the gap to the second token, which the decode worker samples
after the KV landed: that gap (and TTFT + gap, against colocated) is the number
streaming should shrink.

Each prompt is fresh random token ids (nothing cached), one request at a time, after
one warm-up request per set-up. ``--cpu-core-lending`` turns on
``WorkerConfig.cpu_core_lending`` in every set-up (an idle engine's cores go to the one
with work) and prints each worker's lending counters. Run it alone on an idle machine::

    python benchmarks/handoff_stream.py                      # llama-57m-16k, 3 reps
    python benchmarks/handoff_stream.py --shape tiny-16k --prompts 64,256 --reps 1 --chunk 32

Prints one table; ``--out FILE`` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass

from mooncake.client import LLM, WorkerConfig
from mooncake.config import EngineConfig
from mooncake.sampling_params import SamplingParams

SETUPS = ("colocated", "1p1d", "1p1d-stream")


@dataclass
class Row:
    setup: str
    prompt_tokens: int
    ttft_s: list[float]
    gap_s: list[float]
    stream_blocks: dict[str, int]
    lending: dict[str, dict[str, float]]
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
    )
    llm = LLM(
        mode="colocated" if setup == "colocated" else "disaggregated",
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
        action="store_true",
        help="WorkerConfig.cpu_core_lending in every set-up (idle engines lend their cores)",
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
    colo = {r.prompt_tokens: r for r in rows if r.setup == "colocated"}
    lend = ", core lending on" if args.cpu_core_lending else ""
    print(f"model {model}, chunk {args.chunk} tokens, {args.reps} rep(s), medians{lend}")
    print(
        f"{'setup':14s} {'prompt':>7s} {'TTFT ms':>9s} {'x colo':>7s} {'gap 1->2 ms':>12s} "
        f"{'TTFT+gap x colo':>16s}  streamed blocks"
    )
    for r in rows:
        t, g = statistics.median(r.ttft_s), statistics.median(r.gap_s)
        c = colo.get(r.prompt_tokens)
        ct = statistics.median(c.ttft_s) if c else None
        cg = statistics.median(c.gap_s) if c else None
        ratio = f"{t / ct:7.2f}" if ct else f"{'-':>7s}"
        ratio2 = f"{(t + g) / (ct + cg):16.2f}" if ct and cg is not None else f"{'-':>16s}"
        print(
            f"{r.setup:14s} {r.prompt_tokens:7d} {t * 1e3:9.1f} {ratio} {g * 1e3:12.1f} "
            f"{ratio2}  {r.stream_blocks or ''}"
        )
        for role, c in r.lending.items():
            print(f"{'':14s} lending {role}: {c}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=1)
    if args.save_results:
        save_results(rows, args)


def save_results(rows: list[Row], args: argparse.Namespace) -> None:
    """Each 1P+1D set-up against colocated, per prompt length: TTFT (the prefill engine
    samples the first token) and TTFT + the gap to the second token (the first token the
    decode worker samples, after the hand-off), so the hand-off's cost is the second."""
    import result_file as rf

    med = statistics.median
    colo = {r.prompt_tokens: r for r in rows if r.setup == "colocated"}
    claims = []
    for r in rows:
        c = colo.get(r.prompt_tokens)
        if r.setup == "colocated" or c is None:
            continue
        t, g, ct, cg = med(r.ttft_s), med(r.gap_s), med(c.ttft_s), med(c.gap_s)
        target = "≤ 1.1" if r.prompt_tokens == 2048 else None
        claims.append(
            rf.claim(
                f"{r.setup}, {r.prompt_tokens}-token prompt: TTFT (p50)",
                t * 1e3,
                "ms",
                "colocated",
                ct * 1e3,
                target=target,
            )
            | {"row": f"{r.setup}, {r.prompt_tokens}-token prompt", "col": "TTFT p50"}
        )
        claims.append(
            rf.claim(
                f"{r.setup}, {r.prompt_tokens}-token prompt: TTFT + gap to 2nd token (p50)",
                (t + g) * 1e3,
                "ms",
                "colocated",
                (ct + cg) * 1e3,
                target=target,
                note=f"streamed blocks {r.stream_blocks}" if r.stream_blocks else None,
            )
            | {
                "row": f"{r.setup}, {r.prompt_tokens}-token prompt",
                "col": "TTFT + gap to the 2nd token, p50",
            }
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
            "while the prefill runs (`--stream-kv`)."
            + (
                " Core lending on (`--cpu-core-lending`): an idle engine's cores go to the "
                "engine with work."
                if args.cpu_core_lending
                else ""
            )
        ),
    )


if __name__ == "__main__":
    main()
