"""The engine's CPU building blocks against their torch baselines, in one run.

Every row times the mooncake variant and its baseline alternately (A B A B ...) on the
same inputs and prints the median of each and the ratio (baseline time / mooncake time;
above 1 means mooncake is faster), so a loaded machine slows both sides alike.

- decode attention: the native in-place kernel vs gathering each sequence's blocks by
  block table into a padded copy + masked SDPA (the torch path);
- prefill attention: the native flash-style kernel vs SDPA (causal, GQA) on the same K/V;
- elementwise: fused residual add + RMSNorm, rotary embedding of q and k, SiLU-and-mul,
  each vs the torch ops they replace, on a 2048-token step;
- projections: ``x @ W_t`` with the weight stored ``[in, out]`` (mooncake's layout) vs
  ``F.linear(x, W)`` with ``[out, in]`` (``nn.Linear``), for the 100M shape's matrices.

Usage::

    python benchmarks/kernel_bench.py                 # 2 threads, llama-100m shapes
    python benchmarks/kernel_bench.py --threads 1 --reps 21
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mooncake.engine.native import kernels

Hq, Hkv, D, BS = 12, 4, 64, 16  # llama-100m attention shape, 16-token blocks
ISA: str | None = None  # --isa: the instruction set the kernels are built for (None: this CPU's)


def ab(a: Callable[[], object], b: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median seconds of a and b, timed alternately after one warm-up each."""
    a(), b()
    ta, tb = [], []
    for _ in range(reps):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


ROWS: list[tuple[str, float, float]] = []
"""Every row printed (name, mooncake s, baseline s), for ``--save-results``."""


def row(name: str, ours: float, base: float) -> None:
    ROWS.append((name, ours, base))
    print(f"| {name} | {ours * 1e3:.2f} | {base * 1e3:.2f} | {base / ours:.2f}x |", flush=True)


def decode_attention(reps: int, batch: int, seed: int = 0) -> None:
    native = kernels(ISA)
    assert native is not None, "no native kernels here (C compiler missing?)"
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    ctx = torch.tensor([rng.randint(64, 1088) for _ in range(batch)], dtype=torch.long)
    mb = int(-(-int(ctx.max()) // BS))
    num_blocks = batch * mb * 2
    kc = torch.randn(num_blocks * BS, Hkv, D, generator=g)
    vc = torch.randn(num_blocks * BS, Hkv, D, generator=g)
    tables = torch.randperm(num_blocks, generator=g)[: batch * mb].view(batch, mb).contiguous()
    q = torch.randn(batch, Hq + 2 * Hkv, D, generator=g)[:, :Hq]
    out = torch.empty(batch, Hq, D)
    scale = D**-0.5

    def ours() -> None:
        native.paged_decode(q, kc, vc, tables, ctx, out, BS, None, scale, int(ctx.max()))

    def base() -> torch.Tensor:
        kd = (
            kc.view(-1, BS, Hkv, D)
            .index_select(0, tables.view(-1))
            .view(batch, -1, Hkv, D)
            .transpose(1, 2)
        )
        vd = (
            vc.view(-1, BS, Hkv, D)
            .index_select(0, tables.view(-1))
            .view(batch, -1, Hkv, D)
            .transpose(1, 2)
        )
        mask = (torch.arange(mb * BS)[None] < ctx[:, None])[:, None, None]
        qd = q.reshape(batch, Hkv, Hq // Hkv, D)
        return F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scale)

    ours()
    torch.testing.assert_close(out, base().reshape(batch, Hq, D), atol=2e-6, rtol=1e-5)
    row(f"decode attention, {batch} seqs, context 64-1088", *ab(ours, base, reps))


def prefill_attention(reps: int, n: int, cached: int) -> None:
    native = kernels(ISA)
    assert native is not None
    ctx = cached + n
    g = torch.Generator().manual_seed(1)
    nb = -(-ctx // BS)
    kc = torch.randn(nb * BS, Hkv, D, generator=g)
    vc = torch.randn(nb * BS, Hkv, D, generator=g)
    table = torch.arange(nb)
    q = torch.randn(n, Hq + 2 * Hkv, D, generator=g)[:, :Hq]
    out = torch.empty(n, Hq, D)
    scale = D**-0.5
    qs = q.transpose(0, 1).unsqueeze(0)
    ks = kc[:ctx].transpose(0, 1).unsqueeze(0)
    vs = vc[:ctx].transpose(0, 1).unsqueeze(0)
    mask = None
    if cached:
        mask = (torch.arange(ctx)[None] <= torch.arange(cached, ctx)[:, None])[None, None]

    def ours() -> None:
        native.paged_prefill(q, kc, vc, table, ctx, out, BS, None, scale)

    def base() -> torch.Tensor:
        if mask is None:
            return F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True
            )
        return F.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=True
        )

    ours()
    torch.testing.assert_close(out, base().squeeze(0).transpose(0, 1), atol=2e-6, rtol=1e-5)
    row(f"prefill attention, {n} tokens after {cached} cached", *ab(ours, base, reps))


def elementwise(reps: int, tokens: int = 2048, hidden: int = 768, inter: int = 2048) -> None:
    native = kernels(ISA)
    assert native is not None
    from mooncake.engine.model_config import RopeConfig
    from mooncake.engine.rope import RotaryTable, apply_rope

    g = torch.Generator().manual_seed(3)
    x0, add, w = (
        torch.randn(tokens, hidden, generator=g),
        torch.randn(tokens, hidden, generator=g),
        torch.randn(hidden),
    )
    x = x0.clone()

    def norm_base() -> torch.Tensor:
        h = x0 + add
        return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5))

    def norm_ours() -> None:
        x.copy_(x0)  # the kernel adds in place; the baseline's add makes a new tensor
        native.rms_norm(x, w, 1e-5, add=add)

    row(f"residual add + RMSNorm, {tokens} x {hidden}", *ab(norm_ours, norm_base, reps))
    table = RotaryTable(RopeConfig(), D, tokens, torch.float32, torch.device("cpu"))
    cos, sin = table.lookup(torch.arange(tokens))
    qk = torch.randn(tokens, Hq + 2 * Hkv, D, generator=g)[:, : Hq + Hkv]
    c2, s2 = cos.view(tokens, -1), sin.view(tokens, -1)
    row(
        f"rotary q+k, {tokens} tokens",
        *ab(lambda: native.rope(qk, c2, s2), lambda: apply_rope(qk, cos, sin), reps),
    )
    src = torch.randn(tokens, 2 * inter, generator=g)
    buf = torch.empty_like(src)

    def act_ours() -> None:
        buf.copy_(src)  # in place: fresh values each time (repeated SiLU would reach denormals)
        native.silu_mul(buf)

    def act_base() -> None:
        buf.copy_(src)
        gate, up = buf.chunk(2, dim=-1)
        F.silu(gate, inplace=True).mul_(up)

    row(
        f"SiLU-and-mul (incl. a {tokens} x {2 * inter} copy on both sides)",
        *ab(act_ours, act_base, reps),
    )


