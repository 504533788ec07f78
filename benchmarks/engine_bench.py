"""Engine benchmark: mooncake's LLMEngine vs vLLM's CPU build vs transformers ``generate``.

Every side runs in its own subprocess (vLLM from its own virtual environment), loads the
same checkpoint (``benchmarks/checkpoints.py``), runs fp32 on the same number of threads,
and is fed the same token-id prompts. The sides are kept loaded for the whole run and the
measurements are interleaved (repetition r runs every side before repetition r+1 starts,
in a rotating order), so slow drift of a shared machine hits every side alike.

Measurements (medians over ``--reps``):

(a) output tokens/s for ``--num-requests`` concurrent requests of mixed prompt lengths
    (``--prompt-min`` .. ``--prompt-max``) and a fixed output length (EOS ignored):
    mooncake and vLLM get all requests at once; transformers serves them one at a time.
(b) single-stream decode step (ms/token at batch 1, prefill excluded): one streamed
    request, time from its first to its last token as the caller sees them, over the
    N - 1 decode steps in between; transformers also with a bare forward loop over its
    KV cache.
(c) TTFT of an uncached ``--ttft-len``-token prompt (max_tokens=1, wall time of the call).
(d) TTFT of a second prompt sharing the first ``--cached-len`` tokens with (c)'s prompt,
    run right after it (prefix cache warm), and its ratio to (c).

Every repetition uses fresh random prompts, so no measurement hits a prefix cache except
(d)'s warm request.

Usage::

    python benchmarks/engine_bench.py --shape llama-100m --json out/bench-100m.json
    python benchmarks/engine_bench.py --shape tiny --sides mooncake,transformers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VLLM_PYTHON = "/work/vllm-venv/bin/python"
SIDES = ("mooncake", "vllm", "transformers")
LABEL = {"mooncake": "mooncake", "vllm": "vLLM-CPU", "transformers": "transformers"}

# Targets of the engine benchmark (issue 2).
TARGET_VS_VLLM_TPUT = 1.0  # (a) mooncake tok/s >= 1.0x vLLM-CPU
TARGET_VS_HF_TPUT = 3.0  # (a) mooncake tok/s >= 3x transformers one at a time
TARGET_DECODE_VS_HF = 1.0  # (b) mooncake ms/token <= 1.0x transformers generate
TARGET_TTFT_VS_VLLM = 1.0  # (c) mooncake TTFT <= 1.0x vLLM-CPU
TARGET_WARM_FRACTION = 1 / 8  # (d) warm TTFT <= 1/8 of uncached


# --------------------------------------------------------------------------- workers
# A worker is this file run as ``--worker SIDE``: it loads one engine, then answers JSON
# commands read from stdin, one per line, on the process's original stdout. Anything the
# libraries print goes to stderr (fd 1 is pointed at fd 2 before they are imported).


def _ids(outs: list[list[int]]) -> list[int]:
    return [len(o) for o in outs]


class MooncakeSide:
    def __init__(self, model: str, threads: int, kv_cache_bytes: int) -> None:
        import mooncake
        from mooncake.config import EngineConfig
        from mooncake.engine import LLMEngine, SamplingParams

        self._params = SamplingParams
        self.engine = LLMEngine(
            EngineConfig(
                model=model,
                dtype="float32",
                device="cpu",
                num_threads=threads,
                kv_cache_bytes=kv_cache_bytes,
                enable_prefix_caching=True,
            )
        )
        self.info = {"mooncake_file": mooncake.__file__}

    def generate(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        params = self._params(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        t0 = time.perf_counter()
        outs = self.engine.generate(prompts, params)
        wall = time.perf_counter() - t0
        ttft = []
        for o in outs:
            m = getattr(o, "metrics", None)
            if m is not None and getattr(m, "first_token_time", None) is not None:
                ttft.append(m.first_token_time - m.arrival_time)
        return {
            "wall_s": wall,
            "tokens": [list(o.token_ids) for o in outs],
            "cached": [int(getattr(o, "num_cached_tokens", -1) or 0) for o in outs],
            "ttft_s": ttft,
        }

    def stream(self, prompt: list[int], max_tokens: int) -> dict[str, Any]:
        params = self._params(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        t0 = time.perf_counter()
        rid = self.engine.add_request(None, prompt, params)
        first = last = None
        tokens: list[int] = []
        while self.engine.has_unfinished():
            for o in self.engine.step():
                if o.request_id == rid and o.token_ids:
                    last = time.perf_counter()
                    first = first or last
                    tokens = list(o.token_ids)
        return _stream_result(t0, first, last, tokens)


def _stream_result(
    t0: float, first: float | None, last: float | None, tokens: list[int]
) -> dict[str, Any]:
    assert first is not None and last is not None
    return {"t_first_s": first - t0, "t_last_s": last - t0, "tokens": [tokens]}


class VllmSide:
    def __init__(self, model: str, threads: int, kv_cache_bytes: int) -> None:
        import vllm
        from vllm import LLM, SamplingParams

        self._params = SamplingParams
        # The tokenizer is loaded and outputs are detokenized, as mooncake's engine does
        # whenever the checkpoint has a tokenizer.json: both sides do the same work.
        self.llm = LLM(
            model=model,
            dtype="float32",
            enable_prefix_caching=True,
            max_model_len=4096,
            seed=0,
        )
        self.info = {"vllm_version": vllm.__version__}

    def generate(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        params = self._params(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        inputs = [{"prompt_token_ids": p} for p in prompts]
        t0 = time.perf_counter()
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        wall = time.perf_counter() - t0
        return {
            "wall_s": wall,
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
            "cached": [int(getattr(o, "num_cached_tokens", None) or 0) for o in outs],
            "ttft_s": [],
        }

    def stream(self, prompt: list[int], max_tokens: int) -> dict[str, Any]:
        params = self._params(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        engine = self.llm.llm_engine
        self._n = getattr(self, "_n", 0) + 1
        rid = f"stream-{self._n}"
        t0 = time.perf_counter()
        engine.add_request(rid, {"prompt_token_ids": prompt}, params)
        first = last = None
        tokens: list[int] = []
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.request_id == rid and len(o.outputs[0].token_ids) > len(tokens):
                    last = time.perf_counter()
                    first = first or last
                    tokens = list(o.outputs[0].token_ids)
        return _stream_result(t0, first, last, tokens)


class TransformersSide:
    def __init__(self, model: str, threads: int, kv_cache_bytes: int) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.info = {"transformers_version": transformers.__version__}

    def generate(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        """Serve the prompts one at a time with ``generate`` (greedy, EOS suppressed)."""
        torch = self.torch
        tokens = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for p in prompts:
                ids = torch.tensor([p], dtype=torch.long)
                out = self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_tokens,
                    min_new_tokens=max_tokens,
                    do_sample=False,
                    pad_token_id=0,
                )
                tokens.append(out[0, len(p) :].tolist())
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "tokens": tokens, "cached": [0] * len(prompts), "ttft_s": []}

    def stream(self, prompt: list[int], max_tokens: int) -> dict[str, Any]:
        """``generate`` with a streamer that timestamps every new token."""
        from transformers.generation.streamers import BaseStreamer

        torch = self.torch
        stamps: list[float] = []

        class Clock(BaseStreamer):
            def put(self, value: Any) -> None:  # first call: the prompt; then one token
                stamps.append(time.perf_counter())

            def end(self) -> None:
                pass

        ids = torch.tensor([prompt], dtype=torch.long)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=0,
                streamer=Clock(),
            )
        return _stream_result(t0, stamps[1], stamps[-1], out[0, len(prompt) :].tolist())

    def decode_bare(self, prompt: list[int], steps: int) -> dict[str, Any]:
        """Greedy decode with bare forward calls over the model's KV cache; times the
        ``steps`` one-token forwards only (the prefill is excluded)."""
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.tensor([prompt]), use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens = [int(nxt)]
            t0 = time.perf_counter()
            for _ in range(steps):
                out = self.model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(int(nxt))
            wall = time.perf_counter() - t0
        return {"wall_s": wall, "tokens": [tokens]}


RUNNERS = {"mooncake": MooncakeSide, "vllm": VllmSide, "transformers": TransformersSide}


def _cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process and its children (vLLM runs
    its engine core and model worker as child processes). On a shared machine this is
    far steadier than wall time: it does not count time spent waiting for a core."""
    try:
        import psutil
    except ImportError:
        import resource

        return sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def worker_main(args: argparse.Namespace) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def reply(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")

    try:
        t0 = time.perf_counter()
        side = RUNNERS[args.worker](args.model, args.threads, args.kv_cache_bytes)
        reply({"ok": True, "load_s": time.perf_counter() - t0, "info": side.info})
    except Exception:
        reply({"ok": False, "error": traceback.format_exc()})
        return
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            break
        try:
            cpu0 = _cpu_seconds()
            res = getattr(side, op)(**cmd)
            reply({"ok": True, "cpu_s": _cpu_seconds() - cpu0, **res})
        except Exception:
            reply({"ok": False, "error": traceback.format_exc()})


# ------------------------------------------------------------------------ orchestrator


class Worker:
    """One side's subprocess; ``call`` sends a command and waits for its answer."""

    def __init__(self, side: str, python: str, args: argparse.Namespace, log_dir: Path) -> None:
        self.side = side
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = str(args.threads)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if side == "vllm":
            # Bind vLLM's OpenMP threads to both cores (by default it reserves one).
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, args.kv_cache_bytes >> 30)))
        self.log_path = log_dir / f"{side}.log"
        cmd = [
            python, str(Path(__file__).resolve()), "--worker", side,
            "--model", str(args.model_dir), "--threads", str(args.threads),
            "--kv-cache-bytes", str(args.kv_cache_bytes),
        ]  # fmt: skip
        self.log = open(self.log_path, "w")  # closed in close()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, cwd=REPO, env=env,
        )  # fmt: skip
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.side} worker exited; see {self.log_path}")
        res = json.loads(line)
        if not res.get("ok"):
            raise RuntimeError(f"{self.side} worker failed:\n{res.get('error')}")
        return res

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()
        self.log.close()


