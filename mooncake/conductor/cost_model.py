"""Cost model: how long prefill, one decode step and a KV transfer take.

Defaults describe the FAST'25 testbed: dummy LLaMA3-70B on one 8×A800 node per
instance. Every constant names its source; the ones marked *assumption* are not in the
paper and are the knobs to revisit when comparing against it.

The Conductor starts from these formulas and refines them online from observed timings
(:class:`PrefillTimeEstimator`, :class:`DecodeStepEstimator`,
:class:`BandwidthEstimator`); the simulator uses the formulas (or a fit a live
Conductor exported) as ground truth.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {msg}")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape of the served model (defaults: LLaMA3-70B)."""

    num_layers: int = 80
    """Transformer layers (LLaMA3-70B config; FAST'25 §8 uses l=80)."""
    d_model: int = 8192
    """Hidden size d (LLaMA3-70B config; FAST'25 §8 uses d=8192)."""
    num_params: float = 70.6e9
    """Parameter count (LLaMA3-70B model card)."""
    bytes_per_param: float = 2.0
    """bf16 weights (FAST'25 serves in bf16)."""
    kv_bytes_per_token: int = 327_680
    """2 (K,V) × 80 layers × 8 KV heads (GQA) × 128 head dim × 2 bytes = 320 KiB
    (FAST'25 §2 and Table: "KVCache 320 KB per token" for LLaMA3-70B)."""
    attn_coef: float = 4.0
    """a in prefill FLOPs per layer a·n²·d + b·n·d² (FAST'25 §5.2, a=4)."""
    linear_coef: float = 22.0
    """b in prefill FLOPs per layer a·n²·d + b·n·d² (FAST'25 §5.2, b=22)."""

    def __post_init__(self) -> None:
        _check(self.num_layers > 0, "num_layers", f"must be positive, got {self.num_layers}")
        _check(self.d_model > 0, "d_model", f"must be positive, got {self.d_model}")
        _check(self.num_params > 0, "num_params", f"must be positive, got {self.num_params}")
        _check(
            self.bytes_per_param > 0,
            "bytes_per_param",
            f"must be positive, got {self.bytes_per_param}",
        )
        _check(
            self.kv_bytes_per_token > 0,
            "kv_bytes_per_token",
            f"must be positive, got {self.kv_bytes_per_token}",
        )
        _check(self.attn_coef >= 0, "attn_coef", f"must be >= 0, got {self.attn_coef}")
        _check(self.linear_coef >= 0, "linear_coef", f"must be >= 0, got {self.linear_coef}")

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.bytes_per_param


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """One serving instance (defaults: one node of 8× NVIDIA A800-SXM4-80GB)."""

    peak_flops: float = 8 * 312e12
    """Dense bf16 FLOP/s of the instance: 8 × 312 TFLOP/s (A800 = A100 compute; NVIDIA
    A100 datasheet)."""
    mfu: float = 0.5
    """Model FLOPs utilisation reached by prefill (*assumption*; the paper does not state
    one; 0.4–0.6 is typical for 70B prefill with tensor parallelism on A100-class GPUs)."""
    hbm_bandwidth: float = 8 * 2.039e12
    """HBM bytes/s of the instance: 8 × 2,039 GB/s (A100/A800 80GB SXM datasheet)."""
    mbu: float = 0.7
    """Fraction of HBM bandwidth reached by a decode step (*assumption*)."""
    hbm_bytes: float = 8 * 80e9
    """HBM capacity: 8 × 80 GB (A800-SXM4-80GB)."""
    kv_memory_fraction: float = 0.9
    """Share of HBM left to weights + KV after activations/workspace (*assumption*,
    vLLM's default ``gpu_memory_utilization`` is 0.9)."""
    rdma_bandwidth: float = 100e9
    """Bytes/s between two nodes: four 200 Gbps RDMA NICs per node = 800 Gbps
    (FAST'25 §8 testbed)."""
    step_overhead_s: float = 0.005
    """CPU time per engine step (scheduling, input preparation, sampled-token
    transfer and output processing) while the GPU idles: vLLM's multi-step scheduling
    RFC (vllm-project/vllm#6854, July 2024, v0.5) measured 5–13 ms of GPU bubble per
    decode step; the low end is used. Added to every continuous-batching step."""
    request_overhead_s: float = 0.0
    """Serving-path seconds per request outside the engines before its prefill can
    start: placement, graph submission, task dispatch, the first token's delivery.
    0 for the paper's testbed (not modelled); a live cluster's cost-model export
    carries the median it measured (TTFT − engine queue − prefill compute)."""
    prefill_step_tokens: int = 0
    """Token budget of one prefill engine step: prompts waiting at a prefill instance
    are computed together, chunked, under this budget (the live engine's
    ``max_num_batched_tokens``). 0: whole prompts one at a time, FIFO (the paper's
    prefill nodes, and every cost model without a live export)."""
    prefill_chunk_tokens: int = 0
    """Most tokens of one prompt in a prefill step (the live engine's
    ``long_prefill_chunk``); 0: the step budget."""
    prefill_max_seqs: int = 0
    """Most prompts in a prefill step (the live engine's ``max_num_seqs``); 0: no limit."""
    handoff_s: float = 0.0
    """Fixed seconds between a prefill's first token and the decode instance taking the
    request, beyond the KV transfer time (task hand-over, decode admission): a live
    cluster's export carries the median it measured (first token gap − a later gap −
    the transfer time); 0 when not measured."""
    token_overhead_s: float = 0.0
    """Serving seconds per decode step outside the step itself (the engine loop between
    two decode steps: taking new requests, reports), which every running sequence waits
    once per token: a live cluster's export carries the median it measured; 0 when not
    measured."""

    def __post_init__(self) -> None:
        for name in ("peak_flops", "hbm_bandwidth", "hbm_bytes", "rdma_bandwidth"):
            value = getattr(self, name)
            _check(value > 0, name, f"must be positive, got {value}")
        for name in (
            "step_overhead_s",
            "request_overhead_s",
            "prefill_step_tokens",
            "prefill_chunk_tokens",
            "prefill_max_seqs",
            "handoff_s",
            "token_overhead_s",
        ):
            value = getattr(self, name)
            _check(value >= 0, name, f"must be >= 0, got {value}")
        for name in ("mfu", "mbu", "kv_memory_fraction"):
            value = getattr(self, name)
            _check(0 < value <= 1, name, f"must be in (0, 1], got {value}")


