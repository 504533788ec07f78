"""Simulated instances.

:class:`PrefillInstance` (Mooncake prefill node): a FIFO of whole-request prefills, one
at a time, with a DRAM block cache.

:class:`BatchInstance` runs a continuous batch the way the live engine's scheduler
does (``mooncake/engine/scheduler.py``, vLLM's policy). As a Mooncake decode node it
decodes sequences whose KV arrived from a prefill node; as a colocated (vLLM-like) node
it also prefills, chunked: every step spends a token budget on one decode token per
running sequence, the rest on prompt chunks (FCFS), so a long prompt stretches the step
every co-batched sequence waits on. Both wait in a FIFO for KV memory. KV is taken on
demand (prompt at admission, one token per sequence per step); when the next step
would not fit, the most recently admitted running sequence is preempted: its KV is
freed and it goes back to the head of the queue to be recomputed (prompt + tokens
generated so far, reusing the instance's prefix cache), after which it continues.
The what-if ``reserve_full_output`` reserves prompt + whole output at admission instead
and never preempts.

Decoding is event-driven, not per token: between two changes of the batch the step
time is constant, so the instance keeps a (fractional) step counter that advances at
1/step-time and only wakes when the next sequence is due to finish or KV would run
out. Each change opens a *segment* (start step, step time); a finished sequence's token
gaps are the segments it lived through, which is all TBT needs.
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
class Resume:
    """A preempted sequence on its way back: what it had before preemption."""

    prior_gaps: list[tuple[float, float]]
    """Token gaps it saw before preemption ((gap seconds, count) pairs)."""
    preempted_at: float
    tokens_left: int
    """Output tokens still to produce (the recompute's step produces the first)."""


@dataclass(slots=True)
class PrefillWork:
    """A sequence waiting for KV memory, or computing its KV (prompt chunks)."""

    rid: str
    record: RequestRecord
    keys: tuple[Hashable, ...]
    done: int = 0
    """Tokens whose KV exists (cached prefix + computed chunks)."""
    started_at: float | None = None
    compute_s: float = 0.0
    tokens: int = 0
    """Tokens whose KV must exist before decoding: the prompt, or prompt + generated
    tokens for a preempted sequence (0 = the prompt)."""
    imported: bool = False
    """The KV came from a prefill instance: nothing to compute, only memory to find."""
    resume: Resume | None = None
    """Set for a preempted sequence being recomputed."""
    reserved: int = 0
    """KV tokens held for it while computing."""
    queued_at: float | None = None
    """When imported KV reached the instance (a wait for memory is a token gap)."""

    def __post_init__(self) -> None:
        if self.tokens == 0:
            self.tokens = self.record.prompt_len

    @property
    def remaining(self) -> int:
        return self.tokens - self.done


@dataclass(slots=True)
class DecodingSeq:
    """A sequence in the running batch."""

    rid: str
    record: RequestRecord
    keys: tuple[Hashable, ...]
    join_step: float
    finish_step: float
    seg_idx: int
    kv0: int
    """KV tokens at join (prompt, or prompt + generated after a recompute)."""
    seq_no: int
    prior_gaps: list[tuple[float, float]] = field(default_factory=list)
    reserved: int = 0
    """KV reserved beyond what it holds (``reserve_full_output`` only)."""


@dataclass(slots=True)
class PrefillInstance:
    """Mooncake prefill node: a FIFO queue, and either one whole prefill at a time
    (``busy``) or, when the cost model gives a step budget
    (``HardwareSpec.prefill_step_tokens``), the live engine's batched steps: prompts
    being computed (``active``) take their next chunk first, then queued prompts are
    admitted while the step's token budget and ``prefill_max_seqs`` allow."""

    name: str
    cache: BlockCache
    queue: deque[PrefillWork] = field(default_factory=deque)
    busy: PrefillWork | None = None
    active: list[PrefillWork] = field(default_factory=list)
    """Batched steps: prompts admitted and being computed, in admission order."""
    plan: list[tuple[PrefillWork, int]] = field(default_factory=list)
    """Batched steps: the step in flight, (prompt, tokens it computes)."""
    kicked: bool = False
    """Batched steps: an idle engine's first step is due at this instant."""

    @property
    def stepping(self) -> bool:
        return bool(self.plan)

    def plan_step(
        self, budget: int, chunk: int, max_seqs: int, now: float
    ) -> tuple[list[PrefillWork], list[tuple[int, int]]]:
        """Plan one batched step as the live engine's scheduler does
        (``mooncake/engine/scheduler.py``): prompts in progress take ``min(remaining,
        budget left, chunk)`` tokens, then queued prompts are admitted while budget is
        left and fewer than ``max_seqs`` are active.

        Returns:
            (prompts admitted now, the step's chunks as ``(end, start)`` token indices).
        """
        admitted: list[PrefillWork] = []
        self.plan = []
        for work in self.active:
            if budget <= 0:
                break
            take = min(work.remaining, budget, chunk)
            if take > 0:
                self.plan.append((work, take))
                budget -= take
        while self.queue and budget > 0 and len(self.active) < max_seqs:
            work = self.queue.popleft()
            work.started_at = now
            self.active.append(work)
            admitted.append(work)
            take = min(work.remaining, budget, chunk)
            self.plan.append((work, take))
            budget -= take
        return admitted, [(w.done + take, w.done) for w, take in self.plan]

    def end_step(self) -> list[PrefillWork]:
        """Finish the step in flight; returns the prompts it completed (in order)."""
        completed = []
        for work, take in self.plan:
            work.done += take
            if work.remaining <= 0:
                completed.append(work)
        self.plan = []
        for work in completed:
            self.active.remove(work)
        return completed


class BatchInstance:
    """Continuous-batching instance (decode-only, or colocated with chunked prefill).

    Args:
        name: instance name.
        cost: ground-truth step times.
        kv_capacity: KV tokens the instance holds.
        chunk_tokens: token budget of a step that computes prompt chunks.
        cache: prefix cache (colocated only).
        block_size: tokens per cache block.
        reserve_full_output: what-if: reserve prompt + whole output at admission and
            never preempt (the live engine allocates on demand and preempts).
        max_batch: most sequences running or computing at once.
    """

    def __init__(
        self,
        name: str,
        cost: CostModel,
        kv_capacity: int,
        chunk_tokens: int = 512,
        cache: BlockCache | None = None,
        block_size: int = 512,
        reserve_full_output: bool = False,
        max_batch: int = 1024,
    ) -> None:
        self.block_size = block_size
        self.name = name
        self.cost = cost
        self.kv_capacity = kv_capacity
        self.chunk_tokens = chunk_tokens
        self.cache = cache
        self.reserve_full_output = reserve_full_output
        self.max_batch = max_batch
        self.step_gap_s = cost.hardware.token_overhead_s
        """The engine loop's time between two steps, which every running sequence waits
        once per token (``HardwareSpec.token_overhead_s``; 0 unless measured live)."""
        self.step = 0.0
        self.t_sync = 0.0
        self.tau = 0.0
        self.stepping = False
        self.version = 0
        self.running: dict[str, DecodingSeq] = {}
        self._finish_heap: list[tuple[float, int, str]] = []
        self._seq_no = 0
        self._sum_kv0 = 0
        self._sum_join = 0.0
        self._reserved_running = 0
        """``reserve_full_output``: prompt + output of every running sequence."""
        self._reserved_active = 0
        """KV held by sequences computing their prompt chunks."""
        self.preemptions = 0
        self.seg_start: list[float] = [0.0]
        self.seg_tau: list[float] = [0.0]
        self.queue: deque[PrefillWork] = deque()
        self.active: list[PrefillWork] = []
        self._plan: list[tuple[PrefillWork, int, float]] = []

    # -- KV accounting -----------------------------------------------------------
    def kv_tokens(self) -> int:
        """KV tokens the running batch holds now (what a step reads)."""
        return int(self._sum_kv0 + len(self.running) * self.step - self._sum_join + _EPS)

    def kv_used(self) -> int:
        """KV tokens taken: held (or reserved) by running sequences plus computing ones."""
        running = self._reserved_running if self.reserve_full_output else self.kv_tokens()
        return running + self._reserved_active

    def _need(self, work: PrefillWork) -> int:
        """KV a queued sequence takes at admission (plus room for the next step's tokens
        when taken on demand)."""
        if self.reserve_full_output:
            return work.tokens + work.record.output_len
        return work.tokens + len(self.running) + 1

    # -- batch bookkeeping -----------------------------------------------------
    def sync(self, now: float) -> None:
        """Advance the step counter to ``now`` (between steps of a decode-only batch)."""
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

    def _join(self, work: PrefillWork, now: float) -> None:
        """Add a sequence whose KV exists to the batch (call after :meth:`sync`)."""
        record = work.record
        if work.resume is None:
            steps, kv0 = record.output_len - 1, record.prompt_len
            waited = now - work.queued_at if work.queued_at is not None else 0.0
            prior = [(waited, 1.0)] if waited > _EPS else []
        else:
            # The recompute's step produced one token: the gap since preemption is one.
            steps, kv0 = work.resume.tokens_left - 1, work.tokens
            prior = [*work.resume.prior_gaps, (now - work.resume.preempted_at, 1.0)]
        self._seq_no += 1
        reserved = record.prompt_len + record.output_len - kv0 if self.reserve_full_output else 0
        seq = DecodingSeq(
            work.rid,
            record,
            work.keys,
            self.step,
            self.step + steps,
            len(self.seg_start) - 1,
            kv0,
            self._seq_no,
            prior,
            reserved,
        )
        self.running[work.rid] = seq
        heapq.heappush(self._finish_heap, (seq.finish_step, self._seq_no, work.rid))
        self._sum_kv0 += kv0
        self._sum_join += self.step
        if self.reserve_full_output:
            self._reserved_running += kv0 + reserved

    def _remove(self, seq: DecodingSeq) -> None:
        del self.running[seq.rid]
        self._sum_kv0 -= seq.kv0
        self._sum_join -= seq.join_step
        if self.reserve_full_output:
            self._reserved_running -= seq.kv0 + seq.reserved
        if not self.running:
            self._sum_join = 0.0  # drop float drift

    def _clean_heap(self) -> None:
        """Drop heap entries of preempted sequences (lazy deletion)."""
        heap = self._finish_heap
        while heap:
            _, no, rid = heap[0]
            seq = self.running.get(rid)
            if seq is not None and seq.seq_no == no:
                return
            heapq.heappop(heap)

    def pop_finished(self) -> list[DecodingSeq]:
        """Remove sequences whose last token is done; fills their ``tbt_s``."""
        out: list[DecodingSeq] = []
        self._clean_heap()
        while self._finish_heap and self._finish_heap[0][0] <= self.step + _EPS:
            _, _, rid = heapq.heappop(self._finish_heap)
            seq = self.running[rid]
            self._remove(seq)
            seq.record.tbt_s = slowest_gaps_mean(
                [*seq.prior_gaps, *self._gaps(seq, seq.finish_step)]
            )
            out.append(seq)
            self._clean_heap()
        return out

    def _gaps(self, seq: DecodingSeq, until: float) -> list[tuple[float, float]]:
        gaps: list[tuple[float, float]] = []
        starts, taus = self.seg_start, self.seg_tau
        last = len(starts) - 1
        for i in range(seq.seg_idx, last + 1):
            lo = max(starts[i], seq.join_step)
            hi = min(starts[i + 1] if i < last else until, until)
            if hi > lo:
                gaps.append((taus[i], hi - lo))
        return gaps

    # -- admission and preemption -------------------------------------------------
    def admit(self, now: float) -> tuple[list[PrefillWork], list[PrefillWork]]:
        """Take queued sequences in FIFO order while KV memory and the batch allow (call
        after :meth:`sync`, between steps). Imported KV joins the batch at once; the
        others start computing (their cached prefix from the local cache first).

        Returns:
            (sequences that started computing, imported sequences that joined).
        """
        started: list[PrefillWork] = []
        joined: list[PrefillWork] = []
        budget = max(0, self.chunk_tokens - len(self.running))
        while self.queue and len(self.running) + len(self.active) < self.max_batch:
            work = self.queue[0]
            need = self._need(work)
            if self.kv_used() + need > self.kv_capacity and (self.running or self.active):
                break  # FIFO: the head waits for memory; an empty instance takes anything
            self.queue.popleft()
            if work.imported:
                self._join(work, now)
                joined.append(work)
                continue
            cached = self.cache.match(work.keys) if self.cache is not None else 0
            work.done = max(0, min(cached * self.block_size, work.tokens - 1))
            if work.resume is None:
                work.record.cached_tokens = work.done
                work.started_at = now
            work.reserved = work.tokens + (
                work.record.output_len if self.reserve_full_output else 0
            )
            self._reserved_active += work.reserved
            self.active.append(work)
            started.append(work)
            if sum(w.remaining for w in self.active) >= budget:
                break
        return started, joined

    def make_room(self, now: float) -> list[DecodingSeq]:
        """Preempt the most recently admitted running sequences until the next step's
        tokens fit (on-demand KV only; never the last one, which could not fit anywhere).
        A preempted sequence goes back to the head of the queue to be recomputed."""
        out: list[DecodingSeq] = []
        if self.reserve_full_output:
            return out
        while len(self.running) > 1 and self.kv_used() + len(self.running) > self.kv_capacity:
            seq = self.running[next(reversed(self.running))]
            prior = [*seq.prior_gaps, *self._gaps(seq, self.step)]
            produced = max(0, round(self.step - seq.join_step))
            left = max(1, round(seq.finish_step - self.step))
            self._remove(seq)
            seq.record.preemptions += 1
            self.preemptions += 1
            work = PrefillWork(
                seq.rid,
                seq.record,
                seq.keys,
                tokens=seq.kv0 + produced,
                resume=Resume(prior, now, left),
            )
            self.queue.appendleft(work)
            out.append(seq)
        return out

    def retime(self) -> float | None:
        """Decode-only step: set the step time for the current batch and return the
        seconds until the next sequence finishes or KV runs out (``None`` when idle)."""
        self._clean_heap()
        if not self.running:
            self._segment(0.0)
            return None
        self._segment(
            self.cost.decode_step_time(len(self.running), self.kv_tokens()) + self.step_gap_s
        )
        steps = self._finish_heap[0][0] - self.step
        if not self.reserve_full_output and len(self.running) > 1:
            free = self.kv_capacity - self.kv_used()
            steps = min(steps, max(1.0, float(int(free / len(self.running) + _EPS))))
        return max(0.0, steps * self.tau)

    # -- chunked prefill ---------------------------------------------------------
    def plan_step(self, now: float) -> float:
        """Start one mixed step at ``now`` (after :meth:`admit`): one token per running
        sequence plus prompt chunks of the computing ones. Returns the step seconds."""
        budget = max(0, self.chunk_tokens - len(self.running))
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
        tau += self.step_gap_s
        self._segment(tau)
        self.stepping = True
        self.t_sync = now
        return tau

    def end_step(self, now: float) -> tuple[list[PrefillWork], list[DecodingSeq]]:
        """Finish the planned step. Sequences whose KV is complete join the batch.
        Returns (completed computations, finished sequences)."""
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
            self._reserved_active -= work.reserved
            self._join(work, now)
        return completed, finished


__all__ = ["BatchInstance", "DecodingSeq", "PrefillInstance", "PrefillWork", "Resume"]
