"""The Conductor: events in, decisions out.

One object owns the global block index, the instances' load, the online cost model
and the placement/admission policies. The simulator and the live scheduler plugin
drive it the same way:

- ``place(request, now)`` -> :class:`Placement` or :class:`~mooncake.conductor.admission.Rejection`;
- ``on_prefill_start/finish``, ``on_decode_join/leave``, ``on_blocks_stored/removed``,
  ``on_transfer``, ``on_decode_step`` report what actually happened;
- ``admit_to_decode`` is the decode instance's own last-moment check.

No Dask, no torch, no clock: every call carries its time.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from mooncake.conductor.admission import (
    LoadView,
    OutputEstimate,
    Rejection,
    check_slos,
    decode_view,
    projected_peak,
)
from mooncake.conductor.config import ConductorConfig
from mooncake.conductor.cost_model import (
    BandwidthEstimator,
    CostModel,
    DecodeStepEstimator,
    PrefillTimeEstimator,
)
from mooncake.conductor.index import GlobalBlockIndex
from mooncake.conductor.load_table import DecodeTable, PrefillTable
from mooncake.conductor.output_length import OutputLengthPredictor
from mooncake.conductor.placement import (
    DecodeChoice,
    DecodeScheduler,
    PrefillChoice,
    PrefillScheduler,
)
from mooncake.conductor.state import DecodeLoad, DecodeSeq, PrefillLoad, RequestInfo


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a request runs, and the estimates behind the choice."""

    request_id: str
    prefill: str
    decode: str
    prefill_choice: PrefillChoice
    decode_choice: DecodeChoice
    expected_output_len: int = 0
    """Output tokens the decode-load prediction assumed for it."""

    @property
    def fetch_from(self) -> str | None:
        return self.prefill_choice.fetch_from

    @property
    def est_ttft_s(self) -> float:
        return self.prefill_choice.ttft_s


NO_WORKER = "no worker of this role: "
"""Start of a rejection's reason when no worker of a role is in the cluster (the
request can run once one joins: a service outage, not an overload)."""

MIN_DECODE_STEPS = 16
"""Observed decode steps before the online fit replaces the cost model's formula."""

PROJECTION_ROUNDS = 4
"""Most rounds of the projected-load fixed point behind the default t_d (see
:meth:`Conductor._projection`); it stops earlier once the projection stops moving."""

_VIEW: dict[str, LoadView] = {
    "none": "committed",
    "ttft": "committed",
    "early": "current",
    "predictive": "projected",
}


