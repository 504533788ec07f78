"""Native CPU kernels, compiled on first use with the system C compiler.

``csrc/cpu_kernels.c`` holds the engine's float32 CPU kernels: decode and prefill
attention reading K/V in place from the paged cache, residual add + RMSNorm, rotary
embedding and SiLU-and-mul. It is plain C with OpenMP, built with ``-O3`` for this CPU
(or the instruction set ``$MOONCAKE_KERNEL_ISA`` names) into a shared library cached by
:mod:`mooncake.native_build` (under ``$MOONCAKE_KERNEL_CACHE``, keyed by source, flags,
compiler and CPU flags). It links the same ``libgomp.so.1`` torch has already loaded, so
it shares torch's thread pool instead of starting a second one that would spin against it.

Without a compiler, on another OS, or with ``MOONCAKE_NATIVE_KERNELS=0``, :func:`kernels`
returns ``None`` and the engine uses torch ops (same results, slower on CPU)."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import torch

from mooncake import native_build

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.c"
# gnu11, not c11: strict ISO mode turns off FMA contraction (half the kernel speed).
BASE_FLAGS = ["-O3", "-fopenmp", "-fPIC", "-shared", "-std=gnu11", "-fno-math-errno"]
LIBS = ["-lm"]

ISA_ENV = "MOONCAKE_KERNEL_ISA"
"""Which instruction set the kernels are built for: ``native`` (default: this CPU's own,
``-march=native``), ``avx2`` (Haswell: AVX2 + FMA, 16 vector registers) or ``avx512``
(Skylake-AVX512). The kernels take different register tiles on the two (``#if
__AVX512F__`` in the source), so ``avx2`` on an AVX-512 CPU runs, and tests, the path an
AVX2-only server takes."""

ISAS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    # name: (compiler flags, CPU flags it needs)
    "native": (["-march=native"], ()),
    "avx2": (["-march=haswell"], ("avx2", "fma")),
    "avx512": (["-march=skylake-avx512"], ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
}


def isa_supported(isa: str) -> bool:
    """Whether this CPU runs code built for ``isa`` (a name of :data:`ISAS`)."""
    if isa not in ISAS:
        raise ValueError(f"{ISA_ENV}: unknown instruction set {isa!r} (choose from {sorted(ISAS)})")
    have = set(native_build.cpu_flags().split())
    return all(f in have for f in ISAS[isa][1])


class NativeKernels:
    """ctypes bindings of the compiled library."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.path = path
        fn = lib.mc_paged_decode_f32
        i64, p = ctypes.c_int64, ctypes.c_void_p
        fn.argtypes = [
            p,
            i64,
            p,
            p,
            p,
            i64,
            p,
            p,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            ctypes.c_float,
            i64,
            ctypes.c_int,
        ]
        fn.restype = ctypes.c_int
        self._decode = fn
        fn = lib.mc_paged_prefill_f32
        fn.argtypes = [
            p,
            i64,
            p,
            p,
            p,
            i64,
            i64,
            p,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            ctypes.c_float,
            ctypes.c_int,
        ]
        fn.restype = ctypes.c_int
        self._prefill = fn
        fn = lib.mc_add_rmsnorm_f32
        fn.argtypes = [p, p, p, p, i64, i64, ctypes.c_float, ctypes.c_int]
        fn.restype = ctypes.c_int
        self._rmsnorm = fn
        fn = lib.mc_rope_f32
        fn.argtypes = [p, i64, p, p, p, i64, i64, i64, ctypes.c_int]
        fn.restype = ctypes.c_int
        self._rope = fn
        fn = lib.mc_silu_mul_f32
        fn.argtypes = [p, i64, i64, ctypes.c_int]
        fn.restype = ctypes.c_int
        self._silu_mul = fn

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x * cos + swap_halves(x) * sin`` (``mooncake.engine.rope.apply_rope``) for
        ``x: [T, H, D]`` float32 with each token's heads contiguous; ``cos``, ``sin``:
        ``[T, D]`` contiguous. Returns a new contiguous tensor."""
        T, H, D = x.shape
        if not (
            x.stride(2) == 1 and x.stride(1) == D and cos.is_contiguous() and sin.is_contiguous()
        ):
            raise ValueError("rope: x heads, cos and sin must be contiguous")
        if cos.shape != (T, D) or sin.shape != (T, D):
            raise ValueError(
                f"rope: cos/sin must be [{T}, {D}], got {list(cos.shape)} / {list(sin.shape)}"
            )
        out = x.new_empty(T, H, D)
        rc = self._rope(
            x.data_ptr(),
            x.stride(0),
            cos.data_ptr(),
            sin.data_ptr(),
            out.data_ptr(),
            T,
            H,
            D,
            torch.get_num_threads(),
        )
        if rc != 0:
            raise RuntimeError(f"rope kernel failed (code {rc})")
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """In place on ``gate_up: [T, 2I]`` (float32, contiguous): its first half becomes
        ``silu(gate) * up``; returns that ``[T, I]`` view."""
        if not gate_up.is_contiguous():
            raise ValueError("silu_mul: gate_up must be contiguous")
        T, two_i = gate_up.shape
        self._silu_mul(gate_up.data_ptr(), T, two_i // 2, torch.get_num_threads())
        return gate_up[:, : two_i // 2]

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, add: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``weight * x * rsqrt(mean(x^2) + eps)`` per row of ``x`` ``[T, H]`` (float32,
        contiguous), after ``x += add`` in place when ``add`` is given. Returns a new
        tensor."""
        if not (
            x.is_contiguous() and weight.is_contiguous() and (add is None or add.is_contiguous())
        ):
            raise ValueError("rms_norm: x, weight and add must be contiguous")
        if add is not None and add.shape != x.shape:
            raise ValueError(f"rms_norm: add has shape {tuple(add.shape)}, x {tuple(x.shape)}")
        out = torch.empty_like(x)
        T, H = x.shape
        rc = self._rmsnorm(
            x.data_ptr(),
            None if add is None else add.data_ptr(),
            out.data_ptr(),
            weight.data_ptr(),
            T,
            H,
            eps,
            torch.get_num_threads(),
        )
        if rc != 0:
            raise RuntimeError(f"rms_norm kernel failed (code {rc})")
        return out

    def paged_prefill(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        context_len: int,
        out: torch.Tensor,
        block_size: int,
        window: int | None,
        scale: float,
    ) -> bool:
        """Causal attention of one chunk of ``n`` tokens (positions ``context_len - n``
        onwards, their K/V already in the cache) into ``out``.

        Args:
            q: ``[n, Hq, D]`` float32, each token's heads contiguous.
            k_cache, v_cache: ``[num_slots, Hkv, D]`` float32, contiguous.
            block_table: ``[num_blocks]`` int64 covering ``context_len`` tokens.
            out: ``[n, Hq, D]`` float32, each token's heads contiguous; written.
        Returns:
            False (nothing written) for shapes the kernel does not take (head_dim not a
            multiple of 16, or over 256).
        """
        n, Hq, D = q.shape
        Hkv = k_cache.shape[1]
        if not (
            q.stride(2) == 1 and q.stride(1) == D and out.stride(2) == 1 and out.stride(1) == D
        ):
            raise ValueError("paged_prefill: q and out heads must be contiguous")
        if not (
            k_cache.is_contiguous() and v_cache.is_contiguous() and block_table.is_contiguous()
        ):
            raise ValueError("paged_prefill: k_cache, v_cache and block_table must be contiguous")
        if block_table.shape[0] * block_size < context_len:
            raise ValueError("paged_prefill: block_table does not cover context_len")
        rc = self._prefill(
            q.data_ptr(), q.stride(0),
            k_cache.data_ptr(), v_cache.data_ptr(),
            block_table.data_ptr(),
            n, context_len,
            out.data_ptr(), out.stride(0),
            Hq, Hkv, D, block_size, window or 0, scale, torch.get_num_threads(),
        )  # fmt: skip
        if rc == 1:
            return False
        if rc != 0:
            raise RuntimeError(f"paged_prefill kernel failed (code {rc})")
        return True

    def paged_decode(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        out: torch.Tensor,
        block_size: int,
        window: int | None,
        scale: float,
        max_context: int,
    ) -> None:
        """Decode attention of ``B`` single-token queries into ``out``.

        Args:
            q: ``[B, Hq, D]`` float32, each token's heads contiguous (rows may be strided).
            k_cache, v_cache: ``[num_slots, Hkv, D]`` float32, contiguous (one layer).
            block_tables: ``[B, max_blocks]`` int64, rows contiguous.
            context_lens: ``[B]`` int64, each at most ``max_context``.
            out: ``[B, Hq, D]`` float32, contiguous; written.
        """
        B, Hq, D = q.shape
        Hkv = k_cache.shape[1]
        if not (
            q.stride(2) == 1
            and q.stride(1) == D
            and k_cache.is_contiguous()
            and v_cache.is_contiguous()
        ):
            raise ValueError("paged_decode: q heads, k_cache and v_cache must be contiguous")
        if not (
            out.is_contiguous() and block_tables.stride(1) == 1 and context_lens.is_contiguous()
        ):
            raise ValueError(
                "paged_decode: out, block table rows and context_lens must be contiguous"
            )
        rc = self._decode(
            q.data_ptr(), q.stride(0),
            k_cache.data_ptr(), v_cache.data_ptr(),
            block_tables.data_ptr(), block_tables.stride(0),
            context_lens.data_ptr(),
            out.data_ptr(),
            B, Hq, Hkv, D, block_size, window or 0, scale, max_context, torch.get_num_threads(),
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"paged_decode kernel failed (code {rc})")


_LIBS: dict[str, native_build.LoadOnce[NativeKernels]] = {
    isa: native_build.LoadOnce(
        SOURCE,
        BASE_FLAGS + flags,
        NativeKernels,
        LIBS,
        what="native kernels" if isa == "native" else f"native kernels for {isa}",
    )
    for isa, (flags, _) in ISAS.items()
}


def kernels(isa: str | None = None) -> NativeKernels | None:
    """The compiled kernels, building them on first call; ``None`` where unavailable.

    Args:
        isa: instruction set to build for (see :data:`ISA_ENV`); ``None`` reads
            ``$MOONCAKE_KERNEL_ISA`` (default ``native``).
    Raises:
        ValueError: an unknown instruction set.
    """
    isa = isa or os.environ.get(ISA_ENV, "native") or "native"
    if not isa_supported(isa):
        log.warning(
            "native kernels: this CPU lacks %s (needs %s); using torch's ops",
            isa,
            ", ".join(ISAS[isa][1]),
        )
        return None
    return _LIBS[isa].get()


__all__ = ["ISAS", "ISA_ENV", "NativeKernels", "isa_supported", "kernels"]