def prompt(rng: random.Random, length: int, vocab: int) -> list[int]:
    """Random token ids, avoiding the special ids 0..2."""
    return [rng.randrange(3, vocab) for _ in range(length)]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from checkpoints import SHAPES, ensure_checkpoint, num_params

    shape = SHAPES[args.shape]
    args.model_dir = ensure_checkpoint(args.shape)
    vocab = shape.vocab_size
    log_dir = REPO / ".bench" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    for s in sides:
        if s not in SIDES:
            raise SystemExit(f"--sides: unknown side {s!r}; known: {', '.join(SIDES)}")
    if "vllm" in sides and not Path(args.vllm_python).exists():
        print(f"[skip] vLLM: interpreter {args.vllm_python} not found (see --vllm-python); "
              "running without the vLLM side", flush=True)  # fmt: skip
        sides.remove("vllm")

    result: dict[str, Any] = {
        "shape": args.shape, "params_m": round(num_params(shape) / 1e6, 1),
        "model_dir": str(args.model_dir), "threads": args.threads, "reps": args.reps,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {k: getattr(args, k) for k in (
            "num_requests", "prompt_min", "prompt_max", "output_len", "decode_prompt_len",
            "decode_tokens", "ttft_len", "cached_len", "kv_cache_bytes", "serial_reps")},
        "sides": {}, "raw": {s: {} for s in sides},
    }  # fmt: skip

    workers: dict[str, Worker] = {}
    try:
        # Load one at a time so that loading does not compete for the cores.
        for s in sides:
            python = args.vllm_python if s == "vllm" else sys.executable
            print(f"[load] {LABEL[s]} ({python}) ...", flush=True)
            w = Worker(s, python, args, log_dir)
            workers[s] = w
            result["sides"][s] = {"load_s": w.hello["load_s"], **w.hello["info"]}
            print(f"[load] {LABEL[s]} ready in {w.hello['load_s']:.1f} s", flush=True)

        def rec(side: str, key: str, value: Any) -> None:
            result["raw"][side].setdefault(key, []).append(value)

        # Warm-up: one small batch and one long prompt per side, not timed.
        wrng = random.Random(10_000)
        for w in workers.values():
            w.call("generate", prompts=[prompt(wrng, 32, vocab) for _ in range(4)], max_tokens=8)
            w.call("generate", prompts=[prompt(wrng, args.ttft_len, vocab)], max_tokens=2)
        print("[warm-up] done", flush=True)

        lengths = [
            round(
                args.prompt_min
                + i * (args.prompt_max - args.prompt_min) / max(1, args.num_requests - 1)
            )
            for i in range(args.num_requests)
        ]
        for rep in range(args.reps):
            # The machine may be shared: keep its load next to the numbers it disturbed.
            result.setdefault("loadavg_1min", []).append(os.getloadavg()[0])
            order = sides[rep % len(sides) :] + sides[: rep % len(sides)]
            rng = random.Random(rep)
            # Fresh prompts per repetition, identical for every side.
            batch = [prompt(rng, n, vocab) for n in rng.sample(lengths, len(lengths))]
            decn = prompt(rng, args.decode_prompt_len, vocab)
            shared = prompt(rng, args.cached_len, vocab)
            cold = shared + prompt(rng, args.ttft_len - args.cached_len, vocab)
            warm = shared + prompt(rng, args.ttft_len - args.cached_len, vocab)
            # Each measurement runs on every side back to back (rotating who goes first),
            # so a burst of load on the shared machine hits the sides of one ratio alike.
            for s in order:
                # (c) + (d): the cold prompt is uncached; the warm one shares its prefix.
                # transformers has no prefix cache: its warm request would be a cold one.
                r = workers[s].call("generate", prompts=[cold], max_tokens=1)
                rec(s, "ttft_cold_s", r["wall_s"])
                rec(s, "ttft_cold_cpu_s", r["cpu_s"])
                rec(s, "cold_cached_tokens", r["cached"][0])
                if s != "transformers":
                    r = workers[s].call("generate", prompts=[warm], max_tokens=1)
                    rec(s, "ttft_warm_s", r["wall_s"])
                    rec(s, "ttft_warm_cpu_s", r["cpu_s"])
                    rec(s, "warm_cached_tokens", r["cached"][0])
            for s in order:
                # (b) decode: first to last token of one streamed request, as its caller
                # sees them, over the number of decode steps in between.
                rn = workers[s].call("stream", prompt=decn, max_tokens=args.decode_tokens)
                n_out = len(rn["tokens"][0])
                rec(s, "decode_ms", 1e3 * (rn["t_last_s"] - rn["t_first_s"]) / (n_out - 1))
                rec(s, "decode_tokens", rn["tokens"][0])
                if s == "transformers":
                    steps = args.decode_tokens - 1
                    rb = workers[s].call("decode_bare", prompt=decn, steps=steps)
                    rec(s, "decode_bare_ms", 1e3 * rb["wall_s"] / steps)
            for s in order:
                if s == "transformers" and rep >= args.serial_reps:
                    continue  # serving 16 requests one at a time is the long pole
                # (a) concurrent batch of mixed lengths.
                r = workers[s].call("generate", prompts=batch, max_tokens=args.output_len)
                n_tok = sum(len(t) for t in r["tokens"])
                rec(s, "batch_tok_s", n_tok / r["wall_s"])
                rec(s, "batch_wall_s", r["wall_s"])
                rec(s, "batch_out_tokens", n_tok)
                rec(s, "batch_tok_per_cpu_s", n_tok / r["cpu_s"])
                if r["ttft_s"]:
                    rec(s, "batch_ttft_median_s", median(r["ttft_s"]))
            for s in order:
                raw = result["raw"][s]
                warm_txt = (
                    f" warm {raw['ttft_warm_s'][-1]:.3f} s (cached {raw['warm_cached_tokens'][-1]})"
                    if "ttft_warm_s" in raw
                    else ""
                )
                batch_txt = (
                    f"{raw['batch_tok_s'][-1]:7.1f} tok/s"
                    if len(raw["batch_tok_s"]) > rep
                    else "skipped"
                )
                print(
                    f"[rep {rep + 1}/{args.reps}] {LABEL[s]:>12}: batch {batch_txt}"
                    f" | decode {raw['decode_ms'][-1]:6.2f} ms/tok"
                    f" | TTFT cold {raw['ttft_cold_s'][-1]:.3f} s{warm_txt}",
                    flush=True,
                )
    finally:
        for w in workers.values():
            w.close()

    summarize(result, sides)
    return result


