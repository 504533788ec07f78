"""The native kernels: equal to the torch ops (gather + SDPA, the norm, rotary and SiLU
formulas) in every instruction-set build this CPU runs (its own, and the AVX2 build whose
register tiles AVX2-only servers take), used by default on CPU float32, and a clean
fallback where they cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mooncake.config import EngineConfig
from mooncake.engine import LLMEngine, SamplingParams
from mooncake.engine.native import isa_supported, kernels
from tests.conftest import hf_reference

needs_native = pytest.mark.skipif(
    kernels() is None, reason="no C compiler here: the native kernel cannot be built"
)


@pytest.fixture(params=["native", "avx2"])
def native(request):
    """The kernels built for this CPU, and the AVX2 build (8-float vectors, the register
    tiles an AVX2-only server takes; on such a server the two are the same code): the
    two vector widths the source has. Skipped where this CPU cannot run the build."""
    if not isa_supported(request.param):
        pytest.skip(f"this CPU does not run {request.param} code")
    built = kernels(request.param)
    if built is None:
        pytest.skip("no C compiler here: the native kernel cannot be built")
    return built


def _reference(q, kc, vc, tables, ctx, bs, window, scale):
    """Gather each sequence's blocks, mask, SDPA (the torch path's math)."""
    B, Hq, D = q.shape
    Hkv = kc.shape[1]
    mb = tables.shape[1]
    kd = (
        kc.view(-1, bs, Hkv, D)
        .index_select(0, tables.reshape(-1))
        .view(B, -1, Hkv, D)
        .transpose(1, 2)
    )
    vd = (
        vc.view(-1, bs, Hkv, D)
        .index_select(0, tables.reshape(-1))
        .view(B, -1, Hkv, D)
        .transpose(1, 2)
    )
    pos = torch.arange(mb * bs)[None]
    mask = pos < ctx[:, None]
    if window:
        mask &= pos >= ctx[:, None] - window
    qd = q.reshape(B, Hkv, Hq // Hkv, D)
    return F.scaled_dot_product_attention(
        qd, kd, vd, attn_mask=mask[:, None, None], scale=scale
    ).reshape(B, Hq, D)


@needs_native
@pytest.mark.parametrize(
    "Hq,Hkv,D,bs,window",
    [
        (12, 4, 64, 16, None),
        (4, 4, 32, 16, None),
        (8, 1, 128, 8, None),
        (6, 2, 64, 16, 40),
        (16, 8, 80, 32, None),
    ],
)
def test_kernel_equals_gather_and_sdpa(native, Hq, Hkv, D, bs, window):
    """Random block tables (blocks scattered over the pool), ragged lengths incl. 1 and
    partial last blocks, GQA groups, strided q rows as the fused projection gives them."""
    g = torch.Generator().manual_seed(Hq * 1000 + D)
    num_blocks, B = 300, 9
    kc = torch.randn(num_blocks * bs, Hkv, D, generator=g)
    vc = torch.randn(num_blocks * bs, Hkv, D, generator=g)
    ctx = torch.tensor([1, 2, bs, bs + 1, 3 * bs - 1, 100, 257, 31, 5 * bs], dtype=torch.long)
    mb = int(-(-int(ctx.max()) // bs))
    tables = torch.randperm(num_blocks, generator=g)[: B * mb].view(B, mb).contiguous()
    fused = torch.randn(B, Hq + 2 * Hkv, D, generator=g)
    q = fused[:, :Hq]  # rows (Hq + 2 Hkv) * D apart
    out = torch.full((B, Hq, D), float("nan"))
    scale = D**-0.5
    native.paged_decode(q, kc, vc, tables, ctx, out, bs, window, scale, int(ctx.max()))
    ref = _reference(q, kc, vc, tables, ctx, bs, window, scale)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


def _reference_prefill(q, kc, vc, table, ctx, bs, window, scale):
    n, _, D = q.shape
    Hkv = kc.shape[1]
    ks = kc.view(-1, bs, Hkv, D).index_select(0, table).view(-1, Hkv, D)[:ctx]
    vs = vc.view(-1, bs, Hkv, D).index_select(0, table).view(-1, Hkv, D)[:ctx]
    qp = torch.arange(ctx - n, ctx)[:, None]
    kp = torch.arange(ctx)[None]
    mask = kp <= qp
    if window:
        mask &= kp > qp - window
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        ks.transpose(0, 1)[None],
        vs.transpose(0, 1)[None],
        attn_mask=mask[None, None],
        scale=scale,
        enable_gqa=True,
    )
    return o[0].transpose(0, 1)


@needs_native
@pytest.mark.parametrize(
    "Hq,Hkv,D,bs,n,ctx,window",
    [
        (12, 4, 64, 16, 300, 300, None),  # whole prompt, GQA 3
        (12, 4, 64, 16, 70, 1000, None),  # a chunk after a cached prefix
        (4, 4, 32, 16, 37, 37, None),  # head_dim 32: the 16-column path
        (8, 2, 80, 8, 50, 130, None),  # head_dim 80 (64 + 16), block size 8
        (8, 1, 128, 32, 100, 300, None),
        (6, 2, 64, 16, 200, 400, 50),  # sliding window
        (12, 4, 64, 16, 40, 1060, None),  # a 256-key chunk starts past some rows' positions
        (6, 2, 64, 16, 300, 700, 300),  # window over several 256-key chunks
        (12, 4, 64, 16, 1, 17, None),  # one token
    ],
)
def test_prefill_kernel_equals_sdpa(native, Hq, Hkv, D, bs, n, ctx, window):
    g = torch.Generator().manual_seed(n * 7 + ctx)
    num_blocks = 2 * (-(-ctx // bs)) + 3
    kc = torch.randn(num_blocks * bs, Hkv, D, generator=g)
    vc = torch.randn(num_blocks * bs, Hkv, D, generator=g)
    table = torch.randperm(num_blocks, generator=g)[: -(-ctx // bs)].contiguous()
    fused = torch.randn(n, Hq + 2 * Hkv, D, generator=g)
    q = fused[:, :Hq]
    out = torch.full((n, Hq, D), float("nan"))
    scale = D**-0.5
    assert native.paged_prefill(q, kc, vc, table, ctx, out, bs, window, scale)
    torch.testing.assert_close(
        out, _reference_prefill(q, kc, vc, table, ctx, bs, window, scale), atol=2e-6, rtol=1e-5
    )


@needs_native
def test_prefill_kernel_declines_unsupported_head_dim(native):
    """head_dim 24 is not a multiple of 16: nothing written, the caller uses SDPA."""
    out = torch.full((4, 2, 24), float("nan"))
    kc = torch.randn(32, 2, 24)
    assert not native.paged_prefill(
        torch.randn(4, 2, 24), kc, kc, torch.arange(2), 4, out, 16, None, 1.0
    )
    assert torch.isnan(out).all()


@needs_native
def test_kernel_rejects_non_contiguous_cache(native):
    kc = torch.randn(64, 2, 32).transpose(0, 1).contiguous().transpose(0, 1)  # strided slots
    with pytest.raises(ValueError, match="contiguous"):
        native.paged_decode(
            torch.randn(1, 2, 32),
            kc,
            kc,
            torch.zeros(1, 4, dtype=torch.long),
            torch.tensor([3]),
            torch.empty(1, 2, 32),
            16,
            None,
            1.0,
            3,
        )


@needs_native
def test_engine_uses_kernel_and_matches_torch_path_and_transformers(tiny_llama):
    """Same greedy continuations with the kernel, without it, and from transformers."""
    prompts = [
        [(7 * i + j) % 250 for j in range(n)]
        for i, n in enumerate([1, 15, 16, 17, 40, 90, 130, 201])
    ]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    on = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256))
    off = LLMEngine(EngineConfig(model=str(tiny_llama), num_blocks=256, native_kernels=False))
    assert on.runner.native is not None and off.runner.native is None
    got_on = [o.token_ids for o in on.generate(prompts, params)]
    got_off = [o.token_ids for o in off.generate(prompts, params)]
    assert got_on == got_off == hf_reference(tiny_llama, prompts, 24)


def _kernels_in_subprocess(env: dict[str, str]) -> str:
    code = (
        "import logging; logging.basicConfig(); "
        "from mooncake.engine.native import kernels; print(kernels() is None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return out.stdout.strip() + "|" + out.stderr


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_disabled_by_environment():
    assert _kernels_in_subprocess({"MOONCAKE_NATIVE_KERNELS": "0"}).startswith("True|")


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_broken_compiler_falls_back_with_a_warning(tmp_path):
    """A compiler that fails: no kernel, a warning naming why, and nothing half-written."""
    cc = tmp_path / "cc"
    cc.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo fake '
        "1.0; exit 0; }\necho 'cc: broken' >&2; exit 1\n"
    )
    cc.chmod(0o755)
    cache = tmp_path / "cache"
    res = _kernels_in_subprocess({"CC": str(cc), "MOONCAKE_KERNEL_CACHE": str(cache)})
    assert res.startswith("True|")
    assert "native kernels unavailable" in res and "broken" in res
    assert list(cache.glob("*")) == []


@needs_native
@pytest.mark.parametrize("with_add", [False, True])
def test_rms_norm_kernel_equals_transformers_formula(native, with_add):
    """Fused (residual add +) RMSNorm: same values as LlamaRMSNorm's ops; x updated in place."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(37, 200, generator=g)
    add = torch.randn(37, 200, generator=g) if with_add else None
    w = torch.randn(200, generator=g)
    want_x = x + add if add is not None else x.clone()
    want = w * (want_x * torch.rsqrt(want_x.pow(2).mean(-1, keepdim=True) + 1e-5))
    got = native.rms_norm(x, w, 1e-5, add=add)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x, want_x, atol=0, rtol=0)


