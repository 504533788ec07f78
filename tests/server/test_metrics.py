"""/metrics: Prometheus text with vLLM-style names under the mooncake: prefix."""

from __future__ import annotations

import openai

from tests.server.conftest import ServerThread, metric


def test_metrics_count_requests(
    server: ServerThread, client: openai.OpenAI, model_name: str
) -> None:
    """After a request, token counters, success by finish reason and latency histograms moved."""
    before = metric(server.base_url, "mooncake:generation_tokens_total")
    ok_before = metric(server.base_url, "mooncake:request_success_total", finished_reason="length")
    client.completions.create(
        model=model_name,
        prompt=[256, 7, 8, 9],
        max_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert metric(server.base_url, "mooncake:generation_tokens_total") == before + 3
    assert (
        metric(server.base_url, "mooncake:request_success_total", finished_reason="length")
        == ok_before + 1
    )
    for name in (
        "mooncake:prompt_tokens_total",
        "mooncake:time_to_first_token_seconds_count",
        "mooncake:e2e_request_latency_seconds_count",
        "mooncake:inter_token_latency_seconds_count",
        "mooncake:request_prompt_tokens_count",
    ):
        assert metric(server.base_url, name) > 0, name
    assert metric(server.base_url, "mooncake:num_requests_running") == 0
