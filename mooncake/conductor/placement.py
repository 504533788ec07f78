"""Placement: which prefill instance computes a request and which decode instance
continues it.

Prefill placement implements the four policies of FAST'25 §8.2 (Fig. 9); the
``global_cache_aware`` one is the paper's Algorithm 1. Decode placement picks the
instance with the lowest estimated TBT among those with room for the request's KV.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mooncake.conductor.config import PREFILL_POLICIES, PrefillPolicy
from mooncake.conductor.load_table import PrefillTable
from mooncake.conductor.state import PrefillLoad, RequestInfo

#: (prompt tokens, cached tokens) -> estimated prefill seconds.
PrefillEstimate = Callable[[int, int], float]
#: tokens -> estimated seconds to move their KV between instances.
TransferEstimate = Callable[[int], float]
#: (batch, kv tokens) -> estimated decode step seconds.
StepEstimate = Callable[[int, int], float]
#: The same over arrays of instances, float for float.
StepEstimates = Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class PrefillChoice:
    """Where to prefill and what the estimate was made of."""

    worker: str
    queue_s: float
    prefill_s: float
    transfer_s: float
    local_tokens: int
    """Prefix tokens the chosen instance already holds."""
    cached_tokens: int
    """Prefix tokens it will reuse (local, or fetched from ``fetch_from``)."""
    fetch_from: str | None = None
    """Instance to pull the longer prefix from (Algorithm 1's TransferKVCache)."""
    fetch_tokens: int = 0

    @property
    def ttft_s(self) -> float:
        return self.queue_s + self.transfer_s + self.prefill_s


@dataclass(frozen=True, slots=True)
class DecodeChoice:
    """Where to decode, the estimated TBT there, and whether the KV fits."""

    worker: str
    tbt_s: float
    fits: bool


def prefix_tokens(blocks: int, prompt_len: int, block_size: int) -> int:
    """Reusable tokens for ``blocks`` matched blocks. At least one prompt token is always
    recomputed: its logits give the first output token."""
    return max(0, min(blocks * block_size, prompt_len - 1))


def longest_prefix(
    prefix_blocks: Mapping[str, int], members: Container[str]
) -> tuple[str | None, int]:
    """The member holding the most leading blocks of the prompt, and how many (None, 0
    when none holds any). Ties go to the smallest worker name, whatever order
    ``prefix_blocks`` comes in, so a replay is the same in every process."""
    best_worker: str | None = None
    best_blocks = 0
    for w, b in prefix_blocks.items():
        if (
            w in members
            and b > 0
            and (
                b > best_blocks
                or (b == best_blocks and best_worker is not None and w < best_worker)
            )
        ):
            best_worker, best_blocks = w, b
    return best_worker, best_blocks


class PrefillScheduler:
    """Chooses a prefill instance for a request.

    Args:
        policy: one of :data:`~mooncake.conductor.config.PREFILL_POLICIES`.
        kvcache_balancing_threshold: Algorithm 1's fetch-vs-recompute ratio.
        block_size: tokens per block key.
        seed: seed of the ``random`` policy.
    """

    def __init__(
        self,
        policy: PrefillPolicy,
        kvcache_balancing_threshold: float = 1.0,
        block_size: int = 512,
        seed: int = 0,
    ) -> None:
        if policy not in PREFILL_POLICIES:
            raise ValueError(f"policy: must be one of {PREFILL_POLICIES}, got {policy!r}")
        self.policy = policy
        self.threshold = kvcache_balancing_threshold
        self.block_size = block_size
        self._rng = random.Random(seed)

    def choose(
        self,
        req: RequestInfo,
        now: float,
        loads: Mapping[str, PrefillLoad],
        prefix_blocks: Mapping[str, int],
        estimate: PrefillEstimate,
        transfer: TransferEstimate,
        table: PrefillTable | None = None,
    ) -> PrefillChoice:
        """Pick the prefill instance for ``req``.

        Args:
            req: the request.
            now: current time (seconds).
            loads: every prefill instance's load, by name; equal estimates go to the
                first in this order (registration order: deterministic for a replay).
            prefix_blocks: leading blocks of ``req`` each instance holds (absent = 0).
            estimate: prefill time model.
            transfer: KV transfer time model.
            table: ``loads`` mirrored as arrays, in the same order (see
                :mod:`~mooncake.conductor.load_table`): the same choice, computed with
                a few vector operations instead of a Python step per instance.
        """
        if not loads:
            raise ValueError("no prefill instances")
        n, bs = req.prompt_len, self.block_size
        if table is not None and self.policy != "random":
            return self._choose_vector(req, now, table, prefix_blocks, estimate, transfer)

        def local(worker: str) -> PrefillChoice:
            cached = prefix_tokens(prefix_blocks.get(worker, 0), n, bs)
            return PrefillChoice(
                worker, loads[worker].queue_time(now), estimate(n, cached), 0.0, cached, cached
            )

        if self.policy == "random":
            return local(self._rng.choice(list(loads)))
        if self.policy == "load_balancing":
            best = min(loads, key=lambda w: loads[w].queue_time(now))
            return local(best)
        if self.policy == "local_cache_aware":
            return min((local(w) for w in loads), key=lambda c: c.ttft_s)
        return self._algorithm1(req, now, loads, prefix_blocks, estimate, transfer)

    def _algorithm1(
        self,
        req: RequestInfo,
        now: float,
        loads: Mapping[str, PrefillLoad],
        prefix_blocks: Mapping[str, int],
        estimate: PrefillEstimate,
        transfer: TransferEstimate,
    ) -> PrefillChoice:
        """FAST'25 Algorithm 1: for each instance, either recompute beyond its own prefix
        or, when the best prefix anywhere is more than ``threshold`` times longer, fetch
        that prefix first; take the instance with the smallest queue + transfer +
        prefill. Fetching to a lightly loaded instance is what replicates hot prefixes."""
        n, bs = req.prompt_len, self.block_size
        best_worker, best_blocks = longest_prefix(prefix_blocks, loads)
        best_tokens = prefix_tokens(best_blocks, n, bs)
        # The estimates depend on the instance only through its local prefix, and most
        # instances hold none of it: one estimate per distinct prefix length, not per
        # instance, keeps a decision over hundreds of instances to one cheap pass (the
        # queue time) per instance. The sum below is PrefillChoice.ttft_s's, in its
        # order, so the choice is the same float for float.
        est: dict[int, float] = {}
        xfer: dict[int, float] = {}
        chosen: tuple[str, float, int, bool] | None = None  # worker, q, local tokens, fetch
        best_ttft = 0.0
        for w, load in loads.items():
            held = prefix_blocks.get(w)
            local_tokens = prefix_tokens(held, n, bs) if held else 0
            q = load.queue_time(now)
            fetches = (
                best_worker is not None
                and best_worker != w
                and best_tokens > self.threshold * local_tokens
            )
            cached = best_tokens if fetches else local_tokens
            p = est.get(cached)
            if p is None:
                p = est[cached] = estimate(n, cached)
            t = 0.0
            if fetches:
                t = xfer.get(local_tokens, -1.0)
                if t < 0.0:
                    t = xfer[local_tokens] = transfer(best_tokens - local_tokens)
            ttft = q + t + p
            if chosen is None or ttft < best_ttft:
                chosen, best_ttft = (w, q, local_tokens, fetches), ttft
        assert chosen is not None
        w, q, local_tokens, fetches = chosen
        if fetches:
            return PrefillChoice(
                w,
                q,
                est[best_tokens],
                xfer[local_tokens],
                local_tokens,
                best_tokens,
                best_worker,
                best_tokens - local_tokens,
            )
        return PrefillChoice(w, q, est[local_tokens], 0.0, local_tokens, local_tokens)

    def _choose_vector(
        self,
        req: RequestInfo,
        now: float,
        table: PrefillTable,
        prefix_blocks: Mapping[str, int],
        estimate: PrefillEstimate,
        transfer: TransferEstimate,
    ) -> PrefillChoice:
        """:meth:`choose` over a :class:`PrefillTable`: the same decision and floats.

        An instance's TTFT is queue + transfer + prefill, where transfer and prefill
        depend on the instance only through its local prefix. Every instance that holds
        none of the request's prefix (most of them, at hundreds of instances) shares one
        transfer and one prefill estimate, so all that is per instance is its queue time,
        one vector expression; only the holders (``prefix_blocks``) are looked at one by
        one. ``argmin`` takes the first of equal minima, as the reference's strict
        ``<`` does, and the sums are the reference's own, in its order."""
        n, bs, thr = req.prompt_len, self.block_size, self.threshold
        slot_of = table.slot_of
        q = table.queue_times(now)
        est: dict[int, float] = {}
        xfer: dict[int, float] = {}
        if self.policy != "global_cache_aware":
            # load_balancing: the first shortest queue; local_cache_aware: queue +
            # prefill with the instance's own prefix, nothing fetched.
            if self.policy == "load_balancing":
                i = int(np.argmin(q))
            else:
                p0 = est[0] = estimate(n, 0)
                p_vec = np.full(len(q), p0)
                for w, b in prefix_blocks.items():
                    j = slot_of.get(w)
                    if j is not None and b:
                        c = prefix_tokens(b, n, bs)
                        p = est.get(c)
                        if p is None:
                            p = est[c] = estimate(n, c)
                        p_vec[j] = p
                i = int(np.argmin((q + 0.0) + p_vec))
            w = table.names[i]
            cached = prefix_tokens(prefix_blocks.get(w, 0), n, bs)
            return PrefillChoice(w, float(q[i]), estimate(n, cached), 0.0, cached, cached)
        best_worker, best_blocks = longest_prefix(prefix_blocks, slot_of)
        best_tokens = prefix_tokens(best_blocks, n, bs)

        def costs(w: str | None, local_tokens: int) -> tuple[bool, float, float]:
            # (fetches, transfer, prefill) of instance ``w`` (None: any instance but
            # the best worker) with this local prefix, as _algorithm1 computes them.
            fetches = (
                best_worker is not None and best_worker != w and best_tokens > thr * local_tokens
            )
            cached = best_tokens if fetches else local_tokens
            p = est.get(cached)
            if p is None:
                p = est[cached] = estimate(n, cached)
            t = 0.0
            if fetches:
                t = xfer.get(local_tokens, -1.0)
                if t < 0.0:
                    t = xfer[local_tokens] = transfer(best_tokens - local_tokens)
            return fetches, t, p

        # Non-holders (w=None: never the best worker, local prefix 0).
        nh_fetch, nh_t, nh_p = costs(None, 0)
        # Holders: a hot prefix is on many instances, so their costs are cached by
        # block count (a handful of distinct values); the best worker, whose own prefix
        # is never fetched, is set apart.
        by_blocks: dict[int, tuple[bool, float, float]] = {}
        slots: list[int] = []
        ts: list[float] = []
        ps: list[float] = []
        for w, b in prefix_blocks.items():
            j = slot_of.get(w)
            if j is None or not b or w == best_worker:
                continue
            held = by_blocks.get(b)
            if held is None:
                held = by_blocks[b] = costs(None, prefix_tokens(b, n, bs))
            slots.append(j)
            ts.append(held[1])
            ps.append(held[2])
        ttft = q + nh_t
        if best_worker is None:  # nobody holds any of it: one estimate for all
            ttft += nh_p
        else:
            t_vec = np.full(len(q), nh_t)
            p_vec = np.full(len(q), nh_p)
            t_vec[slots] = ts
            p_vec[slots] = ps
            j = slot_of[best_worker]
            _, t_vec[j], p_vec[j] = costs(best_worker, best_tokens)
            ttft = q + t_vec
            ttft += p_vec
        i = int(np.argmin(ttft))
        w, qi = table.names[i], float(q[i])
        if w == best_worker:
            local_tokens, fetches = best_tokens, False
        else:
            b = prefix_blocks.get(w, 0)
            local_tokens = prefix_tokens(b, n, bs) if b else 0
            fetches = by_blocks[b][0] if b else nh_fetch
        if fetches:
            return PrefillChoice(
                w,
                qi,
                est[best_tokens],
                xfer[local_tokens],
                local_tokens,
                best_tokens,
                best_worker,
                best_tokens - local_tokens,
            )
        return PrefillChoice(w, qi, est[local_tokens], 0.0, local_tokens, local_tokens)


class DecodeScheduler:
    """Chooses a decode instance: lowest estimated TBT among those with KV room.

    Args:
        max_batch: most sequences per decode instance.
    """

    def __init__(self, max_batch: int = 1024) -> None:
        self.max_batch = max_batch

    def choose(
        self,
        req: RequestInfo,
        views: Mapping[str, tuple[int, int]],
        capacity: Mapping[str, int],
        step_time: StepEstimate,
    ) -> DecodeChoice:
        """Pick the decode instance for ``req``.

        Args:
            req: the request.
            views: per instance (batch, KV tokens) as seen at the moment that matters
                (now, or projected to the request's arrival at decode).
            capacity: per instance KV capacity in tokens.
            step_time: decode step model.
        """
        if not views:
            raise ValueError("no decode instances")
        need = req.prompt_len + req.output_len
        # The first instance with room and the lowest TBT; none with room: the lowest
        # TBT. (Compared without building a choice per instance.)
        best: tuple[str, float, bool] | None = None
        for w, (batch, kv) in views.items():
            fits = kv + need <= capacity[w] and batch + 1 <= self.max_batch
            if best is not None and best[2] and not fits:
                continue
            tbt = step_time(batch + 1, kv + need)
            if best is None or (fits and not best[2]) or tbt < best[1]:
                best = (w, tbt, fits)
        assert best is not None
        return DecodeChoice(*best)

    def choose_vector(
        self,
        req: RequestInfo,
        names: Sequence[str],
        batch: npt.NDArray[np.int64],
        kv: npt.NDArray[np.int64],
        capacity: npt.NDArray[np.int64],
        step_times: StepEstimates,
        step_time: StepEstimate,
    ) -> DecodeChoice:
        """:meth:`choose` over arrays (instance i is ``names[i]``, the views' order):
        the same choice, and the chosen TBT from ``step_time`` itself.

        Args:
            req: the request.
            names: instances, in the order of the arrays.
            batch: per instance batch under the view.
            kv: per instance KV tokens under the view.
            capacity: per instance KV capacity in tokens.
            step_times: ``step_time`` over arrays (the same floats).
            step_time: decode step model.
        """
        if not names:
            raise ValueError("no decode instances")
        need = req.prompt_len + req.output_len
        b1 = batch + 1
        kv1 = kv + need
        fits = (kv1 <= capacity) & (b1 <= self.max_batch)
        tbt = step_times(b1, kv1)
        # choose's rule: the first of the lowest TBT among instances with room, else
        # among all.
        room = np.flatnonzero(fits)
        i = int(room[np.argmin(tbt[room])]) if len(room) else int(np.argmin(tbt))
        return DecodeChoice(names[i], step_time(int(b1[i]), int(kv1[i])), bool(fits[i]))


__all__ = [
    "DecodeChoice",
    "DecodeScheduler",
    "PrefillChoice",
    "PrefillEstimate",
    "PrefillScheduler",
    "StepEstimate",
    "StepEstimates",
    "TransferEstimate",
    "longest_prefix",
    "prefix_tokens",
]
