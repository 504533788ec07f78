"""Disaggregated mode: lookup + prefill on the prefill worker (one task), transfer ->
decode on the decode worker. Only small handles travel between the tasks, never KV
tensors."""

from __future__ import annotations

from mooncake.request_ids import Step, task_key
from mooncake.worker import tasks
from mooncake.worker.messages import PlacementInfo, RequestSpec

from .base import KeyRef, RequestGraph, TaskSpec

STEPS: tuple[Step, ...] = ("prefill", "transfer", "decode")


def build(spec: RequestSpec, placement: PlacementInfo) -> RequestGraph:
    rid = spec.request_id
    keys = {step: task_key(step, rid) for step in STEPS}
    return RequestGraph(
        tasks=[
            TaskSpec(keys["prefill"], tasks.prefill_request, (spec, placement), placement.prefill),
            TaskSpec(
                keys["transfer"], tasks.transfer, (KeyRef(keys["prefill"]),), placement.decode
            ),
            TaskSpec(keys["decode"], tasks.decode, (KeyRef(keys["transfer"]),), placement.decode),
        ],
        output_key=keys["decode"],
    )
