"""What happened to a streamed request moved off a lost worker, step by step, as the
client saw it: when it learned the worker had left, when the stream acted on it, when
the Conductor placed it again, when the new graph was submitted, how the new decode
worker got the KV (fetched from the prefill worker's host tier, or recomputed) and when
the first resumed token arrived. ``LLM.move_log`` keeps the latest of these records so a
benchmark (``benchmarks/chaos.py``) can say where a move's extra time goes.

Every time is ``time.monotonic()`` of the client's process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Notice = Literal["membership", "liveness", "watch", "stream", "exit"]
"""How the stream learned the worker was gone: the scheduler's worker-left event, the
periodic check of the live workers (an event that never came), the worker's process
on this host found exiting, or, with the worker then confirmed gone
(``mooncake.client_liveness``), the client's watch on the worker breaking or the
worker's engine closing its token stream mid-request."""


@dataclass(slots=True)
class MoveRecord:
    """One move of one streamed request (a request moved twice has two records)."""

    request_id: str
    """The user's request id."""
    attempt_id: str
    """The id the request runs under after this move."""
    lost_worker: str
    resumed: bool
    """Tokens had been delivered: decode resumes from them (else placed from scratch)."""
    tokens_before: int
    """Tokens delivered to the caller before the move."""
    notice: Notice
    left_at: float | None
    """When the client learned the worker was gone: its worker-left event, its watch
    breaking or its token stream closing (None: none of them; the liveness check found
    it)."""
    noticed_at: float
    """When the stream acted on the loss."""
    last_token_at: float | None
    """When the last token before the move arrived (None: none had)."""
    placed_at: float | None = None
    submitted_at: float | None = None
    first_token_at: float | None = None
    """When the first token of the new attempt arrived."""
    decode_worker: str = ""
    prompt_tokens: int = 0
    block_size: int = 0
    transfer_path: str = ""
    """How the new decode worker got the prompt's KV (``TransferResult.path``; ``miss``:
    recomputed); empty until the transfer task's result has been read."""
    transfer_s: float | None = None
    """The transfer task's own time on the decode worker."""
    fetched_blocks: int | None = None
    early: bool | None = None
    """The new decode worker started the transfer and decode at placement (the early
    resume), before the graph was submitted: its first resumed token may then arrive
    before ``submitted_at``. None until the transfer task's result has been read."""

    @property
    def recomputed_tokens(self) -> int | None:
        """Tokens the new decode worker runs through the model before its first new token:
        prompt + tokens so far, less the blocks it fetched (its own prefix cache may
        hold more: an upper bound)."""
        if self.fetched_blocks is None:
            return None
        return self.prompt_tokens + self.tokens_before - self.fetched_blocks * self.block_size


__all__ = ["MoveRecord", "Notice"]
