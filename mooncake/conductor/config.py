"""Conductor configuration: which placement and admission policy, and the SLOs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mooncake.config import check_field as _check

PrefillPolicy = Literal["random", "load_balancing", "local_cache_aware", "global_cache_aware"]
PREFILL_POLICIES: tuple[PrefillPolicy, ...] = (
    "random",
    "load_balancing",
    "local_cache_aware",
    "global_cache_aware",
)
Admission = Literal["none", "ttft", "early", "predictive"]
OutputPrediction = Literal["expected", "max_tokens"]
OUTPUT_PREDICTIONS: tuple[OutputPrediction, ...] = ("expected", "max_tokens")
ADMISSIONS: tuple[Admission, ...] = ("none", "ttft", "early", "predictive")


@dataclass(frozen=True)
class ConductorConfig:
    """How the Conductor places and admits requests."""

    prefill_policy: PrefillPolicy = "global_cache_aware"
    """Prefill placement: ``random``, ``load_balancing`` (least queue time),
    ``local_cache_aware`` (queue + prefill with the instance's own prefix) or
    ``global_cache_aware`` (FAST'25 Algorithm 1: may fetch a longer remote prefix)."""
    admission: Admission = "none"
    """``none``: admit everything; ``ttft``: reject at arrival only on estimated TTFT
    (FAST'25 Table 3's baseline, whose decode instances also refuse after prefill:
    :meth:`Conductor.admit_to_decode`, a simulator what-if);
    ``early``: also reject at arrival on the decode load seen now; ``predictive``:
    reject on the decode load projected to the moment the request would reach decode
    (FAST'25 §7)."""
    ttft_slo_s: float = 30.0
    """TTFT SLO in seconds (FAST'25 §8: 30 s)."""
    tbt_slo_s: float = 0.1
    """TBT SLO in seconds (FAST'25 §8: thresholds I/II/III = 0.1/0.2/0.3 s)."""
    kvcache_balancing_threshold: float = 1.0
    """Algorithm 1: an instance fetches the best remote prefix instead of recomputing
    when ``best_prefix > threshold × local_prefix``. 1.0 fetches any longer prefix (the
    transfer time is still charged); larger values keep more work local."""
    block_size: int = 512
    """Tokens per block key (the FAST'25 traces use 512)."""
    decode_token_time_s: float | None = None
    """Uniform decode time per token t_d for predictive rejection; ``None`` uses each
    decode instance's estimated step time at the load projected for the new request
    (a fixed point: :meth:`Conductor._projection`)."""
    output_prediction: OutputPrediction = "expected"
    """Output length the decode-load prediction assumes for a new request:
    ``expected`` = E[min(L, max_tokens)] over the last ``output_window`` finished
    requests (the cap until one has finished); ``max_tokens`` = the request's cap."""
    output_reserve_quantile: float = 0.9
    """KV the Conductor counts for a placed sequence (its ``fits`` check and decode
    load): prompt + min(max_tokens, this quantile of the recent output lengths), with
    ``output_prediction="expected"``. The mean alone under-counts the long outputs that
    fill an instance's memory; 1.0 counts the longest recent output."""
    output_window: int = 2048
    """Finished requests whose output lengths make the ``expected`` distribution."""
    max_decode_batch: int = 1024
    """Most sequences one decode instance runs at once."""
    colocated: bool = False
    """Every instance does prefill and decode (vLLM-like baseline): a request decodes
    where it was prefilled."""
    seed: int = 0
    """Seed of the ``random`` policy."""

    def __post_init__(self) -> None:
        _check(
            self.prefill_policy in PREFILL_POLICIES,
            "prefill_policy",
            f"must be one of {PREFILL_POLICIES}, got {self.prefill_policy!r}",
        )
        _check(
            self.admission in ADMISSIONS,
            "admission",
            f"must be one of {ADMISSIONS}, got {self.admission!r}",
        )
        _check(self.ttft_slo_s > 0, "ttft_slo_s", f"must be positive, got {self.ttft_slo_s}")
        _check(self.tbt_slo_s > 0, "tbt_slo_s", f"must be positive, got {self.tbt_slo_s}")
        _check(
            self.kvcache_balancing_threshold >= 1.0,
            "kvcache_balancing_threshold",
            f"must be >= 1, got {self.kvcache_balancing_threshold}",
        )
        _check(self.block_size > 0, "block_size", f"must be positive, got {self.block_size}")
        _check(
            self.decode_token_time_s is None or self.decode_token_time_s > 0,
            "decode_token_time_s",
            f"must be positive, got {self.decode_token_time_s}",
        )
        _check(
            self.output_prediction in OUTPUT_PREDICTIONS,
            "output_prediction",
            f"must be one of {OUTPUT_PREDICTIONS}, got {self.output_prediction!r}",
        )
        _check(
            0 < self.output_reserve_quantile <= 1,
            "output_reserve_quantile",
            f"must be in (0, 1], got {self.output_reserve_quantile}",
        )
        _check(
            self.output_window > 0, "output_window", f"must be positive, got {self.output_window}"
        )
        _check(
            self.max_decode_batch > 0,
            "max_decode_batch",
            f"must be positive, got {self.max_decode_batch}",
        )


__all__ = [
    "ADMISSIONS",
    "OUTPUT_PREDICTIONS",
    "PREFILL_POLICIES",
    "Admission",
    "ConductorConfig",
    "OutputPrediction",
    "PrefillPolicy",
]
