"""Typed configs, built once at the edge (CLI, server, ``LLM(...)``) and passed down.

Every field is validated in ``__post_init__``; a bad value raises ``ValueError`` naming
the field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mooncake.cpu_list import check_spec
from mooncake.types import DTYPES, DType


def check_field(cond: bool, name: str, msg: str) -> None:
    """Raise ``ValueError("<name>: <msg>")`` unless ``cond``: every config's validation."""
    if not cond:
        raise ValueError(f"{name}: {msg}")


def reject_unknown_fields(cls: type, data: dict[str, Any]) -> None:
    """Strict parsing: a key that is not a field of dataclass ``cls`` is an error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")


_check = check_field


@dataclass(frozen=True)
class EngineConfig:
    """How one engine instance runs a model."""

    model: str | None = None
    """Local Hugging Face model directory; ``None`` means the built-in default model."""
    dtype: DType = "float32"
    """Weights and activations dtype."""
    device: str = "cpu"
    """torch device string: ``cpu`` or ``cuda[:N]``."""
    block_size: int = 16
    """Tokens per KV block."""
    num_blocks: int | None = None
    """Device KV blocks; ``None`` sizes the pool from ``kv_cache_bytes``."""
    kv_cache_bytes: int = 512 * 1024**2
    """Bytes for the KV pool when ``num_blocks`` is not given."""
    max_num_seqs: int = 64
    """Most sequences in the running batch."""
    max_num_batched_tokens: int = 2048
    """Token budget of one engine step (decode tokens + prefill chunk tokens)."""
    long_prefill_chunk: int = 2048
    """Chunked prefill: most prompt tokens of one sequence computed in one step."""
    max_prefill_tokens_per_step: int | None = None
    """Most chunk tokens in one step (prompt chunks and recomputes: every sequence that
    runs more than one token; decode tokens do not count), so the decodes beside them
    keep a bounded gap between tokens. Waiting sequences are admitted whole in arrival
    order while they fit; only one that does not fit alone is cut to this size
    (``mooncake.engine.scheduler``). ``None``: only ``max_num_batched_tokens`` and
    ``long_prefill_chunk`` bound a step. A decode-only worker sets it from
    ``WorkerConfig.decode_prefill_tokens_per_step`` when it is ``None``."""
    enable_prefix_caching: bool = True
    """Reuse cached full blocks across requests."""
    hash_seed: int = 0
    """Seed of the block-key chain (docs/kv-hashing.md)."""
    max_model_len: int | None = None
    """Context limit; ``None`` takes the model's ``max_position_embeddings``."""
    num_threads: int | None = None
    """torch intra-op threads on CPU; ``None`` leaves torch's default."""
    cpu_threads_bind: str | None = None
    """Pin the engine's compute threads, one per CPU (see ``mooncake.engine.thread_bind``):
    a CPU list (``"0-3"``, ``"0,2"``; the thread count becomes its length), ``"auto"``
    (the CPUs this process may use, one per thread) or ``"none"``. ``None`` reads
    ``$MOONCAKE_CPU_OMP_THREADS_BIND``; unset, a cluster started by ``mooncake.LLM``
    pins each worker's engine to a slice of CPUs of its own (``auto``) and an engine in
    any other process (``LLMEngine`` in yours, a deployed ``mooncake worker``) is not
    pinned."""
    native_kernels: bool = True
    """Run attention (reading the paged cache in place), RMSNorm, rotary embedding and
    SiLU-and-mul with the compiled CPU kernels (float32 on CPU; built on first use with
    the system C compiler, see ``mooncake.engine.native``). Off, or where they cannot be
    built, the torch path computes the same result more slowly."""
    keep_freed_memory: bool = True
    """Raise glibc malloc's mmap/trim thresholds for the process so each step's large
    activation buffers are reused instead of re-mapped and page-faulted (see
    ``mooncake.engine.malloc``). Process-wide; turn off to keep glibc's defaults."""
    null_model: bool = False
    """Skip the forward pass (all-zero logits, so greedy emits token 0): measures the
    serving path's own overhead, never for real output."""
    kv_pool_path: str | None = None
    """Put the paged KV pool in a shared-memory file at this path (CPU only; see
    ``mooncake.engine.shared_pool``) so a decode engine on the same host can copy a
    request's blocks straight out of it. A worker sets it to a file of its own tier
    directory (``WorkerConfig.shared_kv_pool``), whatever was given here; ``None``:
    private memory."""

    def __post_init__(self) -> None:
        _check(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        _check(self.block_size > 0, "block_size", f"must be positive, got {self.block_size}")
        _check(
            self.num_blocks is None or self.num_blocks > 0,
            "num_blocks",
            f"must be positive, got {self.num_blocks}",
        )
        _check(
            self.kv_cache_bytes > 0,
            "kv_cache_bytes",
            f"must be positive, got {self.kv_cache_bytes}",
        )
        _check(self.max_num_seqs > 0, "max_num_seqs", f"must be positive, got {self.max_num_seqs}")
        _check(
            self.max_num_batched_tokens > 0,
            "max_num_batched_tokens",
            f"must be positive, got {self.max_num_batched_tokens}",
        )
        _check(
            self.long_prefill_chunk > 0,
            "long_prefill_chunk",
            f"must be positive, got {self.long_prefill_chunk}",
        )
        _check(
            self.max_prefill_tokens_per_step is None or self.max_prefill_tokens_per_step > 0,
            "max_prefill_tokens_per_step",
            f"must be positive, got {self.max_prefill_tokens_per_step}",
        )
        _check(
            self.max_model_len is None or self.max_model_len > 0,
            "max_model_len",
            f"must be positive, got {self.max_model_len}",
        )
        _check(
            self.num_threads is None or self.num_threads > 0,
            "num_threads",
            f"must be positive, got {self.num_threads}",
        )
        if self.cpu_threads_bind is not None:
            check_spec(self.cpu_threads_bind)
        _check(
            self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            f"must be 'cpu' or 'cuda[:N]', got {self.device!r}",
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        """Strict parse: unknown keys are an error, not silently ignored."""
        reject_unknown_fields(cls, data)
        return cls(**data)


__all__ = ["EngineConfig", "check_field", "reject_unknown_fields"]
