"""``mooncake generate``: run prompts through an in-process engine and print the results."""

from __future__ import annotations

import argparse
import time


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "generate", help="generate text in-process (no cluster)", description=__doc__
    )
    p.add_argument(
        "--model",
        default=None,
        help="local Hugging Face model directory (default: built-in random-weight model)",
    )
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="wrap each prompt as a user message in the chat template",
    )
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mooncake.config import EngineConfig
    from mooncake.engine import LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(model=args.model, dtype=args.dtype, device=args.device))
    prompts: list[str] = args.prompt or ["The Mooncake paper says", "KV cache reuse saves"]
    if args.chat:
        assert engine.tokenizer is not None
        prompts = [
            engine.tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts
        ]
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_tokens=args.max_tokens,
    )
    if args.model is None:
        print(
            f"model: built-in default ({engine.model_path}) "
            "-- RANDOM WEIGHTS, output is meaningless"
        )
    t0 = time.perf_counter()
    outs = engine.generate(prompts, params)
    dt = time.perf_counter() - t0
    for o in outs:
        ttft = o.metrics.ttft or 0.0
        print(
            f"--- {o.prompt!r}\n{o.text!r}\n    [{len(o.token_ids)} "
            f"tokens, finish={o.finish_reason}, ttft={ttft * 1000:.1f} ms]"
        )
    n = sum(len(o.token_ids) for o in outs)
    print(f"{len(outs)} requests, {n} tokens in {dt:.2f} s ({n / dt:.1f} tok/s)")
    return 0
