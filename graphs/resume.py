"""Resume: a request whose worker was lost continues on another decode worker from the
tokens it already generated. Only transfer -> decode, on the new decode worker: the
handle names the tokens so far (decode recomputes prompt + those tokens, its prefix
cache and the prefill worker's store permitting) and where the prompt's blocks may
still be."""

from __future__ import annotations

from mooncake.request_ids import Step, task_key
from mooncake.worker import tasks
from mooncake.worker.messages import KVHandle, PlacementInfo

from .base import KeyRef, RequestGraph, TaskSpec

STEPS: tuple[Step, ...] = ("transfer", "decode")


def build(handle: KVHandle, placement: PlacementInfo) -> RequestGraph:
    rid = handle.spec.request_id
    keys = {step: task_key(step, rid) for step in STEPS}
    return RequestGraph(
        tasks=[
            TaskSpec(keys["transfer"], tasks.transfer, (handle,), placement.decode),
            TaskSpec(keys["decode"], tasks.decode, (KeyRef(keys["transfer"]),), placement.decode),
        ],
        output_key=keys["decode"],
    )
