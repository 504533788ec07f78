"""Which native kernels to run on this CPU: each one against its torch twin, measured.

The compiled kernels (``mooncake.engine.native``) are tuned register tiles; on a CPU
whose vector unit they do not suit they can be several times slower than torch's own
ops (SDPA, the elementwise formulas), which are dispatched by CPU features inside
ATen. So the engine never takes a kernel on trust: at first use it times each kernel
group against the op it replaces, on the model's own head shape and thread count, and
runs the faster one. The answer is cached beside the built library (keyed by the
library, which is keyed by source, flags, compiler and CPU flags, and by the shape and
threads), so only the first start on a machine pays the few hundred milliseconds.

``MOONCAKE_KERNEL_TUNE=0`` skips the measurement and runs every native kernel (tests,
and anyone who has measured for themselves).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from mooncake import native_build
from mooncake.engine.native import NativeKernels
from mooncake.engine.rope import apply_rope

log = logging.getLogger(__name__)

TUNE_ENV = "MOONCAKE_KERNEL_TUNE"
CACHE_VERSION = 1


@dataclass(frozen=True)
class KernelShape:
    """What the measurement depends on besides the library: the model's attention and
    MLP widths, the KV block size and the engine's thread count (measurements run on
    one thread, but an engine on another thread count keeps its own answer)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    block_size: int
    threads: int

    def key(self) -> str:
        return "-".join(str(v) for v in asdict(self).values())


@dataclass(frozen=True)
class KernelChoice:
    """Which groups of native kernels run (True) or give way to torch's ops (False)."""

    decode: bool
    """Decode attention in place from the paged cache (vs gather + SDPA)."""
    prefill: bool
    """Prefill attention in place from the paged cache (vs gather + masked SDPA)."""
    elementwise: bool
    """Fused residual add + RMSNorm, rotary embedding and SiLU-and-mul."""
    timings_ms: dict[str, float] | None = None
    """The measured times behind the choice (native and torch per group)."""

    @classmethod
    def every(cls, on: bool) -> KernelChoice:
        return cls(decode=on, prefill=on, elementwise=on)


def _best_pair(
    ours: Callable[[], object], base: Callable[[], object], reps: int
) -> tuple[float, float]:
    """Fastest seconds of each, timed alternately after a warm-up of both. The minimum,
    not the median: an engine often starts beside other busy processes, and what they
    take from a run only ever adds to its time."""
    ours(), base()
    a: list[float] = []
    b: list[float] = []
    for _ in range(reps):
        t = time.perf_counter()
        ours()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        base()
        b.append(time.perf_counter() - t)
    return min(a), min(b)