def summarize(result: dict[str, Any], sides: list[str]) -> None:
    raw = result["raw"]
    med: dict[str, dict[str, float]] = {}
    for s in sides:
        med[s] = {
            k: median(v) for k, v in raw[s].items()
            if v and isinstance(v[0], (int, float)) and not isinstance(v[0], bool)
        }  # fmt: skip
    result["medians"] = med

    def rep_ratio(a: str, ka: str, b: str, kb: str) -> float | None:
        """Median over repetitions of the per-repetition ratio a/b (same rep, same run)."""
        if a not in raw or b not in raw:
            return None
        xs, ys = raw[a].get(ka, []), raw[b].get(kb, [])
        return median([x / y for x, y in zip(xs, ys)]) if xs and ys else None

    ratios: list[tuple[str, float | None, str, bool | None]] = []

    def add(name: str, value: float | None, target: str, ok: bool | None) -> None:
        ratios.append((name, value, target, ok))

    def goal(name: str, r: float | None, bound: float, at_least: bool) -> None:
        """A ratio with a target: ``r >= bound`` (or ``<=``), unknown when not measured."""
        ok = None if r is None else (r >= bound if at_least else r <= bound)
        add(name, r, f"{'>=' if at_least else '<='} {bound:g}", ok)

    r = rep_ratio("mooncake", "batch_tok_s", "vllm", "batch_tok_s")
    goal("(a) tok/s mooncake / vLLM-CPU", r, TARGET_VS_VLLM_TPUT, at_least=True)
    r = rep_ratio("mooncake", "batch_tok_s", "transformers", "batch_tok_s")
    goal("(a) tok/s mooncake / transformers 1-at-a-time", r, TARGET_VS_HF_TPUT, at_least=True)
    r = rep_ratio("mooncake", "decode_ms", "transformers", "decode_ms")
    goal(
        "(b) decode ms/tok mooncake / transformers generate", r, TARGET_DECODE_VS_HF, at_least=False
    )
    r = rep_ratio("mooncake", "decode_ms", "transformers", "decode_bare_ms")
    add("(b) decode ms/tok mooncake / transformers bare forward", r, "(info)", None)
    r = rep_ratio("mooncake", "decode_ms", "vllm", "decode_ms")
    add("(b) decode ms/tok mooncake / vLLM-CPU", r, "(info)", None)
    r = rep_ratio("mooncake", "batch_tok_per_cpu_s", "vllm", "batch_tok_per_cpu_s")
    add("(a) tokens per CPU-second mooncake / vLLM-CPU", r, "(info)", None)
    r = rep_ratio("mooncake", "ttft_cold_s", "vllm", "ttft_cold_s")
    goal("(c) TTFT uncached mooncake / vLLM-CPU", r, TARGET_TTFT_VS_VLLM, at_least=False)
    r = rep_ratio("mooncake", "ttft_cold_s", "transformers", "ttft_cold_s")
    add("(c) TTFT uncached mooncake / transformers", r, "(info)", None)
    r = rep_ratio("mooncake", "ttft_cold_cpu_s", "vllm", "ttft_cold_cpu_s")
    add("(c) CPU-s of the uncached prompt mooncake / vLLM-CPU", r, "(info)", None)
    for s in ("mooncake", "vllm"):
        r = rep_ratio(s, "ttft_warm_s", s, "ttft_cold_s")
        target = f"<= 1/{round(1 / TARGET_WARM_FRACTION)}"
        ok = None if r is None or s != "mooncake" else r <= TARGET_WARM_FRACTION
        add(f"(d) TTFT warm / uncached, {LABEL[s]}", r, target if s == "mooncake" else "(info)", ok)
    result["ratios"] = [{"name": n, "value": v, "target": t, "met": ok} for n, v, t, ok in ratios]

    # Greedy agreement with transformers on the decode prompt (a correctness smell test:
    # random weights make near-ties, so an early fp32 divergence is possible, not a bug).
    agree: dict[str, list[int]] = {}
    if "transformers" in raw:
        # imported here: this file also runs as the vLLM side, whose venv has no mooncake
        from mooncake.types import common_prefix_len

        for s in sides:
            if s != "transformers":
                agree[s] = [
                    common_prefix_len(a, b)
                    for a, b in zip(raw[s]["decode_tokens"], raw["transformers"]["decode_tokens"])
                ]
    result["greedy_agreement_with_transformers"] = agree


