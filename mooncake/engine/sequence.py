"""One request's state inside the engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from mooncake.kvcache import Block, KVExport
from mooncake.outputs import RequestMetrics
from mooncake.sampling_params import SamplingParams
from mooncake.tokenizer import IncrementalDetokenizer
from mooncake.types import BlockKey, FinishReason


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    """Effective sampling seed (the request's, or one drawn at arrival)."""
    root_key: BlockKey
    metrics: RequestMetrics
    token_ids: list[int] = field(default_factory=list)
    """Prompt + generated tokens."""
    num_computed_tokens: int = 0
    """Leading tokens whose KV is in this sequence's blocks."""
    block_table: list[Block] = field(default_factory=list)
    block_keys: list[BlockKey] = field(default_factory=list)
    """Keys of the full blocks of ``token_ids`` computed so far (a cache of the chain)."""
    num_registered_blocks: int = 0
    num_cached_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    kv_import: KVExport | None = None
    keep_kv: bool = False
    cache_salt: str | None = None
    """Hold the blocks after finishing, for ``export_kv``."""
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float = 0.0
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    detok: IncrementalDetokenizer | None = None
    text: str = ""
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
