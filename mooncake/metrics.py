"""Metric names and the cluster-wide metric state, shared by the scheduler and the server.

Names follow vLLM's (``vllm:time_to_first_token_seconds`` ...) with a ``mooncake:``
prefix, so dashboards built for vLLM need only the prefix changed. Pure module: it
imports ``prometheus_client`` and nothing from torch, Dask or Bokeh.

- :class:`MetricsState` accumulates what the Conductor learns (request timings, prefix
  lookups, admissions, transfers, per-worker load) as plain counters and histograms;
  the scheduler plugin feeds it, the dashboard page reads it.
- :class:`MooncakeCollector` turns a state into Prometheus metric families; registered in
  the scheduler process it appears on the scheduler's ``/metrics``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

MONITOR_PLUGIN_NAME = "mooncake-monitor"
"""Name of the scheduler plugin that owns the cluster's :class:`MetricsState` (the
dashboard's ``MonitorPlugin``); the Conductor plugin finds it by this name and feeds it."""

PREFIX = "mooncake:"

# -- names (vLLM's, with the mooncake: prefix) --------------------------------------
TTFT = f"{PREFIX}time_to_first_token_seconds"
ITL = f"{PREFIX}inter_token_latency_seconds"
TBT = f"{PREFIX}request_time_between_tokens_seconds"
E2E = f"{PREFIX}e2e_request_latency_seconds"
QUEUE = f"{PREFIX}request_queue_time_seconds"
PREFILL = f"{PREFIX}request_prefill_time_seconds"
DECODE = f"{PREFIX}request_decode_time_seconds"
RUNNING = f"{PREFIX}num_requests_running"
WAITING = f"{PREFIX}num_requests_waiting"
KV_USAGE = f"{PREFIX}kv_cache_usage_perc"
KV_BLOCKS = f"{PREFIX}kv_cache_blocks"
PREFIX_QUERIES = f"{PREFIX}prefix_cache_queries"
PREFIX_HITS = f"{PREFIX}prefix_cache_hits"
PREFIX_REQUESTS = f"{PREFIX}prefix_cache_requests"
PREFIX_UNUSABLE = f"{PREFIX}prefix_cache_shared_below_block_tokens"
ADMISSIONS = f"{PREFIX}request_admitted"
REJECTIONS = f"{PREFIX}request_rejected"
TRANSFER_BYTES = f"{PREFIX}kv_transfer_bytes"
TRANSFER_SECONDS = f"{PREFIX}kv_transfer_seconds"
TRANSFER_BANDWIDTH = f"{PREFIX}kv_transfer_bandwidth_bytes_per_second"
LEASE_EXPIRED = f"{PREFIX}kv_lease_expired"
PREFILL_QUEUE = f"{PREFIX}prefill_queue_seconds"
PROMPT_TOKENS = f"{PREFIX}prompt_tokens"
PROMPT_TOKENS_CACHED = f"{PREFIX}prompt_tokens_cached"
GENERATION_TOKENS = f"{PREFIX}generation_tokens"
REQUEST_PROMPT_TOKENS = f"{PREFIX}request_prompt_tokens"
REQUEST_GENERATION_TOKENS = f"{PREFIX}request_generation_tokens"
REQUEST_SUCCESS = f"{PREFIX}request_success"
REQUEST_ERRORS = f"{PREFIX}request_errors"

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
"""Seconds; vLLM's TTFT/ITL buckets with a 1 ms bucket added (small models on CPU)."""
TOKEN_BUCKETS: tuple[float, ...] = (
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10000,
    20000,
    50000,
)

Tier = Literal["device", "host", "ssd"]
TIERS: tuple[Tier, ...] = ("device", "host", "ssd")
HitSource = Literal["device", "host", "ssd", "remote"]
HIT_SOURCES: tuple[HitSource, ...] = ("device", "host", "ssd", "remote")
SharedPrefix = Literal["none", "below_block", "block_or_more"]
SHARED_PREFIX: tuple[SharedPrefix, ...] = ("none", "below_block", "block_or_more")
REJECTION_REASONS = ("ttft_slo", "tbt_slo", "decode_kv_full", "decode_full", "no_workers", "other")


def rejection_reason(reason: str) -> str:
    """A bounded label for a Conductor rejection message (the message carries numbers)."""
    r = reason.lower()
    if "ttft" in r:
        return "ttft_slo"
    if "tbt" in r:
        return "tbt_slo"
    if "no kv memory" in r:
        return "decode_kv_full"
    if "full" in r:
        return "decode_full"
    if "no mooncake workers" in r:
        return "no_workers"
    return "other"


