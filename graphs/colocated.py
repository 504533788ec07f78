"""Colocated baseline (vLLM-style): lookup, then prefill and decode in one engine on one
worker."""

from __future__ import annotations

from mooncake.request_ids import task_key
from mooncake.worker import tasks
from mooncake.worker.messages import PlacementInfo, RequestSpec

from .base import KeyRef, RequestGraph, TaskSpec


def build(spec: RequestSpec, placement: PlacementInfo) -> RequestGraph:
    rid = spec.request_id
    lookup_key, gen_key = task_key("lookup", rid), task_key("generate", rid)
    return RequestGraph(
        tasks=[
            TaskSpec(lookup_key, tasks.lookup, (spec, placement, "generate"), placement.prefill),
            TaskSpec(gen_key, tasks.generate, (KeyRef(lookup_key),), placement.prefill),
        ],
        output_key=gen_key,
    )