class Conductor:
    """Global scheduler policy (FAST'25 §6–7), pure.

    Args:
        config: policies and SLOs.
        prefill_workers: names of prefill instances (all instances when colocated).
        decode_workers: decode instance name -> KV capacity in tokens (when colocated,
            the capacity of each prefill instance; names must match).
        cost: closed-form cost model the online estimators start from.
        vectorized: decide over numpy mirrors of the instances' loads
            (:mod:`~mooncake.conductor.load_table`); ``False`` runs the per-instance
            Python reference, which makes the same decisions, float for float (kept to
            check the fast path against).
    """

    def __init__(
        self,
        config: ConductorConfig,
        prefill_workers: Sequence[str],
        decode_workers: Mapping[str, int],
        cost: CostModel | None = None,
        vectorized: bool = True,
    ) -> None:
        self.config = config
        self.cost = cost or CostModel()
        self.index = GlobalBlockIndex()
        self.estimator = PrefillTimeEstimator(self.cost)
        self.bandwidth = BandwidthEstimator(self.cost.hardware.rdma_bandwidth)
        self.decode_estimator = DecodeStepEstimator(self.cost)
        """Decode step time fitted from the engines' measured steps (live only: in the
        simulator the cost model is the ground truth already)."""
        self.prefill_scheduler = PrefillScheduler(
            config.prefill_policy,
            config.kvcache_balancing_threshold,
            config.block_size,
            config.seed,
        )
        self.decode_scheduler = DecodeScheduler(config.max_decode_batch)
        self.outputs = OutputLengthPredictor(config.output_window)
        """Expected output lengths (decode-load prediction) and their error so far."""
        # The loads, by name in registration order (ties go to the first), and the
        # same loads as arrays (``None``: the reference path). Workers join and leave
        # only through the methods below, which keep the two in step.
        self.prefill_loads: dict[str, PrefillLoad] = {}
        self.decode_loads: dict[str, DecodeLoad] = {}
        self._prefill_table = PrefillTable() if vectorized else None
        self._decode_table = DecodeTable() if vectorized else None
        for w in prefill_workers:
            self.add_prefill_worker(w)
        for w, cap in decode_workers.items():
            self.add_decode_worker(w, cap)
        if config.colocated and set(prefill_workers) != set(decode_workers):
            raise ValueError("decode_workers: must name the prefill workers when colocated")
        self._placed: dict[str, Placement] = {}

    # -- membership (the live plugin adds/removes workers as they come and go) -------
    def add_prefill_worker(self, worker: str) -> None:
        if worker in self.prefill_loads:
            return
        load = self.prefill_loads[worker] = PrefillLoad()
        if self._prefill_table is not None:
            self._prefill_table.add(worker, load)

    def add_decode_worker(self, worker: str, kv_capacity_tokens: int) -> None:
        if worker in self.decode_loads:
            return
        load = self.decode_loads[worker] = DecodeLoad(kv_capacity_tokens)
        if self._decode_table is not None:
            self._decode_table.add(worker, load)

    def remove_worker(self, worker: str) -> list[str]:
        """A worker left (or died): forget its load and its blocks in the global index.
        Returns the requests placed on it (as prefill or decode) that have not left yet;
        they stay known until ``on_decode_leave`` or ``replace``."""
        self.prefill_loads.pop(worker, None)
        self.decode_loads.pop(worker, None)
        if self._prefill_table is not None:
            self._prefill_table.remove(worker)
        if self._decode_table is not None:
            self._decode_table.remove(worker)
        self.index.drop_worker(worker)
        return [rid for rid, p in self._placed.items() if worker in (p.prefill, p.decode)]

    # -- estimates -------------------------------------------------------------
    def step_time(self, batch: int, kv_tokens: int) -> float:
        """Estimated decode step seconds for a batch: the online fit once it has seen
        enough steps, the cost model's formula before."""
        if self.decode_estimator.num_observations >= MIN_DECODE_STEPS:
            return self.decode_estimator.estimate(batch, kv_tokens)
        return self.cost.decode_step_time(batch, kv_tokens)

    def _step_times(
        self, batch: npt.NDArray[np.int64], kv_tokens: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """:meth:`step_time` of many instances at once (the same floats)."""
        if self.decode_estimator.num_observations >= MIN_DECODE_STEPS:
            return self.decode_estimator.estimate_many(batch, kv_tokens)
        return self.cost.decode_step_times(batch, kv_tokens)

    def token_time(self, worker: str) -> float:
        """Uniform decode seconds per token t_d at the instance's current load: the
        fixed ``decode_token_time_s``, else the step time of the running batch (the
        starting point of :meth:`_projection`'s fixed point, and the retry hint)."""
        if self.config.decode_token_time_s is not None:
            return self.config.decode_token_time_s
        load = self.decode_loads[worker]
        return self.step_time(max(1, len(load.running)), load.kv_running)

    def _projection(
        self, worker: str, eta: float, now: float, need: int, total: OutputEstimate | None
    ) -> tuple[tuple[int, int], float]:
        """((batch, KV tokens) of ``worker`` projected to ``eta``, the t_d it used)
        (FAST'25 §7).

        The uniform decode time t_d is the step time *at the projected load*: starting
        from the current step time, project, take the step time of the projected batch
        with the new request (``need`` KV tokens) in it, and project again, until the
        projection stops moving (at most :data:`PROJECTION_ROUNDS` rounds). The current
        step time alone is the time of a token on today's batch; a request is admitted
        into tomorrow's, where every token takes longer and sequences finish later.
        A fixed ``decode_token_time_s`` is used as is.
        """
        load = self.decode_loads[worker]
        t_d = self.token_time(worker)
        view = decode_view(load, "projected", eta, t_d, now, total)
        if self.config.decode_token_time_s is None:
            for _ in range(PROJECTION_ROUNDS):
                t_d = self.step_time(view[0] + 1, view[1] + need)
                nxt = decode_view(load, "projected", eta, t_d, now, total)
                if nxt == view:
                    break
                view = nxt
        return view, t_d

    def _check_stay(
        self,
        first: DecodeChoice,
        workers: Sequence[str],
        eta: float,
        now: float,
        need: int,
        out_len: int,
        total: OutputEstimate | None,
        t_d_of: Mapping[str, float],
    ) -> DecodeChoice:
        """Predictive admission: the request must fit not only when it reaches decode
        but at the busiest projected moment of its expected stay there
        (:func:`~mooncake.conductor.admission.projected_peak`); otherwise a request
        already placed to arrive meanwhile finds no memory and waits (a live decode
        instance queues, it does not refuse). ``first`` (chosen on the load at ``eta``)
        is kept if it passes; else the instance with the lowest TBT at its peak among
        the others that pass; else ``first`` marked as not fitting. The TBT is the step
        time at that peak. ``t_d_of``: the t_d each instance's projection to ``eta``
        ended with (the others' are computed when needed)."""
        if not first.fits:
            return first

        def at_peak(w: str) -> DecodeChoice:
            load = self.decode_loads[w]
            t_d = t_d_of.get(w)
            if t_d is None:
                t_d = self._projection(w, eta, now, need, total)[1]
            until = eta + (out_len - 1) * t_d
            batch, kv = projected_peak(load, eta, until, t_d, now, total)
            fits = (
                kv + need <= load.kv_capacity_tokens and batch + 1 <= self.config.max_decode_batch
            )
            return DecodeChoice(w, self.step_time(batch + 1, kv + need), fits)

        choice = at_peak(first.worker)
        if choice.fits:
            return choice
        best: DecodeChoice | None = None
        for w in workers:
            if w == first.worker:
                continue
            other = at_peak(w)
            if other.fits and (best is None or other.tbt_s < best.tbt_s):
                best = other
        return best if best is not None else choice

    def transfer_time(self, tokens: int) -> float:
        return self.bandwidth.transfer_time(tokens * self.cost.model.kv_bytes_per_token)

    def _total_len(self, seq: DecodeSeq, generated: float) -> int:
        """Expected output length of a running sequence that has generated
        ``generated`` tokens: one that outlived the mean is expected to run on."""
        if seq.max_tokens <= 0:
            return seq.output_len
        return self.outputs.expected_given(seq.max_tokens, generated)

    def _retry_after(self, worker: str) -> float:
        """Seconds until the first running sequence on ``worker`` should finish."""
        load = self.decode_loads[worker]
        if not load.running:
            return 1.0
        t_d = self.token_time(worker)
        return max(0.0, min(s.output_len * t_d for s in load.running.values()))

    # -- decisions -------------------------------------------------------------
    def place(
        self, req: RequestInfo, now: float, exclude: Collection[str] = ()
    ) -> Placement | Rejection:
        """Choose prefill and decode instances for ``req`` or reject it.

        ``req.output_len`` is the request's cap (``max_tokens``); decode load is planned
        with the expected output length (``ConductorConfig.output_prediction``).
        ``exclude``: instances to place as if they had left already (a client learned
        that they died before the scheduler removed them); a role left with none is
        refused as one with no instance."""
        cfg = self.config
        prefill_loads, decode_loads = self.prefill_loads, self.decode_loads
        ptable, dtable = self._prefill_table, self._decode_table
        if any(w in prefill_loads or w in decode_loads for w in exclude):
            # Rare (a move during the scheduler's own notice): the per-instance path
            # over the rest, not the arrays mirroring every instance.
            prefill_loads = {w: v for w, v in prefill_loads.items() if w not in exclude}
            decode_loads = {w: v for w, v in decode_loads.items() if w not in exclude}
            ptable = dtable = None
        if not prefill_loads or not decode_loads:
            role = "prefill" if not prefill_loads else "decode"
            return Rejection(req.request_id, f"{NO_WORKER}{role}", 1.0)
        if cfg.output_prediction == "expected":
            out_len = self.outputs.expected(req.output_len)
            kv_out = max(
                out_len, self.outputs.quantile(req.output_len, cfg.output_reserve_quantile)
            )
        else:
            out_len = kv_out = req.output_len
        dreq = req if kv_out == req.output_len else replace(req, output_len=kv_out)
        prefix = self.index.match_prefix(req.block_keys)
        if ptable is None and exclude:
            prefix = {w: n for w, n in prefix.items() if w not in exclude}
        pchoice = self.prefill_scheduler.choose(
            req,
            now,
            prefill_loads,
            prefix,
            self.estimator.estimate,
            self.transfer_time,
            ptable,
        )
        eta = now + pchoice.ttft_s
        view = _VIEW[cfg.admission]
        table = dtable
        t_d_of: dict[str, float] = {}  # projected view: the t_d each projection ended with
        if table is not None and not cfg.colocated:
            if view == "projected":
                # Every running and placed sequence of every instance at once.
                t_d = table.token_times(cfg.decode_token_time_s, self._step_times)
                many = (
                    self.outputs.expected_given_many
                    if cfg.output_prediction == "expected"
                    else None
                )
                batch, kv = table.projected(eta, t_d, now, many)
                if cfg.decode_token_time_s is None:  # _projection's fixed point
                    need = dreq.prompt_len + dreq.output_len
                    for _ in range(PROJECTION_ROUNDS):
                        t_d = self._step_times(batch + 1, kv + need)
                        nb, nk = table.projected(eta, t_d, now, many)
                        if np.array_equal(nb, batch) and np.array_equal(nk, kv):
                            break
                        batch, kv = nb, nk
            else:  # per-instance counters
                batch, kv = table.view(view == "committed")
            dchoice = self.decode_scheduler.choose_vector(
                dreq,
                table.names,
                batch,
                kv,
                table.capacity[: len(table)],
                self._step_times,
                self.step_time,
            )
            if view == "projected":
                t_d_of[dchoice.worker] = float(t_d[table.slot_of[dchoice.worker]])
        else:
            workers = [pchoice.worker] if cfg.colocated else list(decode_loads)
            total = self._total_len if cfg.output_prediction == "expected" else None
            need = dreq.prompt_len + dreq.output_len
            views: dict[str, tuple[int, int]] = {}
            for w in workers:
                if view == "projected":
                    views[w], t_d_of[w] = self._projection(w, eta, now, need, total)
                else:
                    views[w] = decode_view(self.decode_loads[w], view)
            capacity = {w: self.decode_loads[w].kv_capacity_tokens for w in workers}
            dchoice = self.decode_scheduler.choose(dreq, views, capacity, self.step_time)
        if view == "projected":
            dchoice = self._check_stay(
                dchoice,
                [pchoice.worker] if cfg.colocated else list(decode_loads),
                eta,
                now,
                dreq.prompt_len + dreq.output_len,
                out_len,
                self._total_len if cfg.output_prediction == "expected" else None,
                t_d_of,
            )
        if cfg.admission == "ttft" and pchoice.ttft_s > cfg.ttft_slo_s:
            return Rejection(
                req.request_id,
                f"estimated TTFT {pchoice.ttft_s:.2f}s > SLO {cfg.ttft_slo_s:g}s",
                pchoice.ttft_s - cfg.ttft_slo_s,
            )
        if cfg.admission in ("early", "predictive"):
            rej = check_slos(
                req.request_id,
                pchoice,
                dchoice,
                cfg.ttft_slo_s,
                cfg.tbt_slo_s,
                self._retry_after(dchoice.worker),
            )
            if rej is not None:
                return rej
        self.prefill_loads[pchoice.worker].enqueue(
            req.request_id, pchoice.prefill_s + pchoice.transfer_s
        )
        self.decode_loads[dchoice.worker].expect(
            req.request_id, DecodeSeq(req.prompt_len, out_len, eta, kv_out, req.output_len)
        )
        self.outputs.track(req.request_id, out_len)
        placement = Placement(
            req.request_id, pchoice.worker, dchoice.worker, pchoice, dchoice, out_len
        )
        self._placed[req.request_id] = placement
        return placement

    def admit_to_decode(self, request_id: str, now: float) -> Rejection | None:
        """The decode instance's check when a prefilled request arrives: refuse it if its
        KV does not fit next to the running batch or the batch is full (FAST'25's
        baseline rejects here, after the prefill was spent)."""
        placement = self._placed.get(request_id)
        if placement is None:
            return Rejection(request_id, "unknown request", 0.0)
        load = self.decode_loads.get(placement.decode)
        if load is None:
            return Rejection(request_id, f"decode instance {placement.decode} left", 0.0)
        seq = load.incoming.get(request_id)
        need = seq.kv_tokens if seq is not None else 0
        if (
            load.kv_running + need > load.kv_capacity_tokens
            or len(load.running) + 1 > self.config.max_decode_batch
        ):
            return Rejection(
                request_id,
                f"decode instance {placement.decode} full",
                self._retry_after(placement.decode),
            )
        return None

    # -- events ----------------------------------------------------------------
    def on_prefill_start(self, request_id: str, now: float) -> None:
        placement = self._placed.get(request_id)
        load = self.prefill_loads.get(placement.prefill) if placement is not None else None
        if load is not None:
            load.start(request_id, now)

    def on_prefill_finish(
        self, request_id: str, now: float, prompt_len: int, cached_tokens: int, seconds: float
    ) -> None:
        """A prefill ended; its observed duration ``seconds`` (excluding any prefix fetch;
        on a colocated instance including the decode steps it shared) refines the
        prefill time model."""
        placement = self._placed.get(request_id)
        load = self.prefill_loads.get(placement.prefill) if placement is not None else None
        if load is not None:
            load.finish(request_id)
        if seconds > 0:
            self.estimator.observe(prompt_len, cached_tokens, seconds)

    def on_transfer(self, nbytes: float, seconds: float) -> None:
        """A KV transfer of ``nbytes`` took ``seconds``; refines the bandwidth estimate."""
        self.bandwidth.observe(nbytes, seconds)

    def on_decode_step(self, batch: int, kv_tokens: int, seconds: float) -> None:
        """An engine ran a decode-only step of ``batch`` sequences reading ``kv_tokens``
        of KV in ``seconds``; refines the decode step time model."""
        self.decode_estimator.observe(batch, kv_tokens, seconds)

    def on_decode_join(self, request_id: str, now: float) -> None:
        placement = self._placed.get(request_id)
        load = self.decode_loads.get(placement.decode) if placement is not None else None
        if load is not None:
            load.join(request_id, now)

    def on_decode_leave(self, request_id: str, now: float) -> None:
        """The request finished (or was dropped) anywhere in its life: forget it."""
        placement = self._placed.pop(request_id, None)
        if placement is None:
            return
        # Either worker may have left meanwhile (its load went with it).
        pload = self.prefill_loads.get(placement.prefill)
        if pload is not None:
            pload.finish(request_id)
        dload = self.decode_loads.get(placement.decode)
        if dload is not None:
            dload.leave(request_id)

    def on_request_finished(self, request_id: str, output_tokens: int) -> None:
        """A request generated ``output_tokens`` in all: feeds the output-length
        distribution and scores the length assumed when it was placed."""
        self.outputs.observe(request_id, output_tokens)

    def on_blocks_stored(self, worker: str, keys: Iterable[Hashable]) -> None:
        self.index.stored(worker, keys)

    def on_blocks_removed(self, worker: str, keys: Iterable[Hashable]) -> None:
        self.index.removed(worker, keys)

    def placement_of(self, request_id: str) -> Placement | None:
        return self._placed.get(request_id)


__all__ = ["NO_WORKER", "Conductor", "Placement"]