def _paged_cache(
    shape: KernelShape, tokens: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    slots = -(-tokens // shape.block_size) * shape.block_size
    kc = torch.randn(slots, shape.num_kv_heads, shape.head_dim, generator=g)
    return kc, torch.randn_like(kc)


def _decode_case(
    nk: NativeKernels, shape: KernelShape, ctx: torch.Tensor, g: torch.Generator, reps: int
) -> tuple[float, float]:
    """One decode step of ``len(ctx)`` sequences: in place vs gather + SDPA."""
    Hq, Hkv, D, bs = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.block_size
    batch, scale = ctx.shape[0], D**-0.5
    mb = -(-int(ctx.max()) // bs)
    kc, vc = _paged_cache(shape, batch * mb * bs, g)
    tables = torch.randperm(batch * mb, generator=g).view(batch, mb).contiguous()
    q = torch.randn(batch, Hq, D, generator=g)
    out = torch.empty(batch, Hq, D)
    mask = (torch.arange(mb * bs)[None] < ctx[:, None])[:, None, None]

    def native() -> None:
        nk.paged_decode(q, kc, vc, tables, ctx, out, bs, None, scale, int(ctx.max()))

    def torch_path() -> torch.Tensor:
        kd = (
            kc.view(-1, bs, Hkv, D)
            .index_select(0, tables.view(-1))
            .view(batch, -1, Hkv, D)
            .transpose(1, 2)
        )
        vd = (
            vc.view(-1, bs, Hkv, D)
            .index_select(0, tables.view(-1))
            .view(batch, -1, Hkv, D)
            .transpose(1, 2)
        )
        qd = q.reshape(batch, Hkv, Hq // Hkv, D)
        return F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scale)

    return _best_pair(native, torch_path, reps)


def _prefill_case(
    nk: NativeKernels, shape: KernelShape, n: int, cached: int, g: torch.Generator, reps: int
) -> tuple[float, float]:
    """Attention of an ``n``-token chunk after ``cached`` tokens: in place vs gather +
    masked SDPA; ``(inf, 0)`` for a head size the kernel does not take."""
    Hq, Hkv, D, bs = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.block_size
    ctx, scale = n + cached, D**-0.5
    kc, vc = _paged_cache(shape, ctx, g)
    table = torch.randperm(kc.shape[0] // bs, generator=g)
    q = torch.randn(n, Hq, D, generator=g)
    out = torch.empty(n, Hq, D)
    mask = (torch.arange(ctx)[None] <= torch.arange(cached, ctx)[:, None])[None, None]
    if not nk.paged_prefill(q, kc, vc, table, ctx, out, bs, None, scale):
        return float("inf"), 0.0

    def native() -> None:
        nk.paged_prefill(q, kc, vc, table, ctx, out, bs, None, scale)

    def torch_path() -> torch.Tensor:
        ks = (
            kc.view(-1, bs, Hkv, D)
            .index_select(0, table)
            .view(-1, Hkv, D)[:ctx]
            .transpose(0, 1)[None]
        )
        vs = (
            vc.view(-1, bs, Hkv, D)
            .index_select(0, table)
            .view(-1, Hkv, D)[:ctx]
            .transpose(0, 1)[None]
        )
        qs = q.transpose(0, 1)[None]
        return F.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=Hq != Hkv
        )

    return _best_pair(native, torch_path, reps)


def _elementwise_case(
    nk: NativeKernels, shape: KernelShape, tokens: int, g: torch.Generator, reps: int
) -> tuple[float, float]:
    """Residual add + RMSNorm, rotary of q and k, SiLU-and-mul of one step's rows."""
    H, inter, Hq, Hkv, D = (
        shape.hidden_size,
        shape.intermediate_size,
        shape.num_heads,
        shape.num_kv_heads,
        shape.head_dim,
    )
    x0 = torch.randn(tokens, H, generator=g)
    add = torch.randn(tokens, H, generator=g)
    w = torch.randn(H, generator=g)
    x = x0.clone()
    qk = torch.randn(tokens, Hq + Hkv, D, generator=g)
    cos = torch.randn(tokens, 1, D, generator=g)
    sin = torch.randn(tokens, 1, D, generator=g)
    src = torch.randn(tokens, 2 * inter, generator=g)
    buf = torch.empty_like(src)

    def native() -> None:
        x.copy_(x0)  # the kernel adds in place
        nk.rms_norm(x, w, 1e-5, add=add)
        nk.rope(qk, cos.view(tokens, D), sin.view(tokens, D))
        buf.copy_(src)  # in place too: fresh values each time
        nk.silu_mul(buf)

    def torch_path() -> None:
        h = x0 + add
        w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5))
        apply_rope(qk, cos, sin)
        buf.copy_(src)
        gate, up = buf.chunk(2, dim=-1)
        F.silu(gate, inplace=True).mul_(up)

    return _best_pair(native, torch_path, reps)


def _sum(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def _time_decode(nk: NativeKernels, shape: KernelShape, reps: int) -> tuple[float, float]:
    """One step of 1 and of 16 sequences (contexts 64..1088), summed."""
    g = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    ctxs = [
        torch.tensor([rng.randint(64, 1088) for _ in range(b)], dtype=torch.long) for b in (1, 16)
    ]
    return _sum([_decode_case(nk, shape, ctx, g, reps) for ctx in ctxs])


def _time_prefill(nk: NativeKernels, shape: KernelShape, reps: int) -> tuple[float, float]:
    """A 256-token prompt, and a 64-token chunk after 960 cached tokens, summed."""
    g = torch.Generator().manual_seed(1)
    return _sum(
        [_prefill_case(nk, shape, n, cached, g, reps) for n, cached in ((256, 0), (64, 960))]
    )


def _time_elementwise(nk: NativeKernels, shape: KernelShape, reps: int) -> tuple[float, float]:
    """A 16-token decode step and a 256-token chunk, summed."""
    g = torch.Generator().manual_seed(2)
    return _sum([_elementwise_case(nk, shape, tokens, g, reps) for tokens in (16, 256)])


MARGIN = 1.1
"""A kernel group gives way only to torch ops faster by more than this factor: the
kernels are the default, and a measurement within noise must not flip them."""


def measure(nk: NativeKernels, shape: KernelShape, reps: int = 7) -> KernelChoice:
    """Time every kernel group against its torch twin and choose the faster of each.

    Both sides run on one thread: which code suits this CPU's vector unit shows there
    just as well, and a parallel region of several threads is as slow as its most
    preempted thread, which makes timings taken beside other busy processes (an engine
    starting in a serving cluster) swing by 10x."""
    timings: dict[str, float] = {}
    picks: dict[str, bool] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for name, fn in (
                ("decode", _time_decode),
                ("prefill", _time_prefill),
                ("elementwise", _time_elementwise),
            ):
                n, t = fn(nk, shape, reps)
                timings[f"{name}_native_ms"] = round(n * 1e3, 4)
                timings[f"{name}_torch_ms"] = round(t * 1e3, 4)
                picks[name] = n <= MARGIN * t
    finally:
        torch.set_num_threads(threads)
    return KernelChoice(
        decode=picks["decode"],
        prefill=picks["prefill"],
        elementwise=picks["elementwise"],
        timings_ms=timings,
    )


def choose(nk: NativeKernels, shape: KernelShape) -> KernelChoice:
    """The cached choice for this library and shape, measured on first use.

    Returns every kernel on when ``$MOONCAKE_KERNEL_TUNE`` is ``0``."""
    if os.environ.get(TUNE_ENV, "1") == "0":
        return KernelChoice.every(True)
    path = native_build.cache_dir() / f"choice-v{CACHE_VERSION}-{nk.path.stem}-{shape.key()}.json"
    try:
        data = json.loads(path.read_text())
        return KernelChoice(**data)
    except (OSError, ValueError, TypeError):
        pass
    choice = measure(nk, shape)
    log.info(
        "native kernels on this CPU: %s (%s)",
        {k: v for k, v in asdict(choice).items() if k != "timings_ms"},
        choice.timings_ms,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(choice)))
        os.replace(tmp, path)  # atomic: concurrent engines never read half a file
    except OSError as e:
        log.warning("native kernel choice not cached (%s); it will be measured again next start", e)
    return choice


def _linear_case(
    shapes: list[tuple[int, int]], rows: int, g: torch.Generator, reps: int
) -> tuple[float, float]:
    """One step's projections of ``rows`` activations: oneDNN (weights ``[out, in]``) vs
    MKL's ``x @ W_t`` (weights ``[in, out]``, the engine's default layout)."""
    from mooncake.engine.model import onednn_linear

    xs = {k: torch.randn(rows, k, generator=g) for k, _ in shapes}
    ws = [torch.randn(n, k, generator=g) for k, n in shapes]
    wts = [w.t().contiguous() for w in ws]

    def dnn() -> None:
        for (k, _), w in zip(shapes, ws):
            onednn_linear(xs[k], w, None)

    def mkl() -> None:
        for (k, _), wt in zip(shapes, wts):
            torch.mm(xs[k], wt)

    return _best_pair(dnn, mkl, reps)


def choose_onednn_linear(shapes: list[tuple[int, int]], threads: int, reps: int = 5) -> bool:
    """Whether oneDNN's GEMM runs this model's projections (``(in, out)`` each, the LM
    head included) more than :data:`MARGIN` times faster than MKL on this CPU, for a
    16-row decode step and a 256-row prefill chunk together; measured on one thread
    once and cached (keyed by torch's version, the CPU's flags, the shapes and the
    engine's thread count). ``False`` where torch has no oneDNN linear or
    ``$MOONCAKE_KERNEL_TUNE`` is ``0``."""
    from mooncake.engine.model import onednn_available

    if os.environ.get(TUNE_ENV, "1") == "0" or not onednn_available():
        return False
    import hashlib

    facts = f"{torch.__version__}|{native_build.cpu_flags()}|{shapes}|{threads}"
    key = hashlib.sha256(facts.encode()).hexdigest()[:16]
    path = native_build.cache_dir() / f"linear-v{CACHE_VERSION}-{key}.json"
    try:
        return bool(json.loads(path.read_text())["onednn"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            g = torch.Generator().manual_seed(3)
            pairs = [_linear_case(shapes, rows, g, reps) for rows in (16, 256)]
    except RuntimeError as e:  # a oneDNN build that refuses these shapes: stay on MKL
        log.warning("oneDNN linear unavailable here (%s); projections stay on MKL", e)
        return False
    finally:
        torch.set_num_threads(before)
    dnn, mkl = _sum(pairs)
    pick = dnn * MARGIN < mkl
    log.info(
        "projections through %s (oneDNN %.2f ms, MKL %.2f ms)",
        "oneDNN" if pick else "MKL",
        dnn * 1e3,
        mkl * 1e3,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"onednn": pick, "onednn_ms": dnn * 1e3, "mkl_ms": mkl * 1e3}))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("oneDNN linear choice not cached (%s)", e)
    return pick


__all__ = [
    "MARGIN",
    "TUNE_ENV",
    "KernelChoice",
    "KernelShape",
    "choose",
    "choose_onednn_linear",
    "measure",
]
