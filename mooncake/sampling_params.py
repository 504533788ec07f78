"""``SamplingParams``: how to sample one request, with vLLM's field names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this sample greedily: dividing logits by a smaller one overflows
float32 (``1e-300`` is 0 there) and turns the distribution into inf/NaN."""


@dataclass
class SamplingParams:
    """Per-request sampling options. Invalid values raise ``ValueError`` naming the field."""

    n: int = 1
    """Completions per prompt (only 1 is supported)."""
    temperature: float = 1.0
    """0 (or anything below ``GREEDY_TEMPERATURE``) means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 or -1 disables."""
    seed: int | None = None
    """Makes sampling reproducible for this request (independent of batching)."""
    max_tokens: int | None = 16
    """Most tokens to generate; None means up to the context limit."""
    min_tokens: int = 0
    """Tokens to generate before EOS / stop ids / stop strings may end the request."""
    stop: list[str] = field(default_factory=list)
    """Stop strings; the output text ends before the first one found."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end the request (in addition to the model's EOS)."""
    ignore_eos: bool = False
    """Keep generating past the model's EOS tokens."""
    logprobs: int | None = None
    """Return the log-probability of each chosen token and of this many top tokens."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string in the output text."""
    skip_special_tokens: bool = True
    """Drop special tokens when detokenizing."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.n != 1:
            raise ValueError(f"n: only n=1 is supported, got {self.n}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k == -1:
            self.top_k = 0
        if self.top_k < 0:
            raise ValueError(f"top_k: must be -1, 0 (disabled) or positive, got {self.top_k}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be at least 1, got {self.max_tokens}")
        if self.min_tokens < 0 or (
            self.max_tokens is not None and self.min_tokens > self.max_tokens
        ):
            raise ValueError(f"min_tokens: must be in [0, max_tokens], got {self.min_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs: must be in [0, 20], got {self.logprobs}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop: must be non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids: must be non-negative integers")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


def params_per_prompt(
    params: SamplingParams | Sequence[SamplingParams] | None, n: int
) -> list[SamplingParams]:
    """One ``SamplingParams`` per prompt: a single value (or None: defaults) is shared;
    a sequence must have one per prompt."""
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * n
    out = list(params)
    if len(out) != n:
        raise ValueError(f"sampling_params: need one per prompt ({n}), got {len(out)}")
    return out