@dataclass(frozen=True, slots=True)
class CostModel:
    """Closed-form timings for a model on an instance."""

    model: ModelSpec = ModelSpec()
    """The served model."""
    hardware: HardwareSpec = HardwareSpec()
    """One instance's hardware."""
    prefill_fit: tuple[float, float, float] | None = None
    """Fitted prefill time: (seconds per attention FLOP, seconds per linear FLOP,
    seconds per prefill), e.g. what a live Conductor learned online
    (:func:`mooncake.conductor.cost_export.export_cost_model`); ``None`` = FLOPs at
    ``peak_flops × mfu``."""
    decode_fit: tuple[float, float, float] | None = None
    """Fitted decode step time: (seconds per step, seconds per running sequence,
    seconds per KV token read), what a live Conductor learned online
    (:class:`DecodeStepEstimator`); ``None`` = the roofline plus
    ``step_overhead_s``."""
    prefill_step_fit: tuple[float, float, float] | None = None
    """Fitted time of one batched prefill step, same terms as ``prefill_fit`` summed
    over the step's prompt chunks with the fixed term once per step (a live Conductor
    fits it on the engines' prompt-only steps); ``None`` = ``prefill_fit``. Used by
    :meth:`prefill_step_time`."""

    # -- prefill ---------------------------------------------------------------
    def prefill_flops(self, n: int, cached: int = 0) -> float:
        """FLOPs to compute prompt tokens ``cached..n`` given the first ``cached`` in KV.

        Per layer a·n²·d + b·n·d² (FAST'25 §5.2); with a cached prefix of length c only
        the new tokens' projections (b·(n−c)·d²) and their attention over the whole
        context (a·(n²−c²)·d) remain, so chunks telescope: f(0,k)+f(k,n) = f(0,n).
        """
        m = self.model
        c = min(cached, n)
        per_layer = (
            m.attn_coef * (n * n - c * c) * m.d_model + m.linear_coef * (n - c) * m.d_model**2
        )
        return m.num_layers * per_layer

    def prefill_time(self, n: int, cached: int = 0) -> float:
        """Seconds of prefill compute for ``n`` prompt tokens with ``cached`` reused."""
        if self.prefill_fit is None:
            return self.prefill_flops(n, cached) / (self.hardware.peak_flops * self.hardware.mfu)
        if cached >= n:
            return 0.0
        m = self.model
        c = min(cached, n)
        attn = m.num_layers * m.attn_coef * (n * n - c * c) * m.d_model
        linear = m.num_layers * m.linear_coef * (n - c) * m.d_model**2
        per_attn, per_linear, fixed = self.prefill_fit
        return max(0.0, per_attn * attn + per_linear * linear + fixed)

    def prefill_step_time(self, chunks: list[tuple[int, int]]) -> float:
        """Seconds of one batched prefill step computing, for each ``(n, cached)`` in
        ``chunks``, prompt tokens ``cached..n``: each chunk's compute, and the fitted
        fixed cost (``prefill_fit[2]``) once for the step, as the engine pays it once
        per forward pass, not once per prompt in it."""
        if not chunks:
            return 0.0
        fit = self.prefill_step_fit if self.prefill_step_fit is not None else self.prefill_fit
        if fit is None:
            return sum(self.prefill_time(n, c) for n, c in chunks)
        m = self.model
        per_attn, per_linear, fixed = fit
        total = fixed
        for n, cached in chunks:
            c = min(cached, n)
            attn = m.num_layers * m.attn_coef * (n * n - c * c) * m.d_model
            linear = m.num_layers * m.linear_coef * (n - c) * m.d_model**2
            total += per_attn * attn + per_linear * linear
        return max(0.0, total)

    # -- decode ----------------------------------------------------------------
    def decode_step_time(self, batch: int, kv_tokens: int, prefill_flops: float = 0.0) -> float:
        """Seconds of one engine step: ``batch`` decode tokens reading ``kv_tokens`` of KV,
        plus an optional prefill chunk of ``prefill_flops`` (chunked prefill).

        Roofline: the step takes the longer of its compute and its HBM traffic (weights
        once per step + every cached KV byte), so a big prefill chunk dominates the step
        and stretches every co-batched decode's token gap; plus the engine's fixed
        per-step overhead (``HardwareSpec.step_overhead_s``).
        """
        if batch <= 0 and prefill_flops <= 0:
            return 0.0
        m, h = self.model, self.hardware
        if self.decode_fit is not None:
            # A fit is linear in what a step reads; a prefill chunk riding along costs
            # its FLOPs at the fitted (or the prior's) rate for projections, which
            # dominate short chunks. A negative term is noise of the fit (a step never
            # gets faster with more sequences or KV): extrapolated to larger batches it
            # would give steps of no time at all.
            per_step, per_seq, per_kv = (max(0.0, c) for c in self.decode_fit)
            flop_s = (
                self.prefill_fit[1]
                if self.prefill_fit is not None
                else 1.0 / (h.peak_flops * h.mfu)
            )
            step = per_step + per_seq * max(0, batch) + per_kv * max(0, kv_tokens)
            return max(0.0, step + prefill_flops * flop_s)
        compute = (2.0 * m.num_params * batch + prefill_flops) / (h.peak_flops * h.mfu)
        memory = (m.weight_bytes + kv_tokens * m.kv_bytes_per_token) / (h.hbm_bandwidth * h.mbu)
        return max(compute, memory) + h.step_overhead_s

    def decode_step_times(
        self, batch: npt.NDArray[np.int64], kv_tokens: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """:meth:`decode_step_time` (no prefill chunk) of many instances at once: the
        same operations in the same order, so the same floats (batches must be > 0)."""
        m, h = self.model, self.hardware
        if self.decode_fit is not None:
            per_step, per_seq, per_kv = (max(0.0, c) for c in self.decode_fit)
            flop_s = (
                self.prefill_fit[1]
                if self.prefill_fit is not None
                else 1.0 / (h.peak_flops * h.mfu)
            )
            step = per_step + per_seq * np.maximum(0, batch) + per_kv * np.maximum(0, kv_tokens)
            fitted: npt.NDArray[np.float64] = np.maximum(0.0, step + 0.0 * flop_s)
            return fitted
        compute = (2.0 * m.num_params * batch + 0.0) / (h.peak_flops * h.mfu)
        memory = (m.weight_bytes + kv_tokens * m.kv_bytes_per_token) / (h.hbm_bandwidth * h.mbu)
        out: npt.NDArray[np.float64] = np.maximum(compute, memory) + h.step_overhead_s
        return out

    def kv_capacity_tokens(self) -> int:
        """KV tokens that fit in HBM next to the weights."""
        h, m = self.hardware, self.model
        free = h.hbm_bytes * h.kv_memory_fraction - m.weight_bytes
        return max(0, math.floor(free / m.kv_bytes_per_token))

    # -- transfer --------------------------------------------------------------
    def transfer_time(self, tokens: int, bandwidth: float | None = None) -> float:
        """Seconds to move the KV of ``tokens`` tokens between instances."""
        bw = self.hardware.rdma_bandwidth if bandwidth is None else bandwidth
        return tokens * self.model.kv_bytes_per_token / bw


class PrefillTimeEstimator:
    """Prefill time as a function of (prompt length, cached length), fitted online.

    Least squares of observed seconds on the features [attention FLOPs, linear FLOPs, 1]
    with a ridge prior pulling toward the closed-form model, so it starts exactly at the
    FLOPs formula and drifts toward what the hardware actually does.

    Args:
        cost: the closed-form model the prior comes from.
        prior_weight: pseudo-observations the prior is worth.
        refit_every: observations between refits (a 3×3 solve each).
    """

    def __init__(self, cost: CostModel, prior_weight: float = 1.0, refit_every: int = 16) -> None:
        self.cost = cost
        rate = 1.0 / (cost.hardware.peak_flops * cost.hardware.mfu)
        # Features are scaled to ~1 for a 10k-token prompt so the solve is well conditioned.
        scale = np.array([self._attn(10_000, 0), self._linear(10_000, 0), 1.0])
        self._scale = np.where(scale > 0, scale, 1.0)  # a zero coefficient keeps a zero feature
        self._prior = np.array([rate * self._scale[0], rate * self._scale[1], 0.0])
        # The intercept (fixed per-prefill overhead) is held near 0 more firmly than the
        # slopes, so a handful of samples moves the slopes rather than inventing overhead.
        self._ata = np.diag([prior_weight, prior_weight, 10.0 * prior_weight])
        self._atb = self._ata @ self._prior
        self._coef = self._prior.copy()
        self._pending = 0
        self._refit_every = refit_every
        self.num_observations = 0

    def _attn(self, n: int, c: int) -> float:
        m = self.cost.model
        return float(m.num_layers * m.attn_coef * (n * n - c * c) * m.d_model)

    def _linear(self, n: int, c: int) -> float:
        m = self.cost.model
        return float(m.num_layers * m.linear_coef * (n - c) * m.d_model**2)

    def _features(self, n: int, cached: int) -> np.ndarray:
        c = min(cached, n)
        x: np.ndarray = np.array([self._attn(n, c), self._linear(n, c), 1.0]) / self._scale
        return x

    def estimate(self, n: int, cached: int = 0) -> float:
        """Estimated seconds to prefill ``n`` tokens of which ``cached`` are reused."""
        if cached >= n:
            return 0.0
        return max(0.0, float(self._features(n, cached) @ self._coef))

    def coefficients(self) -> tuple[float, float, float]:
        """The fit as (seconds per attention FLOP, seconds per linear FLOP, seconds per
        prefill): :attr:`CostModel.prefill_fit`. Refits first if observations are pending,
        so an export reflects every prefill seen."""
        self._refit()
        c = self._coef / self._scale
        return float(c[0]), float(c[1]), float(c[2])

    def observe(self, n: int, cached: int, seconds: float) -> None:
        """Feed one measured prefill."""
        self._add(self._features(n, cached), seconds)

    def observe_step(self, chunks: Sequence[tuple[int, int]], seconds: float) -> None:
        """Feed one measured batched step computing tokens ``start..end`` of each
        ``(end, start)`` prompt chunk: the features summed over chunks, the intercept
        once (what :meth:`CostModel.prefill_step_time` models)."""
        if not chunks:
            return
        x = sum((self._features(e, s) for e, s in chunks), np.zeros(3))
        x[2] = 1.0 / self._scale[2]
        self._add(x, seconds)

    def _add(self, x: np.ndarray, seconds: float) -> None:
        self._ata += np.outer(x, x)
        self._atb += x * seconds
        self.num_observations += 1
        self._pending += 1
        if self._pending >= self._refit_every:
            self._refit()

    def _refit(self) -> None:
        if self._pending:
            self._pending = 0
            self._coef = np.linalg.solve(self._ata, self._atb)


class DecodeStepEstimator:
    """Seconds of one decode-only engine step as a function of (running sequences, KV
    tokens they read), fitted online.

    The model is linear: ``per_step + per_seq·batch + per_kv·kv_tokens``. On a
    memory-bound accelerator that is the roofline's memory term (weights once per step,
    then every KV byte) plus the engine's fixed overhead; on a CPU the per-sequence
    term carries the batch's compute. Least squares with a ridge prior at the
    closed-form model's linearisation (or at :attr:`CostModel.decode_fit` when the model
    already carries one), so it starts at the formula and moves to what the engine does.

    Args:
        cost: the closed-form model the prior comes from.
        prior_weight: pseudo-observations the prior is worth.
        refit_every: observations between refits (a 3×3 solve each).
    """

    def __init__(self, cost: CostModel, prior_weight: float = 1.0, refit_every: int = 16) -> None:
        m, h = cost.model, cost.hardware
        if cost.decode_fit is not None:
            prior = np.array(cost.decode_fit, dtype=float)
        else:
            bw = h.hbm_bandwidth * h.mbu
            prior = np.array(
                [
                    m.weight_bytes / bw + h.step_overhead_s,
                    2.0 * m.num_params / (h.peak_flops * h.mfu),
                    m.kv_bytes_per_token / bw,
                ]
            )
        # Features scaled to ~1 for a step of 8 sequences reading 8k tokens.
        self._scale = np.array([1.0, 8.0, 8192.0])
        self._prior = prior * self._scale
        self._ata = np.diag([prior_weight, prior_weight, prior_weight])
        self._atb = self._ata @ self._prior
        self._coef = self._prior.copy()
        self._pending = 0
        self._refit_every = refit_every
        self.num_observations = 0

    def _features(self, batch: int, kv_tokens: int) -> np.ndarray:
        x: np.ndarray = np.array([1.0, float(batch), float(kv_tokens)]) / self._scale
        return x

    def estimate(self, batch: int, kv_tokens: int) -> float:
        """Estimated seconds of one step of ``batch`` sequences reading ``kv_tokens``."""
        if batch <= 0:
            return 0.0
        c, sc = self._coef, self._scale
        # Written out term by term so estimate_many gives the same floats.
        t = c[0] / sc[0] + (batch / sc[1]) * c[1] + (kv_tokens / sc[2]) * c[2]
        return max(0.0, float(t))

    def estimate_many(
        self, batch: npt.NDArray[np.int64], kv_tokens: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """:meth:`estimate` of many instances at once (batches must be > 0): the same
        operations in the same order, so the same floats."""
        c, sc = self._coef, self._scale
        t = c[0] / sc[0] + (batch / sc[1]) * c[1] + (kv_tokens / sc[2]) * c[2]
        out: npt.NDArray[np.float64] = np.maximum(0.0, t)
        return out

    def coefficients(self) -> tuple[float, float, float]:
        """The fit as (seconds per step, per sequence, per KV token):
        :attr:`CostModel.decode_fit`. Refits first if observations are pending."""
        self._refit()
        c = self._coef / self._scale
        return float(c[0]), float(c[1]), float(c[2])

    def observe(self, batch: int, kv_tokens: int, seconds: float) -> None:
        """Feed one measured decode-only step."""
        if batch <= 0 or seconds <= 0:
            return
        x = self._features(batch, kv_tokens)
        self._ata += np.outer(x, x)
        self._atb += x * seconds
        self.num_observations += 1
        self._pending += 1
        if self._pending >= self._refit_every or self.num_observations < self._refit_every:
            self._refit()

    def _refit(self) -> None:
        if self._pending:
            self._pending = 0
            self._coef = np.linalg.solve(self._ata, self._atb)


class OverheadEstimator:
    """A per-request time as the median of the latest ``window`` samples (robust to
    the odd request that waited on something else).

    Args:
        window: samples kept.
    """

    def __init__(self, window: int = 256) -> None:
        if window <= 0:
            raise ValueError(f"window: must be positive, got {window}")
        self._samples: deque[float] = deque(maxlen=window)
        self.num_observations = 0

    def observe(self, seconds: float) -> None:
        if math.isfinite(seconds):
            self._samples.append(max(0.0, seconds))
            self.num_observations += 1

    @property
    def seconds(self) -> float | None:
        """The median so far; ``None`` before any sample."""
        return float(np.median(self._samples)) if self._samples else None


class BandwidthEstimator:
    """Transfer bandwidth as an exponentially weighted mean of measured transfers.

    Args:
        initial: bytes/s before any measurement (the nominal link speed).
        alpha: weight of the newest sample.
    """

    def __init__(self, initial: float, alpha: float = 0.2) -> None:
        if initial <= 0:
            raise ValueError(f"initial: must be positive, got {initial}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {alpha}")
        self.bandwidth = initial
        self.alpha = alpha

    def observe(self, nbytes: float, seconds: float) -> None:
        if nbytes <= 0 or seconds <= 0:
            return
        self.bandwidth += self.alpha * (nbytes / seconds - self.bandwidth)

    def transfer_time(self, nbytes: float) -> float:
        return nbytes / self.bandwidth


__all__ = [
    "BandwidthEstimator",
    "CostModel",
    "DecodeStepEstimator",
    "HardwareSpec",
    "ModelSpec",
    "OverheadEstimator",
    "PrefillTimeEstimator",
]
