"""Simulated instances.

:class:`PrefillInstance` (Mooncake prefill node): a FIFO of whole-request prefills, one
at a time, with a DRAM block cache.

:class:`BatchInstance` runs a continuous batch. As a Mooncake decode node it only
decodes; as a colocated (vLLM-like) node it also prefills, chunked: every step spends a
token budget on one decode token per running sequence, the rest on prompt chunks
(FCFS), so a long prompt stretches the step every co-batched sequence waits on.

Decoding is event-driven, not per token: between two changes of the batch the step
time is constant, so the instance keeps a (fractional) step counter that advances at
1/step-time and only wakes when the next sequence is due to finish. Each change opens
a *segment* (start step, step time); a finished sequence's token gaps are the
segments it lived through, which is all TBT needs.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from mooncake.conductor import CostModel
from mooncake.sim.cache import BlockCache
from mooncake.sim.metrics import RequestRecord, slowest_gaps_mean

_EPS = 1e-9


@dataclass(slots=True)
class PrefillWork:
    """A prompt waiting for or in prefill."""

    rid: str
    record: RequestRecord
    keys: tuple[Hashable, ...]
    done: int = 0
    """Prompt tokens whose KV exists (cached prefix + computed chunks)."""
    started_at: float | None = None
    compute_s: float = 0.0

    @property
    def remaining(self) -> int:
        return self.record.prompt_len - self.done

    @property
    def kv_need(self) -> int:
        return self.record.prompt_len + self.record.output_len


@dataclass(slots=True)
class DecodingSeq:
    """A sequence in the running batch."""

    rid: str
    record: RequestRecord
    join_step: float
    finish_step: float
    seg_idx: int


@dataclass(slots=True)
class PrefillInstance:
    """Mooncake prefill node: FIFO queue, one prefill at a time."""

    name: str
    cache: BlockCache
    queue: deque[PrefillWork] = field(default_factory=deque)
    busy: PrefillWork | None = None


class BatchInstance:
    """Continuous-batching instance (decode-only, or colocated with chunked prefill).

    Args:
        name: instance name.
        cost: ground-truth step times.
        kv_capacity: KV tokens the batch may reserve (prompt + output per sequence).
        chunk_tokens: token budget of a step when prefilling (colocated only).
        cache: prefix cache (colocated only).
        block_size: tokens per cache block.
    """

    def __init__(self, name: str, cost: CostModel, kv_capacity: int, chunk_tokens: int = 512, cache: BlockCache | None = None, block_size: int = 512) -> None:
        self.block_size = block_size
        self.name = name
        self.cost = cost
        self.kv_capacity = kv_capacity
        self.chunk_tokens = chunk_tokens
        self.cache = cache
        self.step = 0.0
        self.t_sync = 0.0
        self.tau = 0.0
        self.stepping = False
        self.version = 0
        self.running: dict[str, DecodingSeq] = {}
        self._finish_heap: list[tuple[float, int, str]] = []
        self._seq_no = 0
        self._sum_prompt = 0
        self._sum_join = 0.0
        self.kv_reserved = 0
        self.seg_start: list[float] = [0.0]
        self.seg_tau: list[float] = [0.0]
        self.queue: deque[PrefillWork] = deque()
        self.active: list[PrefillWork] = []
        self._plan: list[tuple[PrefillWork, int, float]] = []

    # -- batch bookkeeping -----------------------------------------------------
    def kv_tokens(self) -> int:
        """KV tokens held now: prompts plus tokens generated so far."""
        return int(self._sum_prompt + len(self.running) * self.step - self._sum_join)

    def sync(self, now: float) -> None:
        """Advance the step counter to ``now`` (decode-only mode)."""
        if not self.stepping and self.tau > 0:
            self.step += (now - self.t_sync) / self.tau
        self.t_sync = now

    def _segment(self, tau: float) -> None:
        self.tau = tau
        if self.seg_start[-1] >= self.step - _EPS:
            self.seg_tau[-1] = tau
        else:
            self.seg_start.append(self.step)
            self.seg_tau.append(tau)

    def join(self, rid: str, record: RequestRecord, reserved: bool = False) -> None:
        """Add a prefilled sequence to the batch (call after :meth:`sync`)."""
        seq = DecodingSeq(rid, record, self.step, self.step + record.output_len - 1, len(self.seg_start) - 1)
        self.running[rid] = seq
        self._seq_no += 1
        heapq.heappush(self._finish_heap, (seq.finish_step, self._seq_no, rid))
        self._sum_prompt += record.prompt_len
        self._sum_join += self.step
        if not reserved:
            self.kv_reserved += record.prompt_len + record.output_len

    def pop_finished(self) -> list[DecodingSeq]:
        """Remove sequences whose last token is done; fills their ``tbt_s``."""
        out: list[DecodingSeq] = []
        while self._finish_heap and self._finish_heap[0][0] <= self.step + _EPS:
            _, _, rid = heapq.heappop(self._finish_heap)
            seq = self.running.pop(rid)
            self._sum_prompt -= seq.record.prompt_len
            self._sum_join -= seq.join_step
            self.kv_reserved -= seq.record.prompt_len + seq.record.output_len
            seq.record.tbt_s = slowest_gaps_mean(self._gaps(seq))
            out.append(seq)
        if not self.running:
            self._sum_join = 0.0  # drop float drift
        return out

    def _gaps(self, seq: DecodingSeq) -> list[tuple[float, float]]:
        gaps: list[tuple[float, float]] = []
        starts, taus = self.seg_start, self.seg_tau
        last = len(starts) - 1
        for i in range(seq.seg_idx, last + 1):
            lo = max(starts[i], seq.join_step)
            hi = min(starts[i + 1] if i < last else seq.finish_step, seq.finish_step)
            if hi > lo:
                gaps.append((taus[i], hi - lo))
        return gaps

    def retime(self) -> float | None:
        """Decode-only mode: set the step time for the current batch and return the
        seconds until the next sequence finishes (``None`` when idle)."""
        if not self.running:
            self._segment(0.0)
            return None
        self._segment(self.cost.decode_step_time(len(self.running), self.kv_tokens()))
        return max(0.0, (self._finish_heap[0][0] - self.step) * self.tau)

    # -- chunked prefill (colocated) -------------------------------------------
    def has_prefill_work(self) -> bool:
        if self.active:
            return True
        return bool(self.queue) and self.kv_reserved + self.queue[0].kv_need <= self.kv_capacity

    def plan_step(self, now: float) -> tuple[float, list[PrefillWork]]:
        """Start one mixed step at ``now``. Returns (step seconds, prefills started).

        Started prefills take their cached prefix from the local cache first."""
        started: list[PrefillWork] = []
        budget = max(0, self.chunk_tokens - len(self.running))
        while self.queue and self.kv_reserved + self.queue[0].kv_need <= self.kv_capacity:
            work = self.queue.popleft()
            cached = self.cache.match(work.keys) if self.cache is not None else 0
            work.done = max(0, min(cached * self.block_size, work.record.prompt_len - 1))
            work.record.cached_tokens = work.done
            work.started_at = now
            self.kv_reserved += work.kv_need
            self.active.append(work)
            started.append(work)
            if sum(w.remaining for w in self.active) >= budget:
                break
        self._plan = []
        flops = 0.0
        for work in self.active:
            if budget <= 0:
                break
            take = min(budget, work.remaining)
            f = self.cost.prefill_flops(work.done + take, work.done)
            self._plan.append((work, take, f))
            flops += f
            budget -= take
        tau = self.cost.decode_step_time(len(self.running), self.kv_tokens(), flops)
        self._segment(tau)
        self.stepping = True
        self.t_sync = now
        return tau, started

    def end_step(self, now: float) -> tuple[list[PrefillWork], list[DecodingSeq]]:
        """Finish the planned step. Completed prefills join the batch. Returns
        (completed prefills, finished sequences)."""
        self.step += 1.0
        self.t_sync = now
        self.stepping = False
        finished = self.pop_finished()
        flops_total = sum(f for _, _, f in self._plan)
        completed: list[PrefillWork] = []
        for work, take, f in self._plan:
            work.done += take
            if flops_total > 0:
                work.compute_s += self.tau * f / flops_total
            if work.remaining <= 0:
                completed.append(work)
        self._plan = []
        for work in completed:
            self.active.remove(work)
            self.join(work.rid, work.record, reserved=True)
        return completed, finished


__all__ = ["BatchInstance", "DecodingSeq", "PrefillInstance", "PrefillWork"]