def projections(reps: int) -> None:
    g = torch.Generator().manual_seed(2)
    for m in (1, 16, 64, 2048):
        for k, n in ((768, 1280), (768, 4096), (2048, 768)):
            w = torch.randn(n, k, generator=g)
            wt = w.t().contiguous()
            x = torch.randn(m, k, generator=g)
            ours = lambda x=x, wt=wt: torch.mm(x, wt)  # noqa: E731
            base = lambda x=x, w=w: F.linear(x, w)  # noqa: E731
            row(f"projection {k}->{n}, {m} rows", *ab(ours, base, reps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument(
        "--isa",
        default=None,
        help="build the kernels for this instruction set (native, avx2, avx512)",
    )
    ap.add_argument(
        "--save-results",
        action="store_true",
        help="write benchmarks/results/kernels[-ISA].json for docs/performance.md",
    )
    args = ap.parse_args()
    global ISA
    ISA = args.isa
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, "
        f"median of {args.reps}; ratio = baseline / mooncake\n"
    )
    print("| operation | mooncake ms | baseline ms | ratio |")
    print("| --- | ---: | ---: | ---: |")
    with torch.inference_mode():
        decode_attention(args.reps, 16)
        decode_attention(args.reps, 1)
        prefill_attention(args.reps, 2048, 0)
        prefill_attention(args.reps, 512, 0)
        prefill_attention(args.reps, 128, 1920)
        elementwise(args.reps)
        projections(args.reps)
    if args.save_results:
        import result_file as rf

        def _projection_cell(name: str) -> dict[str, str]:
            """A projection's shape and row count as the results page's row and column
            ("projection 768->1280, 16 rows"): the sweep reads as one table."""
            m = re.fullmatch(r"projection (\S+), (\d+) rows", name)
            return {"row": f"projection {m[1]}", "col": f"{m[2]} rows"} if m else {}

        # Ratio = baseline time / kernel time (higher is better), as printed.
        result_name = "kernels" if args.isa in (None, "native") else f"kernels-{args.isa}"
        title = "Native CPU kernels vs torch" + (
            "" if result_name == "kernels" else f", kernels built for {args.isa.upper()}"
        )
        rf.save(
            result_name,
            title,
            [
                rf.claim(
                    name,
                    ours * 1e3,
                    "ms",
                    "torch baseline",
                    base * 1e3,
                    ratio=base / ours,
                    target=None if name.startswith("projection") else "≥ 1.0",
                )
                | _projection_cell(name)
                for name, ours, base in ROWS
                # the projections are torch's own: the kernels' other builds leave them alone
                if result_name == "kernels" or not name.startswith("projection")
            ],
            notes=(
                f"{args.threads} threads, median of {args.reps} alternating "
                "calls; ratio = baseline time / kernel time (higher is better)."
            ),
        )


if __name__ == "__main__":
    main()