def slowest_gaps_mean(gaps: Sequence[float], fraction: float = 0.1) -> float:
    """FAST'25's TBT of one request: the mean of its slowest ``fraction`` of token gaps."""
    if not gaps:
        return 0.0
    k = max(1, math.ceil(len(gaps) * fraction))
    return sum(sorted(gaps, reverse=True)[:k]) / k


@dataclass(slots=True)
class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics) with a window of recent values."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    """Per bucket (not cumulative), plus the +Inf bucket last."""
    sum: float = 0.0
    count: int = 0
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=4096))
    """(wall time, value) of the latest observations, for plots."""

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float, at: float | None = None) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1
        self.recent.append((time.time() if at is None else at, value))

    def cumulative(self) -> list[tuple[str, float]]:
        """``[(le, cumulative count)]`` including ``+Inf``."""
        out, acc = [], 0
        for le, c in zip([*map(_le, self.buckets), "+Inf"], self.counts):
            acc += c
            out.append((le, float(acc)))
        return out

    def quantile(self, q: float) -> float | None:
        """A quantile of the recent window (None when empty)."""
        values = sorted(v for _, v in self.recent)
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]


def _le(b: float) -> str:
    return repr(float(b))


@dataclass(slots=True)
class WorkerLoad:
    """The latest report of one worker."""

    role: str
    running: int = 0
    waiting: int = 0
    kv_blocks: dict[str, tuple[int, int]] = field(default_factory=dict)
    """tier -> (used blocks, total blocks)."""
    cached_blocks: int = 0
    prefill_queue_s: float = 0.0
    batch_size: int = 0
    """Sequences in the engine's running batch (decode and prefill chunks)."""


@dataclass(slots=True)
class RequestRecord:
    """One finished request as its last worker reports it (seconds)."""

    request_id: str
    ttft_s: float | None = None
    e2e_s: float | None = None
    queue_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    itl_s: Sequence[float] = ()
    """Gaps between a request's consecutive tokens as the client would see them."""
    prompt_tokens: int = 0
    generation_tokens: int = 0


@dataclass(slots=True)
class LookupRecord:
    """One prefix lookup (at the request's prefill worker)."""

    prompt_tokens: int
    hits: dict[str, int] = field(default_factory=dict)
    """source (``device``/``host``/``ssd``/``remote``) -> cached tokens served from it."""
    shared_prefix: SharedPrefix = "none"
    """Did an earlier prompt share a prefix with this one past its cached blocks?
    ``below_block``: it shared some tokens, but not a whole further block, so the cache
    (which keys whole blocks) could not serve them."""
    shared_below_block_tokens: int = 0


@dataclass(slots=True)
class TimelinePoint:
    t: float
    query_tokens: int
    hit_tokens: int
    admitted: int
    rejected: int