@needs_native
def test_rope_kernel_equals_apply_rope(native):
    """q and k rotated together from the fused projection's strided view."""
    from mooncake.engine.model_config import RopeConfig
    from mooncake.engine.rope import RotaryTable, apply_rope

    g = torch.Generator().manual_seed(4)
    table = RotaryTable(RopeConfig(), 64, 512, torch.float32, torch.device("cpu"))
    pos = torch.randint(0, 512, (29,), generator=g)
    cos, sin = table.lookup(pos)
    fused = torch.randn(29, 16 + 4, 64, generator=g)
    x = fused[:, :16]
    torch.testing.assert_close(
        native.rope(x, cos.view(29, -1), sin.view(29, -1)),
        apply_rope(x, cos, sin),
        atol=1e-6,
        rtol=1e-6,
    )


@needs_native
@pytest.mark.parametrize("inter", [96, 100])
def test_silu_mul_kernel_equals_torch(native, inter):
    """Vectors of the build's width, and (100) a scalar tail after them."""
    g = torch.Generator().manual_seed(5)
    gate_up = torch.randn(13, 2 * inter, generator=g) * 6  # large |x|: both sigmoid branches
    gate, up = gate_up.clone().chunk(2, dim=-1)
    want = F.silu(gate) * up
    got = native.silu_mul(gate_up)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert got.data_ptr() == gate_up.data_ptr()  # in place, first half


def test_unknown_isa_is_a_clear_error():
    with pytest.raises(ValueError, match="MOONCAKE_KERNEL_ISA"):
        kernels("avx9000")
