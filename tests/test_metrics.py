"""``mooncake.metrics``: the metric state and its Prometheus rendering, without a cluster."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from mooncake.metrics import (
    LookupRecord,
    MetricsState,
    MooncakeCollector,
    RequestRecord,
    WorkerLoad,
    rejection_reason,
    slowest_gaps_mean,
)


def _render(state: MetricsState | None) -> str:
    reg = CollectorRegistry()
    reg.register(MooncakeCollector(lambda: state))
    return generate_latest(reg).decode()


def _value(text: str, sample: str) -> float:
    m = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", text, re.M)
    assert m, sample
    return float(m.group(1))


def test_tbt_is_mean_of_slowest_tenth():
    """20 gaps: the slowest 10% are the two largest."""
    gaps = [0.01] * 18 + [0.5, 0.3]
    assert slowest_gaps_mean(gaps) == 0.4
    assert slowest_gaps_mean([]) == 0.0


def test_rejection_reasons_are_bounded_labels():
    assert rejection_reason("estimated TTFT 3.20s > SLO 1s") == "ttft_slo"
    assert rejection_reason("estimated TBT 120ms > SLO 100ms") == "tbt_slo"
    assert rejection_reason("no KV memory on decode instance tcp://x") == "decode_kv_full"
    assert rejection_reason("no mooncake workers are ready") == "no_workers"
    assert rejection_reason("something new") == "other"


def test_request_histograms_render_in_vllm_style():
    """Two requests: TTFT histogram count/sum, ITL gets every gap, TBT one per request."""
    s = MetricsState("m")
    s.observe_request(
        RequestRecord(
            "a",
            ttft_s=0.2,
            e2e_s=1.0,
            queue_s=0.01,
            prefill_s=0.1,
            decode_s=0.8,
            itl_s=[0.05, 0.05, 0.3],
            prompt_tokens=10,
            generation_tokens=4,
        )
    )
    s.observe_request(
        RequestRecord("b", ttft_s=0.4, e2e_s=2.0, prompt_tokens=20, generation_tokens=1)
    )
    text = _render(s)
    assert _value(text, 'mooncake:time_to_first_token_seconds_count{model_name="m"}') == 2
    assert (
        abs(_value(text, 'mooncake:time_to_first_token_seconds_sum{model_name="m"}') - 0.6) < 1e-9
    )
    assert (
        _value(text, 'mooncake:time_to_first_token_seconds_bucket{le="0.25",model_name="m"}') == 1
    )
    assert _value(text, 'mooncake:inter_token_latency_seconds_count{model_name="m"}') == 3
    assert _value(text, 'mooncake:request_time_between_tokens_seconds_count{model_name="m"}') == 1
    assert _value(text, 'mooncake:request_decode_time_seconds_count{model_name="m"}') == 1


def test_prefix_cache_counters_by_source_and_share():
    """Token counters split by hit source; lookups by shared-prefix kind; hit rate."""
    s = MetricsState("m")
    s.observe_lookup(LookupRecord(100, {"device": 48, "remote": 16}, "none"))
    s.observe_lookup(LookupRecord(100, {"device": 0}, "below_block", 7))
    text = _render(s)
    assert _value(text, 'mooncake:prefix_cache_queries_total{model_name="m"}') == 200
    assert _value(text, 'mooncake:prefix_cache_hits_total{model_name="m",source="device"}') == 48
    assert _value(text, 'mooncake:prefix_cache_hits_total{model_name="m",source="remote"}') == 16
    assert _value(text, 'mooncake:prefix_cache_hits_total{model_name="m",source="ssd"}') == 0
    assert (
        _value(
            text, 'mooncake:prefix_cache_requests_total{model_name="m",shared_prefix="below_block"}'
        )
        == 1
    )
    assert (
        _value(text, 'mooncake:prefix_cache_shared_below_block_tokens_total{model_name="m"}') == 7
    )
    assert s.hit_rate() == 0.32


def test_workers_admissions_transfers_and_timeline():
    """Per-worker gauges per tier, admissions/rejections, transfer bandwidth, and the
    timeline's per-interval hit rate and rejection rate."""
    s = MetricsState("m", timeline_interval_s=1.0)
    s.set_worker(
        "w1",
        WorkerLoad(
            "prefill",
            running=2,
            waiting=1,
            kv_blocks={"device": (30, 120), "host": (0, 0)},
            cached_blocks=40,
        ),
    )
    s.tick(0.0)
    s.observe_admission(True)
    s.observe_admission(False, "estimated TTFT 9s > SLO 1s")
    s.observe_lookup(LookupRecord(10, {"device": 5}))
    s.observe_transfer(1000, 0.5, "tcp")
    s.tick(0.5)  # too soon: no point
    s.tick(2.0)
    text = _render(s)
    assert (
        _value(text, 'mooncake:num_requests_running{model_name="m",role="prefill",worker="w1"}')
        == 2
    )
    assert (
        _value(text, 'mooncake:kv_cache_usage_perc{model_name="m",tier="device",worker="w1"}')
        == 0.25
    )
    assert _value(text, 'mooncake:kv_cache_usage_perc{model_name="m",tier="host",worker="w1"}') == 0
    assert _value(text, 'mooncake:request_rejected_total{model_name="m",reason="ttft_slo"}') == 1
    assert _value(text, 'mooncake:request_admitted_total{model_name="m"}') == 1
    assert _value(text, 'mooncake:kv_transfer_bandwidth_bytes_per_second{model_name="m"}') == 2000
    assert _value(text, 'mooncake:kv_transfer_bytes_total{model_name="m",path="tcp"}') == 1000
    assert s.rates() == [(2.0, 0.5, 0.5)]


def test_collector_without_state_is_empty():
    """Before a Conductor exists the collector yields nothing (the scrape still works)."""
    assert "mooncake:" not in _render(None)
