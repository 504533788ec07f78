"""Batch inference throughput: prefix-aware ordering vs input order vs transformers.

The same few-shot batch (T templates of ~600 tokens, each followed by a short question)
runs three ways:

- ``mooncake.LLM.generate(order="prefix")``: one warm-up per template, then the rest;
- ``mooncake.LLM.generate(order="input")``: everything submitted in input order;
- transformers ``generate`` in padded batches (greedy), on the same weights.

Each mooncake run gets a fresh embedded cluster (cold caches); cluster start-up is not
timed. Prints a JSON line per run and a markdown table.

    python benchmarks/batch_bench.py --prompts 400 --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

WORDS = (
    "the movie plot acting music was great terrible slow fun boring long short story ending cast "
    "scene light dark warm cold"
).split()


def make_batch(n: int, templates: int, seed: int = 0) -> list[str]:
    """``n`` prompts over ``templates`` few-shot templates (6 worked examples each)."""
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    heads = []
    for t in range(templates):
        shots = "".join(f"Review: {sentence(12)}\nAnswer: {sentence(3)}\n\n" for _ in range(6))
        heads.append(f"Task {t}: answer each review briefly.\n\n{shots}")
    return [
        f"{rng.choice(heads)}Review: {sentence(rng.randrange(4, 10))}\nAnswer:" for _ in range(n)
    ]


def run_mooncake(
    prompts: list[str],
    max_tokens: int,
    order: str,
    model: str | None,
    mode: str,
    num_blocks: int | None,
) -> dict[str, Any]:
    import mooncake
    from mooncake.config import EngineConfig

    params = mooncake.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ec = EngineConfig(num_blocks=num_blocks)
    with mooncake.LLM(
        model,
        prefill_workers=1,
        decode_workers=1,
        mode=mode,  # type: ignore[arg-type]
        engine_config=ec,
        dashboard_address=None,
    ) as llm:
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False, order=order)  # type: ignore[arg-type]
        dt = time.perf_counter() - t0
    ptoks = sum(len(o.prompt_token_ids) for o in outs)
    gen = sum(len(o.outputs[0].token_ids) for o in outs)
    cached = sum(o.num_cached_tokens for o in outs)
    return {
        "run": f"mooncake {mode}, order={order}",
        "seconds": round(dt, 2),
        "requests_per_s": round(len(outs) / dt, 2),
        "tokens_per_s": round((ptoks + gen) / dt, 1),
        "generated_per_s": round(gen / dt, 1),
        "hit_rate": round(cached / ptoks, 4),
    }


def run_transformers(
    prompts: list[str], max_tokens: int, model: str | None, batch_size: int
) -> dict[str, Any]:
    import torch
    import transformers

    from mooncake.engine.default_model import default_model_path
    from mooncake.tokenizer import Tokenizer

    path = model or str(default_model_path())
    torch.set_num_threads(os.cpu_count() or 1)
    tok = Tokenizer(Path(path))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    ids = [tok.encode(p) for p in prompts]
    ptoks = sum(len(x) for x in ids)
    gen = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            width = max(len(x) for x in chunk)
            inp = torch.tensor([[0] * (width - len(x)) + x for x in chunk])  # left padding
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk])
            out = hf.generate(
                inp,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            gen += (out.shape[1] - width) * len(chunk)
    dt = time.perf_counter() - t0
    return {
        "run": f"transformers generate, batch {batch_size}",
        "seconds": round(dt, 2),
        "requests_per_s": round(len(ids) / dt, 2),
        "tokens_per_s": round((ptoks + gen) / dt, 1),
        "generated_per_s": round(gen / dt, 1),
        "hit_rate": 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--prompts", type=int, default=400)
    p.add_argument("--templates", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument(
        "--model",
        default=None,
        help="local HF directory (default: the built-in random-weight model)",
    )
    p.add_argument("--mode", default="disaggregated", choices=["disaggregated", "colocated"])
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help=(
            "KV blocks per worker (default: from kv_cache_bytes); "
            "small values make the cache the constraint"
        ),
    )
    p.add_argument("--skip", nargs="*", default=[], choices=["prefix", "input", "transformers"])
    p.add_argument(
        "--save-results",
        metavar="NAME",
        default=None,
        help=(
            "write benchmarks/results/NAME.json for docs/performance.md (the "
            "page has batch-templates, batch-cache-bound, batch-transformers)"
        ),
    )
    args = p.parse_args()
    prompts = make_batch(args.prompts, args.templates)
    rows = []
    for order in ("prefix", "input"):
        if order not in args.skip:
            rows.append(
                run_mooncake(
                    prompts, args.max_tokens, order, args.model, args.mode, args.num_blocks
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    if "transformers" not in args.skip:
        rows.append(run_transformers(prompts, args.max_tokens, args.model, args.hf_batch_size))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["tokens_per_s"] if rows else 1.0
    print(
        "\n| run | seconds | requests/s | tokens/s (prompt+generated) "
        "| generated tok/s | hit rate | throughput vs first row |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['run']} | {r['seconds']} | {r['requests_per_s']} | {r['tokens_per_s']} | "
            f"{r['generated_per_s']} | {r['hit_rate']:.1%} | {r['tokens_per_s'] / base:.2f}x |"
        )
    if args.save_results and rows:
        import result_file as rf

        first, claims = rows[0], []
        for other in rows[1:]:
            claims.append(
                rf.claim(
                    f"requests/s, {first['run']}",
                    first["requests_per_s"],
                    "req/s",
                    other["run"],
                    other["requests_per_s"],
                    target="≥ 1.0",
                )
            )
            claims.append(
                rf.claim(
                    f"tokens/s (prompt + generated), {first['run']}",
                    first["tokens_per_s"],
                    "tok/s",
                    other["run"],
                    other["tokens_per_s"],
                    target="≥ 1.0",
                )
            )
        claims += [
            rf.claim(f"prefix-cache hit rate, {r['run']}", r["hit_rate"] * 100, "%")
            for r in rows
            if r["hit_rate"]
        ]
        titles = {
            "batch-templates": "Batch inference: 4 templates, ample KV cache",
            "batch-cache-bound": (
                "Batch inference: 32 templates, KV cache smaller than the templates"
            ),
            "batch-transformers": "Batch inference vs transformers, back to back",
        }
        title = titles.get(
            args.save_results,
            f"Batch inference: {args.prompts} prompts, {args.templates} templates",
        )
        rf.save(
            args.save_results,
            title,
            claims,
            notes=(
                f"`LLM.generate` over few-shot prompts, {args.max_tokens} generated tokens each, "
                f"{args.mode} mode; each mooncake run starts a fresh cluster "
                "(start-up not timed). transformers has no prefix cache."
            ),
        )


if __name__ == "__main__":
    main()
