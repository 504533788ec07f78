"""Serving benchmark: an HTTP load generator for OpenAI-compatible servers.

No torch, no cluster: it only speaks HTTP, so it measures ``mooncake serve`` and
``vllm serve`` the same way.
"""

from mooncake.bench.datasets import (
    DATASETS,
    SampleRequest,
    mooncake_trace_dataset,
    prefix_repetition_dataset,
    random_dataset,
)
from mooncake.bench.metrics import format_table, parse_goodput, summarize
from mooncake.bench.request import RequestResult
from mooncake.bench.runner import LoadConfig, arrival_times, run_load

__all__ = [
    "DATASETS",
    "LoadConfig",
    "RequestResult",
    "SampleRequest",
    "arrival_times",
    "format_table",
    "mooncake_trace_dataset",
    "parse_goodput",
    "prefix_repetition_dataset",
    "random_dataset",
    "run_load",
    "summarize",
]
