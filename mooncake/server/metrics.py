"""Prometheus metrics of one server, named in vLLM's style with a ``mooncake:`` prefix
(the names are shared with the scheduler's metrics, in ``mooncake/metrics.py``).

Each app owns its ``CollectorRegistry`` so that several apps in one process (tests)
never collide on the global registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mooncake import metrics as names
from mooncake.metrics import rejection_reason

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class ServerMetrics:
    """Counters, gauges and histograms the request handlers update."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, labels = self.registry, ["model_name"]

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, [*labels, *extra], registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        self.model_name = model_name
        self.num_requests_running = Gauge(
            names.RUNNING, "Requests in flight through this server.", labels, registry=r
        ).labels(model_name)
        self.prompt_tokens = counter(
            names.PROMPT_TOKENS, "Prompt tokens of finished requests."
        ).labels(model_name)
        self.cached_prompt_tokens = counter(
            names.PROMPT_TOKENS_CACHED, "Prompt tokens served from the KV cache (prefix hits)."
        ).labels(model_name)
        self.generation_tokens = counter(names.GENERATION_TOKENS, "Generated tokens.").labels(
            model_name
        )
        self.request_success = counter(
            names.REQUEST_SUCCESS, "Finished requests, by finish reason.", ("finished_reason",)
        )
        self.request_rejected = counter(
            names.REJECTIONS, "Requests refused by admission control (429), by reason.", ("reason",)
        )
        self.request_errors = counter(
            names.REQUEST_ERRORS, "Requests answered with an error, by HTTP status.", ("status",)
        )
        self.ttft = histogram(names.TTFT, "Time to first token.", _LATENCY_BUCKETS).labels(
            model_name
        )
        self.itl = histogram(
            names.ITL, "Time between streamed outputs of one request.", _LATENCY_BUCKETS
        ).labels(model_name)
        self.e2e = histogram(names.E2E, "Arrival to last token.", _LATENCY_BUCKETS).labels(
            model_name
        )
        self.request_prompt_tokens = histogram(
            names.REQUEST_PROMPT_TOKENS, "Prompt tokens per request.", _TOKEN_BUCKETS
        ).labels(model_name)
        self.request_generation_tokens = histogram(
            names.REQUEST_GENERATION_TOKENS, "Generated tokens per request.", _TOKEN_BUCKETS
        ).labels(model_name)

    def finished(self, reason: str) -> None:
        self.request_success.labels(self.model_name, reason).inc()

    def rejected(self, reason: str) -> None:
        # The Conductor's message carries numbers; the label is its bounded category.
        self.request_rejected.labels(self.model_name, rejection_reason(reason)).inc()

    def error(self, status: int) -> None:
        self.request_errors.labels(self.model_name, str(status)).inc()

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


__all__ = ["ServerMetrics"]
