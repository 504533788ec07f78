"""Profile mooncake's ``LLMEngine`` on one of the engine benchmark's workloads.

Prints the top operators by self CPU time (``torch.profiler``) and the top Python
functions by own time (``cProfile``), so a missed target in ``engine_bench.py`` comes
with the place to fix.

Usage::

    python benchmarks/engine_profile.py --shape llama-100m --workload batch
    python benchmarks/engine_profile.py --shape llama-100m --workload ttft --profiler python

Workloads (same shapes as ``engine_bench.py``):

- ``batch``: 16 concurrent requests, prompts 64..1024, 64 output tokens each;
- ``decode``: one request, 128-token prompt, 64 output tokens (batch-1 decode);
- ``ttft``: one uncached 2048-token prompt, 1 output token;
- ``warm``: a 2048-token prompt whose first 1920 tokens are in the prefix cache.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def workload(
    name: str, vocab: int, rng: random.Random
) -> tuple[list[list[int]], int, list[int] | None]:
    """Returns (prompts, max_tokens, prefix to warm the cache with first or None)."""

    def p(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    if name == "batch":
        lengths = [64 + i * 64 for i in range(16)]
        rng.shuffle(lengths)
        return [p(n) for n in lengths], 64, None
    if name == "decode":
        return [p(128)], 64, None
    if name == "ttft":
        return [p(2048)], 1, None
    if name == "warm":
        shared = p(1920)
        return [shared + p(128)], 1, shared + p(128)
    raise ValueError(f"workload: unknown {name!r}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-100m")
    ap.add_argument("--workload", default="batch", choices=["batch", "decode", "ttft", "warm"])
    ap.add_argument("--profiler", default="torch", choices=["torch", "python", "none"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--baseline", action="store_true", help="also time one unprofiled run")
    ap.add_argument("--trace", type=Path, help="also write a Chrome trace (torch profiler)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from checkpoints import SHAPES, ensure_checkpoint

    from mooncake.config import EngineConfig
    from mooncake.engine import LLMEngine, SamplingParams

    path = ensure_checkpoint(args.shape)
    vocab = SHAPES[args.shape].vocab_size
    engine = LLMEngine(
        EngineConfig(
            model=str(path), dtype="float32", num_threads=args.threads, kv_cache_bytes=2 << 30
        )
    )
    rng = random.Random(1)

    def prepare(name: str) -> Callable[[], float]:
        """Build fresh prompts (and warm the prefix cache for ``warm``) outside the
        profiled region; the returned call runs the timed part."""
        prompts, max_tokens, warm_with = workload(name, vocab, rng)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        if warm_with is not None:
            engine.generate([warm_with], params)

        def timed() -> float:
            t0 = time.perf_counter()
            engine.generate(prompts, params)
            return time.perf_counter() - t0

        return timed

    def run(name: str) -> float:
        return prepare(name)()

    run(args.workload)  # warm-up (fresh prompts below, so no cache hits)
    if args.baseline:
        print(f"unprofiled {args.workload}: {run(args.workload):.3f} s")
    timed = prepare(args.workload)
    steps0 = engine.stats.num_steps
    if args.profiler == "torch":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            wall = timed()
        print(
            f"profiled {args.workload}: {wall:.3f} s, "
            f"{engine.stats.num_steps - steps0} engine steps"
        )
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
        if args.trace:
            prof.export_chrome_trace(str(args.trace))
    elif args.profiler == "python":
        pr = cProfile.Profile()
        pr.enable()
        wall = timed()
        pr.disable()
        print(
            f"profiled {args.workload}: {wall:.3f} s, "
            f"{engine.stats.num_steps - steps0} engine steps"
        )
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(args.top)
        print(s.getvalue())


if __name__ == "__main__":
    main()
