"""Request results, shaped like vLLM's (``out.outputs[0].text``), plus timings and
cached-token counts."""

from __future__ import annotations

from dataclasses import dataclass, field

from mooncake.types import FinishReason


@dataclass
class RequestMetrics:
    """Wall-clock times (``time.perf_counter()`` seconds of the process that served it)."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    num_computed_prompt_tokens: int = 0
    """Prompt tokens this request actually ran through the model (cached ones excluded)."""

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, float]] | None = None
    """Per generated token: {token id: logprob} of the chosen and the top tokens."""
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    """The stop token id or stop string that ended the request, if any."""


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    """Prompt tokens served from the prefix cache (or imported KV)."""
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(0.0))

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.outputs[0].finish_reason