def render(result: dict[str, Any]) -> str:
    sides = list(result["medians"])
    med = result["medians"]
    st = result["settings"]
    rows = [
        (
            f"(a) output tok/s, {st['num_requests']} concurrent, prompts "
            f"{st['prompt_min']}..{st['prompt_max']}, {st['output_len']} out",
            "batch_tok_s",
            "{:.1f}",
        ),
        ("(b) decode ms/token, batch 1 (generate)", "decode_ms", "{:.2f}"),
        ("(b) decode ms/token, batch 1 (bare forward)", "decode_bare_ms", "{:.2f}"),
        (f"(c) TTFT s, {st['ttft_len']}-token prompt, uncached", "ttft_cold_s", "{:.3f}"),
        (f"(d) TTFT s, same length, {st['cached_len']} tokens cached", "ttft_warm_s", "{:.3f}"),
        ("(d) tokens reported cached", "warm_cached_tokens", "{:.0f}"),
        ("CPU time, all the side's processes (steadier on a shared machine):", "", ""),
        ("(a) output tokens per CPU-second", "batch_tok_per_cpu_s", "{:.1f}"),
        ("(c) CPU-s of the uncached prompt", "ttft_cold_cpu_s", "{:.3f}"),
        ("(d) CPU-s of the cached prompt", "ttft_warm_cpu_s", "{:.3f}"),
        ("load s", None, "{:.1f}"),
    ]
    head = [f"measurement (median of {result['reps']})", *(LABEL[s] for s in sides)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for title, key, fmt in rows:
        if key == "":
            lines.append(f"| *{title}* |" + " |" * len(sides))
            continue
        cells = []
        for s in sides:
            v = result["sides"][s]["load_s"] if key is None else med[s].get(key)
            cells.append("—" if v is None else fmt.format(v))
        if key is not None and all(c == "—" for c in cells):
            continue
        lines.append("| " + " | ".join([title, *cells]) + " |")
    lines += [
        "",
        "| ratio (median of per-repetition ratios) | value | target | met |",
        "|---|---|---|---|",
    ]
    for r in result["ratios"]:
        if r["value"] is None:
            continue
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(f"| {r['name']} | {r['value']:.3f} | {r['target']} | {met} |")
    if st["serial_reps"] < result["reps"] and "transformers" in sides:
        lines.append("")
        lines.append(
            f"transformers (a) ran {st['serial_reps']} of "
            f"{result['reps']} repetitions (--serial-reps)."
        )
    agree = result.get("greedy_agreement_with_transformers") or {}
    if agree:
        lines.append("")
        for s, xs in agree.items():
            lines.append(
                f"greedy tokens identical to transformers ({LABEL[s]}): first {xs} of "
                f"{st['decode_tokens']} per repetition"
            )
    return "\n".join(lines)


def save_results(result: dict[str, Any]) -> None:
    """docs/performance.md's engine sections (``benchmarks/results/engine-*.json``)."""
    import result_file as rf

    med, ratio = result["medians"], {r["name"]: r["value"] for r in result["ratios"]}
    notes = (
        f"`{result['shape']}` shape ({result['params_m']}M parameters, random weights), fp32, "
        f"{result['threads']} threads per side; ratios are medians of per-repetition ratios "
        f"over {result['reps']} repetitions. What each measurement does: this script's docstring."
    )

    def claims(
        peer: str, rows: list[tuple[str, str, str, str, str | None]]
    ) -> list[dict[str, Any]]:
        out = []
        for what, key, unit, rname, target in rows:
            out.append(
                rf.claim(
                    what,
                    med["mooncake"].get(key),
                    unit,
                    LABEL[peer],
                    med[peer].get(key),
                    ratio=ratio.get(rname),
                    target=target,
                )
            )
        warm = ratio.get("(d) TTFT warm / uncached, mooncake")
        out.append(
            rf.claim(
                f"(d) TTFT with {result['settings']['cached_len']} tokens cached",
                None,
                "",
                "the same prompt uncached",
                None,
                ratio=warm,
                target=f"≤ {TARGET_WARM_FRACTION:g}",
            )
        )
        return out

    a = f"(a) output tok/s, {result['settings']['num_requests']} requests"
    # The kernels' AVX2 build on a CPU with AVX-512 stands in for an AVX2-only server:
    # its figures get a section of their own.
    isa = os.environ.get("MOONCAKE_KERNEL_ISA", "native") or "native"
    suffix, title = (
        ("", "")
        if isa == "native"
        else (f"-{isa}", f", mooncake's kernels built for {isa.upper()}")
    )
    if isa != "native":
        notes += (
            f" mooncake ran its native kernels built for {isa.upper()} "
            f"(MOONCAKE_KERNEL_ISA={isa}), the code an {isa.upper()}-only "
            "CPU runs; vLLM-CPU ran its own build for this CPU."
        )
    if "vllm" in med and "mooncake" in med:
        rf.save(
            f"engine-vllm{suffix}",
            f"Engine vs vLLM-CPU{title}",
            claims(
                "vllm",
                [
                    (
                        a,
                        "batch_tok_s",
                        "tok/s",
                        "(a) tok/s mooncake / vLLM-CPU",
                        f"≥ {TARGET_VS_VLLM_TPUT:g}",
                    ),
                    (
                        "(b) single-stream decode, ms/token",
                        "decode_ms",
                        "ms",
                        "(b) decode ms/tok mooncake / vLLM-CPU",
                        None,
                    ),
                    (
                        "(c) TTFT, uncached prompt",
                        "ttft_cold_s",
                        "s",
                        "(c) TTFT uncached mooncake / vLLM-CPU",
                        f"≤ {TARGET_TTFT_VS_VLLM:g}",
                    ),
                ],
            ),
            notes=notes,
        )
    if "transformers" in med and "mooncake" in med:
        rf.save(
            f"engine-transformers{suffix}",
            f"Engine vs transformers{title}",
            claims(
                "transformers",
                [
                    (
                        a + " (transformers one at a time)",
                        "batch_tok_s",
                        "tok/s",
                        "(a) tok/s mooncake / transformers 1-at-a-time",
                        f"≥ {TARGET_VS_HF_TPUT:g}",
                    ),
                    (
                        "(b) single-stream decode, ms/token",
                        "decode_ms",
                        "ms",
                        "(b) decode ms/tok mooncake / transformers generate",
                        f"≤ {TARGET_DECODE_VS_HF:g}",
                    ),
                    (
                        "(c) TTFT, uncached prompt",
                        "ttft_cold_s",
                        "s",
                        "(c) TTFT uncached mooncake / transformers",
                        None,
                    ),
                ],
            ),
            notes=notes,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--shape", default="llama-100m", help="checkpoint shape (benchmarks/checkpoints.py)"
    )
    p.add_argument("--sides", default=",".join(SIDES), help="comma list of: " + ", ".join(SIDES))
    p.add_argument("--vllm-python", default=os.environ.get("VLLM_PYTHON", DEFAULT_VLLM_PYTHON),
                   help="interpreter of the venv with vllm-cpu (default %(default)s)")  # fmt: skip
    p.add_argument("--reps", type=int, default=3, help="repetitions of every measurement")
    p.add_argument(
        "--serial-reps",
        type=int,
        default=None,
        help="repetitions of (a) for transformers one at a time (default: --reps)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-requests", type=int, default=16)
    p.add_argument("--prompt-min", type=int, default=64)
    p.add_argument("--prompt-max", type=int, default=1024)
    p.add_argument("--output-len", type=int, default=64, help="(a) output tokens per request")
    p.add_argument("--decode-prompt-len", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=64, help="(b) tokens decoded")
    p.add_argument("--ttft-len", type=int, default=2048)
    p.add_argument("--cached-len", type=int, default=1920)
    p.add_argument("--kv-cache-bytes", type=int, default=2 << 30, help="KV pool per engine")
    p.add_argument("--json", type=Path, help="write all raw numbers here")
    p.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/engine-*.json for docs/performance.md",
    )
    # Internal: run as one side's worker.
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    if args.serial_reps is None:
        args.serial_reps = args.reps
    if not 0 < args.cached_len < args.ttft_len:
        raise SystemExit("--cached-len must be between 0 and --ttft-len")
    t0 = time.perf_counter()
    result = run_bench(args)
    result["total_s"] = time.perf_counter() - t0
    print()
    print(
        f"shape {result['shape']} ({result['params_m']}M params), fp32, {result['threads']} "
        f"threads, {os.cpu_count()} CPUs, total {result['total_s']:.0f} s"
    )
    print(render(result))
    print("1-min load average at the start of each repetition:", result.get("loadavg_1min"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    if args.save_results:
        save_results(result)


if __name__ == "__main__":
    main()
