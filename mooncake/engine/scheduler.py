"""Continuous batching: which sequences run in the next step and how many tokens each.

Every step: running sequences first (one decode token each, or the next chunk of a
chunked prefill), then waiting sequences are admitted while the token budget, the batch
size and free blocks allow. When a running sequence cannot get a block, the most
recently admitted running sequence is preempted (its blocks freed; it is recomputed
later, cheaply when its blocks are still in the prefix cache).

``EngineConfig.max_prefill_tokens_per_step`` (off by default) bounds the step's chunk
tokens (every sequence that runs more than one token: prompt chunks, a resumed request's
recompute), so the decodes running beside them keep stepping at a bounded gap; decode
tokens never count against it. Waiting sequences are then admitted whole, in arrival
order, while they fit what is left of it; only one longer than the bound is cut into
chunks (it starts in what is left). So requests that arrive together
(e.g. the streams of a lost decode worker, resumed here at once) each get their next
token a step after the one before instead of all waiting for one giant step, and no
step ends with only part of a request when a whole one could have ended it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mooncake.config import EngineConfig
from mooncake.engine.kv_cache_manager import KVCacheManager, KVWrite
from mooncake.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    start: int
    """Tokens already computed before this step."""
    num_tokens: int
    """Tokens computed in this step."""

    @property
    def samples(self) -> bool:
        """This step reaches the end of the known tokens, so a new token is sampled."""
        return self.start + self.num_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    decodes: list[ScheduledSeq] = field(default_factory=list)
    """Single-token steps (run as one batched attention)."""
    prefills: list[ScheduledSeq] = field(default_factory=list)
    """Multi-token chunks."""
    kv_writes: list[KVWrite] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.decodes) + sum(s.num_tokens for s in self.prefills)

    @property
    def is_empty(self) -> bool:
        return not self.decodes and not self.prefills


class Scheduler:
    """Args: config: engine config (budgets); kv: the KV cache manager."""

    def __init__(self, config: EngineConfig, kv: KVCacheManager) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_cached_tokens = 0
        """Prompt tokens served from the prefix cache or an import, over all admissions."""

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and free its blocks unless held."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if not seq.keep_kv:
            self.kv.free(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.num_computed_tokens = 0
        seq.kv_import = None  # its KV is recomputed from tokens now
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        chunk = self.config.long_prefill_chunk
        cap = self.config.max_prefill_tokens_per_step
        # Tokens of chunks (sequences with more than one token to compute) this step may
        # still take; decode tokens never count.
        chunk_left = cap if cap is not None else budget
        scheduled: list[ScheduledSeq] = []

        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            left = seq.num_tokens - seq.num_computed_tokens
            n = min(left, budget, chunk, chunk_left if left > 1 else 1)
            if n <= 0:
                i += 1
                continue
            while not self.kv.allocate(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                scheduled.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
                budget -= n
                if left > 1:
                    chunk_left -= n
                i += 1
                continue
            break  # seq itself was preempted: nothing else fits either

        while (
            self.waiting
            and budget > 0
            and len(self.running) < self.config.max_num_seqs
            and not out.preempted
        ):
            seq = self.waiting[0]
            if seq.kv_import is not None:
                imported = seq.kv_import.num_tokens
                cached = self.kv.find_cached(seq)[: imported // self.kv.block_size]
                whole = seq.num_tokens - imported
                fit = self._fit(whole, budget, chunk_left, cap)
                if fit is None:
                    break
                n = fit
                if not self.kv.can_admit(
                    seq, cached, imported - len(cached) * self.kv.block_size + n
                ):
                    break
                out.kv_writes.extend(self.kv.import_blocks(seq))
                self.kv.allocate(seq, n)
                seq.num_cached_tokens = imported
                self.num_cached_tokens += imported
            else:
                cached = self.kv.find_cached(seq)
                start = len(cached) * self.kv.block_size
                whole = seq.num_tokens - start
                fit = self._fit(whole, min(budget, chunk), chunk_left, cap)
                if fit is None:
                    break
                n = fit
                if not self.kv.can_admit(seq, cached, n):
                    break
                self.kv.admit(seq, cached, n)
                if seq.num_preemptions == 0:
                    seq.num_cached_tokens = start
                    self.num_cached_tokens += start
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, seq.num_computed_tokens, n))
            budget -= n
            if whole > 1:
                chunk_left -= n

        for s in scheduled:
            (out.decodes if s.num_tokens == 1 else out.prefills).append(s)
        return out

    @staticmethod
    def _fit(whole: int, limit: int, chunk_left: int, cap: int | None) -> int | None:
        """Tokens to admit a waiting sequence with (``whole`` left to compute, at most
        ``limit`` by the step budget and chunk size), or None: it waits for the next step.

        Without a chunk bound (``cap`` None): as many as the limit allows. With one, a
        sequence that fits what is left of the bound comes in whole; one that fits the
        bound but not what is left waits for the next step, so that it ends in one step
        rather than make this one longer with a part of it; one longer than the bound is
        cut into chunks anyway, so it starts in what is left."""
        n = min(whole, limit)
        if cap is None or whole <= 1 or n <= chunk_left:
            return n
        if whole > cap and chunk_left > 0:
            return min(n, chunk_left)
        return None

    def update(self, out: SchedulerOutput) -> None:
        """Mark this step's tokens computed and register newly full blocks."""
        for s in (*out.decodes, *out.prefills):
            s.seq.num_computed_tokens = s.start + s.num_tokens
            self.kv.commit(s.seq)