class MetricsState:
    """Everything the Conductor's metrics and the dashboard show. Not thread-safe: the
    scheduler's event loop is its only writer.

    Args:
        model_name: label value of every metric.
        timeline_interval_s: spacing of the time series the dashboard plots.
    """

    def __init__(self, model_name: str = "", timeline_interval_s: float = 1.0) -> None:
        self.model_name = model_name
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.itl = Histogram(LATENCY_BUCKETS)
        self.tbt = Histogram(LATENCY_BUCKETS)
        self.e2e = Histogram(LATENCY_BUCKETS)
        self.queue = Histogram(LATENCY_BUCKETS)
        self.prefill = Histogram(LATENCY_BUCKETS)
        self.decode = Histogram(LATENCY_BUCKETS)
        self.prompt_tokens = Histogram(TOKEN_BUCKETS)
        self.generation_tokens = Histogram(TOKEN_BUCKETS)
        self.query_tokens = 0
        self.hit_tokens: Counter[str] = Counter({s: 0 for s in HIT_SOURCES})
        self.lookups: Counter[str] = Counter({s: 0 for s in SHARED_PREFIX})
        self.shared_below_block_tokens = 0
        self.admitted = 0
        self.rejected: Counter[str] = Counter()
        self.transfer_bytes: Counter[str] = Counter()
        """By path (``shm``, ``tcp``, ``dask``, ``local``, ``prefix-fetch``, ``miss``...)."""
        self.transfer_seconds: dict[str, float] = {}
        self.transfers = 0
        self.leases_expired = 0
        """Hand-off leases that expired before the decode side released them."""
        self.bandwidth_estimate: float | None = None
        self.workers: dict[str, WorkerLoad] = {}
        self.timeline: deque[TimelinePoint] = deque(maxlen=3600)
        self.timeline_interval_s = timeline_interval_s
        self.ttft_slo_s: float | None = None
        """The Conductor's TTFT SLO (the dashboard draws it on the TTFT histogram)."""
        self.tbt_slo_s: float | None = None
        """The Conductor's TBT SLO."""

    # -- events ----------------------------------------------------------------------
    def observe_request(self, r: RequestRecord, at: float | None = None) -> None:
        for hist, v in (
            (self.ttft, r.ttft_s),
            (self.e2e, r.e2e_s),
            (self.queue, r.queue_s),
            (self.prefill, r.prefill_s),
            (self.decode, r.decode_s),
        ):
            if v is not None and v >= 0:
                hist.observe(v, at)
        for gap in r.itl_s:
            self.itl.observe(gap, at)
        if r.itl_s:
            self.tbt.observe(slowest_gaps_mean(r.itl_s), at)
        self.prompt_tokens.observe(r.prompt_tokens, at)
        self.generation_tokens.observe(r.generation_tokens, at)

    def observe_lookup(self, lk: LookupRecord) -> None:
        self.query_tokens += lk.prompt_tokens
        for src, n in lk.hits.items():
            self.hit_tokens[src] += n
        self.lookups[lk.shared_prefix] += 1
        self.shared_below_block_tokens += lk.shared_below_block_tokens

    def observe_admission(self, admitted: bool, reason: str = "") -> None:
        if admitted:
            self.admitted += 1
        else:
            self.rejected[rejection_reason(reason)] += 1

    def observe_transfer(self, nbytes: int, seconds: float, path: str = "tcp") -> None:
        self.transfer_bytes[path] += nbytes
        self.transfer_seconds[path] = self.transfer_seconds.get(path, 0.0) + seconds
        self.transfers += 1

    def set_worker(self, worker: str, load: WorkerLoad) -> None:
        self.workers[worker] = load

    def remove_worker(self, worker: str) -> None:
        self.workers.pop(worker, None)

    def tick(self, now: float | None = None) -> None:
        """Append a timeline point when the last one is older than the interval."""
        now = time.time() if now is None else now
        if self.timeline and now - self.timeline[-1].t < self.timeline_interval_s:
            return
        self.timeline.append(
            TimelinePoint(
                now,
                self.query_tokens,
                sum(self.hit_tokens.values()),
                self.admitted,
                sum(self.rejected.values()),
            )
        )

    # -- views -----------------------------------------------------------------------
    @property
    def total_hit_tokens(self) -> int:
        return sum(self.hit_tokens.values())

    def hit_rate(self) -> float:
        """Prefix-cache hit rate in tokens since the start (0 before any lookup)."""
        return self.total_hit_tokens / self.query_tokens if self.query_tokens else 0.0

    def rates(self) -> list[tuple[float, float | None, float]]:
        """Per timeline interval: (time, hit rate of that interval or None when no
        lookups, rejections per second)."""
        pts = list(self.timeline)
        out: list[tuple[float, float | None, float]] = []
        for a, b in itertools.pairwise(pts):
            dq, dh = b.query_tokens - a.query_tokens, b.hit_tokens - a.hit_tokens
            dt = max(1e-9, b.t - a.t)
            out.append((b.t, dh / dq if dq else None, (b.rejected - a.rejected) / dt))
        return out

    # -- Prometheus ---------------------------------------------------------------------
    def families(self) -> Iterator[Metric]:
        """The state as Prometheus metric families (counters get ``_total``)."""
        m = [self.model_name]
        lab = ["model_name"]
        for name, doc, h in (
            (TTFT, "Time to first token, from the client's arrival.", self.ttft),
            (ITL, "Time between consecutive tokens of a request.", self.itl),
            (TBT, "Per request: mean of its slowest 10% token gaps (FAST'25's TBT).", self.tbt),
            (E2E, "Arrival to last token.", self.e2e),
            (QUEUE, "Time a request waited in its prefill engine's queue.", self.queue),
            (PREFILL, "Prefill compute time (first scheduled to first token).", self.prefill),
            (DECODE, "Decode time (joining the decode batch to the last token).", self.decode),
            (REQUEST_PROMPT_TOKENS, "Prompt tokens per request.", self.prompt_tokens),
            (REQUEST_GENERATION_TOKENS, "Generated tokens per request.", self.generation_tokens),
        ):
            fam = HistogramMetricFamily(name, doc, labels=lab)
            fam.add_metric(m, h.cumulative(), h.sum)
            yield fam
        running = GaugeMetricFamily(
            RUNNING, "Requests in engines' running batches.", labels=[*lab, "worker", "role"]
        )
        waiting = GaugeMetricFamily(
            WAITING, "Requests waiting in engines' queues.", labels=[*lab, "worker", "role"]
        )
        usage = GaugeMetricFamily(
            KV_USAGE,
            "Fraction of KV blocks in use, per tier and worker (1 = full).",
            labels=[*lab, "worker", "tier"],
        )
        blocks = GaugeMetricFamily(
            KV_BLOCKS,
            "KV blocks per tier and worker, by state (used, total, cached).",
            labels=[*lab, "worker", "tier", "state"],
        )
        pq = GaugeMetricFamily(
            PREFILL_QUEUE,
            "Estimated seconds of prefill work queued at a worker.",
            labels=[*lab, "worker"],
        )
        for w, load in sorted(self.workers.items()):
            running.add_metric([*m, w, load.role], load.running)
            waiting.add_metric([*m, w, load.role], load.waiting)
            pq.add_metric([*m, w], load.prefill_queue_s)
            for tier, (used, total) in load.kv_blocks.items():
                usage.add_metric([*m, w, tier], used / total if total else 0.0)
                blocks.add_metric([*m, w, tier, "used"], used)
                blocks.add_metric([*m, w, tier, "total"], total)
                if tier == "device":
                    blocks.add_metric([*m, w, tier, "cached"], load.cached_blocks)
        yield from (running, waiting, usage, blocks, pq)
        q = CounterMetricFamily(
            PREFIX_QUERIES, "Prompt tokens looked up in the prefix cache.", labels=lab
        )
        q.add_metric(m, self.query_tokens)
        yield q
        hits = CounterMetricFamily(
            PREFIX_HITS,
            "Prompt tokens served from the prefix cache, by where the blocks came from.",
            labels=[*lab, "source"],
        )
        for src in HIT_SOURCES:
            hits.add_metric([*m, src], self.hit_tokens[src])
        yield hits
        reqs = CounterMetricFamily(
            PREFIX_REQUESTS,
            "Prefix lookups by how much an earlier prompt shared past the cached blocks: none, "
            "below_block (shared tokens that end inside a block, "
            "which the cache cannot serve), block_or_more.",
            labels=[*lab, "shared_prefix"],
        )
        for s in SHARED_PREFIX:
            reqs.add_metric([*m, s], self.lookups[s])
        yield reqs
        unusable = CounterMetricFamily(
            PREFIX_UNUSABLE,
            "Prompt tokens shared with an earlier prompt but inside a block that differs later.",
            labels=lab,
        )
        unusable.add_metric(m, self.shared_below_block_tokens)
        yield unusable
        adm = CounterMetricFamily(
            ADMISSIONS, "Requests admitted and placed by the Conductor.", labels=lab
        )
        adm.add_metric(m, self.admitted)
        yield adm
        rej = CounterMetricFamily(
            REJECTIONS, "Requests rejected by the Conductor, by reason.", labels=[*lab, "reason"]
        )
        for reason in sorted(set(REJECTION_REASONS) | set(self.rejected)):
            rej.add_metric([*m, reason], self.rejected[reason])
        yield rej
        tb = CounterMetricFamily(
            TRANSFER_BYTES, "KV bytes moved to where they are used, by path.", labels=[*lab, "path"]
        )
        ts = CounterMetricFamily(
            TRANSFER_SECONDS, "Seconds spent moving KV, by path.", labels=[*lab, "path"]
        )
        for path in sorted(self.transfer_bytes):
            tb.add_metric([*m, path], self.transfer_bytes[path])
            ts.add_metric([*m, path], self.transfer_seconds[path])
        bw = GaugeMetricFamily(
            TRANSFER_BANDWIDTH,
            "KV transfer bandwidth between hosts: the "
            "Conductor's estimate, else bytes/seconds so far.",
            labels=lab,
        )
        est = self.bandwidth_estimate
        if est is None:
            total_s = sum(self.transfer_seconds.values())
            est = sum(self.transfer_bytes.values()) / total_s if total_s > 0 else 0.0
        bw.add_metric(m, est)
        le = CounterMetricFamily(
            LEASE_EXPIRED,
            "Hand-off leases (blocks a decode worker had yet to fetch) that expired "
            "before they were released.",
            labels=lab,
        )
        le.add_metric(m, self.leases_expired)
        yield from (tb, ts, bw, le)


class MooncakeCollector(Collector):
    """A Prometheus collector over whatever state ``source()`` returns (None: nothing).

    The scheduler registers one in the global registry (which its ``/metrics`` serves)
    and points ``source`` at the live Conductor plugin's state.
    """

    def __init__(self, source: Callable[[], MetricsState | None]) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        state = self.source()
        if state is None:
            return []
        return list(state.families())


__all__ = [
    "HIT_SOURCES",
    "LATENCY_BUCKETS",
    "MONITOR_PLUGIN_NAME",
    "SHARED_PREFIX",
    "TIERS",
    "TOKEN_BUCKETS",
    "Histogram",
    "LookupRecord",
    "MetricsState",
    "MooncakeCollector",
    "RequestRecord",
    "WorkerLoad",
    "rejection_reason",
    "slowest_gaps_mean",
]
