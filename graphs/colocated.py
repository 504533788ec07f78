"""Colocated baseline (vLLM-style): the lookup, prefill and decode in one engine on one
worker, as one task (``tasks.generate`` does the lookup first)."""

from __future__ import annotations

from mooncake.request_ids import task_key
from mooncake.worker import tasks
from mooncake.worker.messages import PlacementInfo, RequestSpec

from .base import RequestGraph, TaskSpec


def build(spec: RequestSpec, placement: PlacementInfo) -> RequestGraph:
    gen_key = task_key("generate", spec.request_id)
    return RequestGraph(
        tasks=[TaskSpec(gen_key, tasks.generate, (spec, placement), placement.prefill)],
        output_key=gen_key,
    )
