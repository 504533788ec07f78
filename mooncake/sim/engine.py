"""Discrete-event replay of a trace through a simulated cluster.

A heap of timed events drives the instances; every placement and admission decision
is made by a :class:`mooncake.conductor.Conductor`, the same object the live scheduler
plugin drives, and every state change is reported back to it through its ``on_*``
events (prefill start/finish, blocks stored/removed, decode join/leave).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from mooncake.conductor import Conductor, Placement, RequestInfo, prefix_tokens
from mooncake.sim.cache import BlockCache
from mooncake.sim.config import SimConfig
from mooncake.sim.instances import BatchInstance, DecodingSeq, PrefillInstance, PrefillWork
from mooncake.sim.metrics import RequestRecord, RunSummary, summarize
from mooncake.sim.trace import TraceRequest

_ARRIVE, _PREFILL_DONE, _DECODE_ARRIVE, _STEP, _WAKE, _ENQUEUE, _PREFILL_READY, _PREFILL_STEP = (
    range(8)
)


@dataclass
class SimResult:
    """Outcome of one run."""

    config: SimConfig
    records: list[RequestRecord]
    summary: RunSummary
    wall_s: float
    """Seconds the replay took."""


class Simulator:
    """One replay of ``requests`` on the cluster described by ``config``.

    Args:
        config: the cluster and its policy.
        requests: the trace (already rate-scaled), sorted by arrival.
        progress: show a progress bar.
    """

    def __init__(
        self, config: SimConfig, requests: Sequence[TraceRequest], progress: bool = False
    ) -> None:
        self.config = config
        self.requests = requests
        self.progress = progress
        cost = config.cost
        bs = config.conductor.block_size
        self.prefill: dict[str, PrefillInstance] = {}
        self.batch: dict[str, BatchInstance] = {}
        max_batch = config.conductor.max_decode_batch

        def batch(name: str, cache: BlockCache | None) -> BatchInstance:
            return BatchInstance(
                name,
                cost,
                config.kv_tokens,
                config.chunk_tokens,
                cache,
                bs,
                config.reserve_full_output,
                max_batch,
            )

        # Workers join the Conductor one by one, as they do in the live plugin.
        self.conductor = Conductor(config.conductor, [], {}, cost)
        if config.mode == "disaggregated":
            for i in range(config.prefill_instances):
                name = f"prefill-{i}"
                self.prefill[name] = PrefillInstance(
                    name, BlockCache(config.prefill_cache_blocks, config.eviction)
                )
                self.conductor.add_prefill_worker(name)
            for i in range(config.decode_instances):
                name = f"decode-{i}"
                self.batch[name] = batch(name, None)
                self.conductor.add_decode_worker(name, config.kv_tokens)
        else:
            cache_blocks = config.colocated_cache_blocks
            if cache_blocks is None:
                cache_blocks = config.kv_tokens // bs
            for i in range(config.num_instances):
                name = f"instance-{i}"
                self.batch[name] = batch(name, BlockCache(cache_blocks, config.eviction))
                self.conductor.add_prefill_worker(name)
                self.conductor.add_decode_worker(name, config.kv_tokens)
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._seq = 0
        self.records: list[RequestRecord] = []
        self.prefill_gpu_s = 0.0
        self._bar: tqdm | None = None

    # -- event queue -----------------------------------------------------------
    def _push(self, t: float, kind: int, a: Any, b: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def run(self) -> SimResult:
        """Replay the whole trace; returns records and the summary."""
        t0 = time.perf_counter()
        for req in self.requests:
            self._push(req.arrival_s, _ARRIVE, req)
        # The bar counts requests that are done (finished or rejected), not arrivals,
        # so it does not read 100% while the queues are still draining.
        self._bar = tqdm(
            total=len(self.requests), unit="req", disable=not self.progress, mininterval=0.5
        )
        handlers = (
            self._on_arrive,
            self._on_prefill_done,
            self._on_decode_arrive,
            self._on_step,
            self._on_wake,
            self._on_enqueue,
            self._on_prefill_ready,
            self._on_prefill_step,
        )
        heap = self._heap
        while heap:
            now, _, kind, a, b = heapq.heappop(heap)
            handlers[kind](now, a, b)
        self._bar.close()
        self._bar = None
        self.records.sort(key=lambda r: r.index)
        summary = summarize(self.records, self.prefill_gpu_s)
        return SimResult(self.config, self.records, summary, time.perf_counter() - t0)

    # -- arrivals --------------------------------------------------------------
    def _on_arrive(self, now: float, req: TraceRequest, _: Any) -> None:
        rid = str(req.index)
        cap = req.output_length if self.config.max_tokens is None else self.config.max_tokens
        record = RequestRecord(
            req.index, req.arrival_s, req.input_length, min(req.output_length, cap)
        )
        self.records.append(record)
        decision = self.conductor.place(RequestInfo(rid, req.input_length, req.hash_ids, cap), now)
        if not isinstance(decision, Placement):
            record.rejected, record.reason = True, decision.reason
            self._done()
            return
        record.prefill_instance, record.decode_instance = decision.prefill, decision.decode
        record.predicted_output_len = decision.expected_output_len
        work = PrefillWork(rid, record, req.hash_ids)
        overhead = self.config.cost.hardware.request_overhead_s
        if overhead > 0:
            # The serving path (graph submission, dispatch) delays the prefill's start,
            # not the placement: the Conductor decided at arrival.
            self._push(now + overhead, _ENQUEUE, work)
            return
        self._on_enqueue(now, work, None)

    def _on_enqueue(self, now: float, work: PrefillWork, _: Any) -> None:
        """A placed request reaches its prefill (or colocated) instance's queue."""
        record = work.record
        if self.config.mode == "colocated":
            inst = self.batch[record.prefill_instance]
            inst.queue.append(work)
            self._kick(inst, now)
            return
        p = self.prefill[record.prefill_instance]
        if self.config.cost.hardware.prefill_step_tokens > 0:
            # Batched steps: the lookup (and any fetch of a remote prefix) comes first,
            # then the prompt waits in the engine's queue (the live task order).
            cached, fetch_tokens, fetch_s = self._reuse(p, work)
            work.record.cached_tokens = cached
            work.done = min(cached, work.tokens - 1)  # the last token is always computed
            if fetch_tokens > 0:
                self.conductor.on_transfer(
                    fetch_tokens * self.config.cost.model.kv_bytes_per_token, fetch_s
                )
            self._push(now + fetch_s, _PREFILL_READY, p, work)
            return
        p.queue.append(work)
        if p.busy is None:
            self._start_prefill(p, now)

    # -- disaggregated prefill -------------------------------------------------
    def _reuse(self, p: PrefillInstance, work: PrefillWork) -> tuple[int, int, float]:
        """(prompt tokens reused, tokens fetched from another instance, fetch seconds)."""
        cost, bs = self.config.cost, self.config.conductor.block_size
        n = work.record.prompt_len
        local = p.cache.match(work.keys)
        reuse = local
        placement = self.conductor.placement_of(work.rid)
        src = placement.fetch_from if placement is not None else None
        if src is not None:
            remote_cache = self.prefill[src].cache
            remote = remote_cache.match(work.keys)
            if remote > local:
                remote_cache.touch(work.keys[:remote])
                reuse = remote
        cached = prefix_tokens(reuse, n, bs)
        fetch_tokens = cached - prefix_tokens(local, n, bs)
        return cached, fetch_tokens, cost.transfer_time(fetch_tokens)

    def _start_prefill(self, p: PrefillInstance, now: float) -> None:
        work = p.queue.popleft()
        p.busy = work
        cached, fetch_tokens, fetch_s = self._reuse(p, work)
        work.record.cached_tokens = cached
        work.compute_s = self.config.cost.prefill_time(work.record.prompt_len, cached)
        work.started_at = now
        self.conductor.on_prefill_start(work.rid, now)
        self._push(now + fetch_s + work.compute_s, _PREFILL_DONE, p, (work, fetch_tokens, fetch_s))

    def _on_prefill_ready(self, now: float, p: PrefillInstance, work: PrefillWork) -> None:
        """Batched steps: a prompt reaches the prefill engine's queue."""
        p.queue.append(work)
        if not p.stepping and not p.kicked:
            # An idle engine steps once this instant's arrivals are all in its queue (the
            # live loop takes every request that came in before it steps).
            p.kicked = True
            self._push(now, _PREFILL_STEP, p, None)

    def _prefill_step(self, p: PrefillInstance, now: float) -> None:
        """Batched steps: start the next step if anything waits or computes."""
        hw = self.config.cost.hardware
        budget = int(hw.prefill_step_tokens)
        chunk = int(hw.prefill_chunk_tokens) or budget
        max_seqs = int(hw.prefill_max_seqs) or len(p.queue) + len(p.active) + 1
        admitted, chunks = p.plan_step(budget, chunk, max_seqs, now)
        for work in admitted:
            self.conductor.on_prefill_start(work.rid, now)
        if not chunks:
            return
        tau = self.config.cost.prefill_step_time(chunks)
        self.prefill_gpu_s += tau
        self._push(now + tau, _PREFILL_STEP, p, None)

    def _on_prefill_step(self, now: float, p: PrefillInstance, _: Any) -> None:
        if p.kicked:  # an idle engine's first step, not the end of one
            p.kicked = False
            self._prefill_step(p, now)
            return
        for work in p.end_step():
            # What the live engine reports: first scheduled -> first token, which
            # includes the other prompts sharing its steps.
            work.compute_s = now - (work.started_at if work.started_at is not None else now)
            self._publish(p, work, now)
            self._hand_off(work, now)
        self._prefill_step(p, now)

    def _store_blocks(self, name: str, cache: BlockCache, work: PrefillWork) -> None:
        stored, evicted = cache.insert(work.keys)
        if stored:
            self.conductor.on_blocks_stored(name, stored)
        if evicted:
            self.conductor.on_blocks_removed(name, evicted)

    def _on_prefill_done(
        self, now: float, p: PrefillInstance, info: tuple[PrefillWork, int, float]
    ) -> None:
        work, fetch_tokens, fetch_s = info
        cost = self.config.cost
        self._publish(p, work, now)
        if fetch_tokens > 0:
            self.conductor.on_transfer(fetch_tokens * cost.model.kv_bytes_per_token, fetch_s)
        self.prefill_gpu_s += work.compute_s
        p.busy = None
        if p.queue:
            self._start_prefill(p, now)
        self._hand_off(work, now)

    def _publish(self, p: PrefillInstance, work: PrefillWork, now: float) -> None:
        """A prompt's first token exists: its blocks join the cache, the Conductor learns
        the prefill's time."""
        self._store_blocks(p.name, p.cache, work)
        self.conductor.on_prefill_finish(
            work.rid, now, work.record.prompt_len, work.record.cached_tokens, work.compute_s
        )

    def _hand_off(self, work: PrefillWork, now: float) -> None:
        """Send a prefilled request to its decode instance."""
        cost = self.config.cost
        # KV streams to decode layer by layer while prefill runs; only the tail shows.
        exposed = cost.transfer_time(work.record.prompt_len)
        if self.config.layerwise_transfer:
            exposed /= cost.model.num_layers
        record = work.record
        record.ttft_s = now + exposed - record.arrival_s
        # The hand-over's fixed cost (0 unless measured live) is a token gap: the decode
        # instance takes the request that much after its KV is there.
        # A request whose only token came from prefill finishes there (no hand-over).
        handoff = cost.hardware.handoff_s if record.output_len > 1 else 0.0
        work.queued_at = now + exposed
        self._push(
            now + exposed + handoff, _DECODE_ARRIVE, self.batch[record.decode_instance], work
        )

    def _on_decode_arrive(self, now: float, inst: BatchInstance, work: PrefillWork) -> None:
        record = work.record
        if self.config.decode_refusal:  # what-if: refuse instead of waiting for memory
            rej = self.conductor.admit_to_decode(work.rid, now)
            if rej is not None:
                record.rejected, record.reason = True, rej.reason
                self.conductor.on_decode_leave(work.rid, now)
                self._done()
                return
        work.imported = True
        work.done = work.tokens
        inst.queue.append(work)
        self._kick(inst, now)

    # -- batches ---------------------------------------------------------------
    def _kick(self, inst: BatchInstance, now: float) -> None:
        """Re-plan an instance after a change: admit queued sequences, preempt if the
        next step's KV does not fit, then start a mixed step if anything computes, else
        sleep until the next sequence finishes or KV runs out."""
        if inst.stepping:
            return  # the step in flight re-plans when it ends
        inst.sync(now)
        inst.version += 1
        started, joined = inst.admit(now)
        for work in started:
            if work.resume is None:
                self.conductor.on_prefill_start(work.rid, now)
        for work in joined:
            self.conductor.on_decode_join(work.rid, now)
        inst.make_room(now)
        if inst.active:
            tau = inst.plan_step(now)
            self._push(now + tau, _STEP, inst, inst.version)
            return
        dt = inst.retime()
        if dt is not None:
            self._push(now + dt, _WAKE, inst, inst.version)

    def _on_step(self, now: float, inst: BatchInstance, version: int) -> None:
        completed, finished = inst.end_step(now)
        for work in completed:
            if work.resume is not None:
                continue  # a preempted sequence recomputed: it simply continues
            record = work.record
            record.ttft_s = now - record.arrival_s
            if inst.cache is not None:
                self._store_blocks(inst.name, inst.cache, work)
            # The Conductor learns from what it can observe: the wall time from the first
            # chunk to the last, which includes the decode steps interleaved with it.
            started = work.started_at if work.started_at is not None else now
            self.conductor.on_prefill_finish(
                work.rid, now, record.prompt_len, record.cached_tokens, now - started
            )
            self.conductor.on_decode_join(work.rid, now)
            self.prefill_gpu_s += work.compute_s
        self._finish(finished, now)
        self._kick(inst, now)

    def _on_wake(self, now: float, inst: BatchInstance, version: int) -> None:
        if version != inst.version:
            return  # superseded by a later re-plan
        inst.sync(now)
        self._finish(inst.pop_finished(), now)
        self._kick(inst, now)

    def _finish(self, seqs: list[DecodingSeq], now: float) -> None:
        for seq in seqs:
            seq.record.finish_s = now
            self.conductor.on_request_finished(seq.rid, seq.record.output_len)
            self.conductor.on_decode_leave(seq.rid, now)
            self._done()

    def _done(self) -> None:
        if self._bar is not None:
            self._bar.update(1)


def simulate(
    config: SimConfig, requests: Sequence[TraceRequest], progress: bool = False
) -> SimResult:
    """Run one replay (convenience wrapper around :class:`Simulator`)."""
    return Simulator(config, requests, progress).run()


__all__ = ["SimResult", "Simulator", "simulate"]
