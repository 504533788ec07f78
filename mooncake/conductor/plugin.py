"""``ConductorPlugin``: the Dask ``SchedulerPlugin`` that applies the pure Conductor.

- Workers report (a ``mooncake-report`` message on their stream to the scheduler, when
  something changed: at most ~50 ms after a change placement depends on, ~0.5 s after
  any other, every 2 s when idle; ``mooncake.worker.report_pacer``): stored/removed block keys,
  finished prefills and decode-only engine steps (observed seconds refine the cost
  model), decode joins, transfer timings, load. The first report carries the model's
  shape, from which the cost model is built.
- The client asks ``mooncake_place`` (or ``mooncake_place_many`` for several at once)
  before submitting a request's graph; the answer
  names the prefill and decode workers (the graph's tasks are restricted to them), or
  rejects with a reason and a retry-after hint. An admitted request's lookup starts on
  its prefill worker at once (``mooncake-start``), ahead of its graph; a request moved
  off a lost worker starts its transfer and decode on its new decode worker at once
  (``mooncake-resume``).
- Task transitions give the prefill start and the end of a request (its last task done,
  failed or released -- a cancelled request frees its load here).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import asdict
from typing import Any

from distributed import Scheduler, SchedulerPlugin

from mooncake.conductor.admission import Rejection
from mooncake.conductor.config import ConductorConfig
from mooncake.conductor.cost_export import export_cost_model, handoff_seconds
from mooncake.conductor.cost_model import (
    CostModel,
    HardwareSpec,
    ModelSpec,
    OverheadEstimator,
    PrefillTimeEstimator,
)
from mooncake.conductor.membership import TOPIC as MEMBERSHIP_TOPIC
from mooncake.conductor.membership import WorkerJoined, WorkerLeft
from mooncake.conductor.messages import (
    PlacementInfo,
    PlaceRefused,
    PlaceRequest,
    start_lookup_msg,
    start_resume_msg,
    start_stream_msg,
)
from mooncake.conductor.policy import NO_WORKER, Conductor, Placement
from mooncake.conductor.reports import REPORT_OP, WorkerReport
from mooncake.metrics import (
    MONITOR_PLUGIN_NAME,
    MetricsState,
    WorkerLoad,
)
from mooncake.request_ids import FINAL_STEPS, PREFILL_STEPS, parse_task_key

logger = logging.getLogger(__name__)

PLUGIN_NAME = "mooncake-conductor"
STREAM_INTERVAL_S = 0.001
"""Batching interval of the scheduler's message stream to each mooncake worker."""

#: A 2-core CPU host: the cost model's prior until observed timings take over.
CPU_HARDWARE = HardwareSpec(
    peak_flops=1.0e11,
    mfu=0.5,
    hbm_bandwidth=2.0e10,
    mbu=0.5,
    hbm_bytes=4.0e9,
    kv_memory_fraction=0.5,
    rdma_bandwidth=1.0e9,
)


