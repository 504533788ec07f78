"""Prometheus metrics of one server, named in vLLM's style with a ``mooncake:`` prefix.

Names, buckets and rejection labels come from :mod:`mooncake.metrics`, which the
scheduler's ``/metrics`` uses too. Each app owns its ``CollectorRegistry`` so that
several apps in one process (tests) never collide on the global registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mooncake import metrics as m

_LATENCY_BUCKETS = m.LATENCY_BUCKETS
_TOKEN_BUCKETS = m.TOKEN_BUCKETS


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
            m.RUNNING, "Requests in flight through this server.", labels, registry=r
        ).labels(model_name)
        self.prompt_tokens = counter("mooncake:prompt_tokens", "Prompt tokens of finished requests.").labels(model_name)
        self.cached_prompt_tokens = counter(
            "mooncake:prompt_tokens_cached", "Prompt tokens served from the KV cache (prefix hits)."
        ).labels(model_name)
        self.generation_tokens = counter("mooncake:generation_tokens", "Generated tokens.").labels(model_name)
        self.request_success = counter(
            "mooncake:request_success", "Finished requests, by finish reason.", ("finished_reason",)
        )
        self.request_rejected = counter(m.REJECTIONS, "Requests refused by admission control (429), by reason.", ("reason",))
        self.request_errors = counter("mooncake:request_errors", "Requests answered with an error, by HTTP status.", ("status",))
        self.ttft = histogram(m.TTFT, "Time to first token.", _LATENCY_BUCKETS).labels(model_name)
        self.itl = histogram(
            m.ITL, "Time between streamed outputs of one request.", _LATENCY_BUCKETS
        ).labels(model_name)
        self.e2e = histogram(m.E2E, "Arrival to last token.", _LATENCY_BUCKETS).labels(model_name)
        self.request_prompt_tokens = histogram(
            "mooncake:request_prompt_tokens", "Prompt tokens per request.", _TOKEN_BUCKETS
        ).labels(model_name)
        self.request_generation_tokens = histogram(
            "mooncake:request_generation_tokens", "Generated tokens per request.", _TOKEN_BUCKETS
        ).labels(model_name)

    def finished(self, reason: str) -> None:
        self.request_success.labels(self.model_name, reason).inc()

    def rejected(self, reason: str) -> None:
        """Count a rejection under a bounded label (``ttft_slo``, ``tbt_slo``, ...): the
        Conductor's message carries numbers."""
        self.request_rejected.labels(self.model_name, m.rejection_reason(reason)).inc()

    def error(self, status: int) -> None:
        self.request_errors.labels(self.model_name, str(status)).inc()

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


__all__ = ["ServerMetrics"]