class ConductorPlugin(SchedulerPlugin):
    """Args: config: policies and SLOs (``block_size`` must equal the engines');
    hardware: cost-model prior (default: a CPU host)."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, config: ConductorConfig, hardware: HardwareSpec | None = None) -> None:
        self.config = config
        self.hardware = hardware or CPU_HARDWARE
        self.conductor: Conductor | None = None
        self.worker_info: dict[str, dict[str, Any]] = {}
        self.loads: dict[str, dict[str, Any]] = {}
        self.rejections: Counter[str] = Counter()
        self.placements = 0
        self.history: deque[dict[str, Any]] = deque(maxlen=10_000)
        """Finished requests: placement, TTFT estimate, timings (for the dashboard)."""
        self._timings: dict[str, dict[str, Any]] = {}
        self.request_overhead = OverheadEstimator()
        """Serving-path seconds per request outside the engines (exported with the cost
        model as ``hardware.request_overhead_s``)."""
        self.handoff = OverheadEstimator()
        """Prefill → decode hand-over seconds beyond the KV transfer (exported as
        ``hardware.handoff_s``)."""
        self.step_gap = OverheadEstimator()
        """Engine loop seconds between two decode-only steps (exported as
        ``hardware.token_overhead_s``)."""
        self.prefill_steps: PrefillTimeEstimator | None = None
        """Time of one batched prompt-only engine step (exported as
        ``prefill_step_fit``); made with the Conductor (it needs the model's shape)."""
        self.metrics = MetricsState()
        """Counters and histograms behind ``/metrics`` and the Mooncake dashboard page: the
        monitor plugin's state once it is found at ``start`` (the monitor owns what it
        draws; the Conductor feeds it), its own without a monitor."""

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        monitor_state = getattr(scheduler.plugins.get(MONITOR_PLUGIN_NAME), "metrics", None)
        if isinstance(monitor_state, MetricsState):
            self.metrics = monitor_state
        self.metrics.ttft_slo_s, self.metrics.tbt_slo_s = (
            self.config.ttft_slo_s,
            self.config.tbt_slo_s,
        )
        scheduler.handlers["mooncake_place"] = self.handle_place
        scheduler.handlers["mooncake_place_many"] = self.handle_place_many
        scheduler.stream_handlers[REPORT_OP] = self.handle_report
        scheduler.handlers["mooncake_stats"] = self.handle_stats
        scheduler.handlers["mooncake_history"] = self.handle_history
        scheduler.handlers["mooncake_workers"] = self.handle_workers
        scheduler.handlers["mooncake_cost_model"] = self.handle_cost_model

    # -- workers --------------------------------------------------------------------
    def _ensure_conductor(self, info: dict[str, Any]) -> Conductor:
        if self.conductor is None:
            model = ModelSpec(
                num_layers=int(info["num_layers"]),
                d_model=int(info["hidden_size"]),
                num_params=float(info["num_params"]),
                bytes_per_param=float(info["bytes_per_param"]),
                kv_bytes_per_token=int(info["kv_bytes_per_token"]),
            )
            self.conductor = Conductor(
                self.config, [], {}, CostModel(model=model, hardware=self.hardware)
            )
        return self.conductor

    def _add(self, worker: str, info: dict[str, Any]) -> None:
        c = self._ensure_conductor(info)
        self.worker_info[worker] = info
        # The scheduler holds messages to a worker until 5 ms after the previous one;
        # a request's first task should not wait behind the last request's bookkeeping.
        stream = self.scheduler.stream_comms.get(worker)
        if stream is not None:
            stream.interval = STREAM_INTERVAL_S
        self.metrics.model_name = str(info.get("model_name", ""))
        roles = info["roles"]
        if "prefill" in roles or self.config.colocated:
            c.add_prefill_worker(worker)
        if "decode" in roles or self.config.colocated:
            c.add_decode_worker(worker, int(info["kv_capacity_tokens"]))
        try:
            self.scheduler.log_event(MEMBERSHIP_TOPIC, WorkerJoined(worker, info).to_msg())
        except Exception as e:
            logger.debug("worker-joined event not published: %s", e)

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        """A worker left: its blocks leave the index and its load goes; clients learn
        which of their requests it held (they move or fail them, see ``mooncake.client``)."""
        info = self.worker_info.pop(worker, None)
        self.loads.pop(worker, None)
        self.metrics.remove_worker(worker)
        affected = self.conductor.remove_worker(worker) if self.conductor is not None else []
        if info is None:
            return
        for other in self.worker_info:  # they drop KV they were keeping for it
            stream = scheduler.stream_comms.get(other)
            if stream is not None:
                try:
                    stream.send({"op": "mooncake-peer-lost", "worker": worker})
                except Exception as e:
                    logger.debug("peer-lost to %s failed: %s", other, e)
        left = WorkerLeft(worker, tuple(info.get("roles", ())), tuple(affected))
        logger.warning(
            "mooncake worker %s (%s) left with %d requests placed on it",
            worker,
            "+".join(left.roles),
            len(affected),
        )
        try:
            scheduler.log_event(MEMBERSHIP_TOPIC, left.to_msg())
        except Exception as e:  # the scheduler is closing
            logger.debug("worker-left event not published: %s", e)

    # -- handlers -------------------------------------------------------------------
    def handle_report(self, worker: str, report: dict[str, Any]) -> None:
        rep = WorkerReport.from_msg(report)
        if rep.info is not None and worker not in self.worker_info:
            self._add(worker, rep.info)
        c = self.conductor
        if c is None or worker not in self.worker_info:
            return
        now = time.time()
        if rep.stored:
            c.on_blocks_stored(worker, rep.stored)
        if rep.removed:
            c.on_blocks_removed(worker, rep.removed)
        for p in rep.prefills:
            c.on_prefill_finish(p.request_id, now, p.prompt_tokens, p.cached_tokens, p.seconds)
            self._timings.setdefault(p.request_id, {})["prefill_s"] = p.seconds
        for rid in rep.decode_joined:
            c.on_decode_join(rid, now)
        for r in rep.requests:  # finished: real output lengths
            c.on_request_finished(r.request_id, r.generation_tokens)
            if r.ttft_s is not None and r.queue_s is not None and r.prefill_s is not None:
                self.request_overhead.observe(r.ttft_s - r.queue_s - r.prefill_s)
            if not self.config.colocated and len(r.itl_s) >= 2:
                self.handoff.observe(handoff_seconds(c, r.prompt_tokens, r.itl_s))
        for d in rep.decode_steps:
            if d.prefill_chunks:
                if self.prefill_steps is None:
                    self.prefill_steps = PrefillTimeEstimator(c.cost)
                self.prefill_steps.observe_step(d.prefill_chunks, d.seconds)
                continue
            c.on_decode_step(d.sequences, d.context_tokens, d.seconds)
            if d.gap_s is not None:
                self.step_gap.observe(d.gap_s)
        for t in rep.transfers:
            if t.nbytes > 0 and t.seconds > 0:
                c.on_transfer(t.nbytes, t.seconds)
        self.loads[worker] = rep.load.to_msg()
        self._update_metrics(worker, rep, now)

    def _update_metrics(self, worker: str, rep: WorkerReport, now: float) -> None:
        m, c = self.metrics, self.conductor
        for lk in rep.lookups:
            m.observe_lookup(lk)
        for r in rep.requests:
            m.observe_request(r, now)
        for t in rep.transfer_log:
            m.observe_transfer(t.nbytes, t.seconds, t.path)
        m.leases_expired += rep.leases_expired
        load = rep.load
        used = load.num_blocks - load.free_blocks
        pq = c.prefill_loads.get(worker) if c is not None else None
        m.set_worker(
            worker,
            WorkerLoad(
                role="+".join(self.worker_info[worker]["roles"]),
                running=load.running,
                waiting=load.waiting,
                kv_blocks={"device": (used, load.num_blocks), **load.tiers},
                cached_blocks=load.cached_blocks,
                prefill_queue_s=pq.queue_time(now) if pq is not None else 0.0,
                batch_size=load.running,
            ),
        )
        if c is not None and c.bandwidth is not None and m.transfers:
            m.bandwidth_estimate = float(c.bandwidth.bandwidth)
        m.tick(now)

    def handle_place(self, request: dict[str, Any]) -> dict[str, Any]:
        """Place one request (a ``PlaceRequest``); answers a ``PlacementInfo`` or a
        ``PlaceRefused``, as a message."""
        c = self.conductor
        if c is None:
            self.metrics.observe_admission(False, "no mooncake workers are ready")
            return PlaceRefused("no mooncake workers are ready", 1.0, unavailable=True).to_msg()
        req = PlaceRequest.from_msg(request)
        now = time.time()
        decision = c.place(req.info(), now, req.exclude)
        if isinstance(decision, Rejection):
            self.rejections[decision.reason.split(":")[0]] += 1
            self.metrics.observe_admission(False, decision.reason)
            # No worker of a role: an outage until one joins, not an overload.
            unavailable = decision.reason.startswith(NO_WORKER)
            return PlaceRefused(decision.reason, decision.retry_after, unavailable).to_msg()
        if req.resume:
            # A request moved off a lost worker: it goes straight to decode (which
            # recomputes or fetches its KV), nothing is queued at prefill.
            c.on_prefill_finish(req.request_id, now, req.prompt_len, 0, 0.0)
        self.placements += 1
        self.metrics.observe_admission(True)
        # Token deltas reach the client on the scheduler's stream to it, which holds a
        # message until 2 ms after the previous one (e.g. the last task's result).
        client = self.scheduler.client_comms.get(req.client)
        if client is not None:
            client.interval = STREAM_INTERVAL_S
        placement = self._placement(decision)
        if req.spec is not None and req.resume:
            self._start_resume(req, placement)
        elif req.spec is not None:
            if decision.fetch_from is None:
                self._start_early(req, placement)
            self._start_stream(req, placement)
        return placement.to_msg()

    def handle_place_many(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Place several requests (a client's placements that waited for a call, e.g.
        every request of a lost worker), in order; one answer each, as ``handle_place``."""
        return [self.handle_place(r) for r in requests]

    def _start_resume(self, req: PlaceRequest, placement: PlacementInfo) -> None:
        """Tell the decode worker a moved request was placed on it, on the same stream
        that will carry its resume graph's tasks (so the start arrives first): it fetches
        the prompt's blocks from the prefill worker's store and resumes decoding now,
        without waiting for the client to submit the graph and for its dispatch (the
        early resume); the graph still owns the request."""
        stream = self.scheduler.stream_comms.get(placement.decode)
        if stream is None:
            return
        peer = self.worker_info.get(placement.prefill, {}).get("peer")
        try:
            stream.send(start_resume_msg(req.spec, placement, peer))
        except Exception as e:  # a closing worker: the transfer task does it all
            logger.debug("early resume on %s failed: %s", placement.decode, e)

    def _start_stream(self, req: PlaceRequest, placement: PlacementInfo) -> None:
        """Tell a streaming decode worker (``WorkerConfig.stream_kv``) of the request now,
        so it imports the KV while the prefill worker publishes it chunk by chunk."""
        if placement.decode == placement.prefill or not self.worker_info.get(
            placement.decode, {}
        ).get("stream_kv"):
            return
        stream = self.scheduler.stream_comms.get(placement.decode)
        if stream is None:
            return
        try:
            stream.send(start_stream_msg(req.spec, placement))
        except Exception as e:  # a closing worker: the transfer task fetches it all
            logger.debug("stream start on %s failed: %s", placement.decode, e)

    def _start_early(self, req: PlaceRequest, placement: PlacementInfo) -> None:
        """Tell the prefill worker to start the request's lookup now, on the same stream
        that will carry its lookup task (so the start arrives first). The prefill then
        does not wait for the client to submit the graph and for its dispatch; the graph
        still owns the request. A lookup that must fetch a peer's prefix is left to the task."""
        stream = self.scheduler.stream_comms.get(placement.prefill)
        if stream is None:
            return
        try:
            stream.send(start_lookup_msg(req.spec, placement, req.start))
        except Exception as e:  # a closing worker: the lookup task does the lookup
            logger.debug("early start on %s failed: %s", placement.prefill, e)

    def _placement(self, p: Placement) -> PlacementInfo:
        fetch_blocks = (
            p.prefill_choice.cached_tokens // self.config.block_size
            if p.fetch_from is not None
            else 0
        )
        self._timings[p.request_id] = {
            "placed_at": time.time(),
            "prefill": p.prefill,
            "decode": p.decode,
            "est_ttft_s": p.est_ttft_s,
        }
        return PlacementInfo(p.prefill, p.decode, p.fetch_from, fetch_blocks, p.est_ttft_s)

    def handle_workers(self) -> list[str]:
        """Addresses of the mooncake workers in the cluster now (a client's liveness check)."""
        return list(self.worker_info)

    def handle_history(self, request_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Finished requests: where each step ran, estimates, timings."""
        wanted = set(request_ids) if request_ids is not None else None
        return [h for h in self.history if wanted is None or h["request_id"] in wanted]

    def handle_stats(self) -> dict[str, Any]:
        c = self.conductor
        return {
            "placements": self.placements,
            "rejections": dict(self.rejections),
            "workers": {
                w: {"roles": i["roles"], "load": self.loads.get(w, {})}
                for w, i in self.worker_info.items()
            },
            "prefill_queue_s": {w: load.queued_s for w, load in c.prefill_loads.items()}
            if c
            else {},
            "decode_running": {w: len(load.running) for w, load in c.decode_loads.items()}
            if c
            else {},
            "indexed_blocks": len(c.index) if c is not None else 0,
            "blocks_on": {w: c.index.blocks_on(w) for w in self.worker_info}
            if c is not None
            else {},
            "config": asdict(self.config),
            "output_prediction": asdict(c.outputs.error()) if c is not None else {},
        }

    def handle_cost_model(self) -> dict[str, Any]:
        """The cost model fitted online (``mooncake cost-model``; docs/simulator.md)."""
        if self.conductor is None:
            return {"error": "no mooncake worker has reported yet"}
        measured: dict[str, float] = {}
        if (s := self.handoff.seconds) is not None:
            measured["handoff_s"] = max(0.0, s)
        if (s := self.step_gap.seconds) is not None:
            measured["token_overhead_s"] = max(0.0, s)
        engine = next(
            (i for i in self.worker_info.values() if "prefill" in i["roles"]),
            next(iter(self.worker_info.values()), {}),
        )
        for ours, theirs in (
            ("prefill_step_tokens", "max_num_batched_tokens"),
            ("prefill_chunk_tokens", "long_prefill_chunk"),
            ("prefill_max_seqs", "max_num_seqs"),
        ):
            if theirs in engine:
                measured[ours] = int(engine[theirs])
        return export_cost_model(
            self.conductor, self.request_overhead.seconds, measured, self.prefill_steps
        )

    # -- task transitions -------------------------------------------------------------
    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        c = self.conductor
        if c is None:
            return
        parsed = parse_task_key(key)
        if parsed is None:
            return
        step, rid = parsed
        if finish == "processing":
            ts = self.scheduler.tasks.get(key)
            if ts is not None and ts.processing_on is not None and rid in self._timings:
                self._timings[rid].setdefault("ran_on", {})[step] = ts.processing_on.address
            if step in PREFILL_STEPS:
                c.on_prefill_start(rid, time.time())
            return
        if finish in ("memory", "erred", "forgotten", "released"):
            if step in FINAL_STEPS and c.placement_of(rid) is not None:
                c.on_decode_leave(rid, time.time())
                t = self._timings.pop(rid, {})
                t.update(request_id=rid, finished_at=time.time(), state=finish)
                self.history.append(t)
