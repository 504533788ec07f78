"""The batch side of ``mooncake.LLM``: ``generate`` (a list of prompts, prefix-aware
order, retries after rejections, requests moved off lost workers) and the Dask
collection methods (``generate_bag`` / ``generate_dataframe`` / ``generate_partitions``,
see ``mooncake.batch_dask``).

A mixin of :class:`mooncake.client.LLM`, which owns the state and the placement and
submission methods named below; it is kept apart because it is a concept of its own
(batches are synchronous and poll, streams are async and event-driven).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from distributed import Client, Future, as_completed, wait

from mooncake import batch_dask
from mooncake.batch import plan_batch
from mooncake.batch_dask import Order
from mooncake.client_common import (
    LIVENESS_INTERVAL_S,
    MOVE_DEADLINE_S,
    Rejected,
    Unavailable,
    WorkerLost,
)
from mooncake.conductor.messages import PlacementInfo
from mooncake.outputs import RequestOutput
from mooncake.request_ids import PREFILL_STEPS, next_attempt, task_key
from mooncake.sampling_params import SamplingParams, params_per_prompt
from mooncake.worker.messages import RequestSpec

if TYPE_CHECKING:
    import dask.bag
    import dask.dataframe

logger = logging.getLogger(__name__)


class BatchMixin:
    """``generate`` and the collection methods of :class:`mooncake.client.LLM`."""

    # What the batch methods use of the LLM (set by mooncake.client.LLM).
    client: Client
    info: dict[str, Any]
    moves: collections.Counter[str]
    _lock: threading.Lock
    _futures: dict[str, dict[str, Future[Any]]]

    if TYPE_CHECKING:

        def make_request(
            self,
            prompt: str | Sequence[int],
            params: SamplingParams | None = None,
            *,
            request_id: str | None = None,
            cache_salt: str | None = None,
            stream: bool = False,
        ) -> RequestSpec: ...

        def place(self, spec: RequestSpec) -> PlacementInfo: ...

        def submit(self, spec: RequestSpec, placement: PlacementInfo) -> Future[Any]: ...

        def place_many(
            self, specs: Sequence[RequestSpec]
        ) -> list[PlacementInfo | Rejected | Unavailable]: ...

        def submit_many(
            self, placed: Sequence[tuple[RequestSpec, PlacementInfo]]
        ) -> list[Future[Any]]: ...

        def abort_sync(self, request_id: str) -> None: ...

        def task_context(self) -> Any: ...

        def _live_workers_sync(self) -> set[str] | None: ...

        def _lost_worker(self, rid: str, live: set[str] | None) -> str | None: ...

        def _needs_move(self, rid: str, worker: str) -> bool: ...

    def _submit_with_retry(self, spec: RequestSpec, deadline: float) -> Future[Any]:
        while True:
            try:
                return self.submit(spec, self.place(spec))
            except Rejected as e:
                if time.monotonic() + e.retry_after > deadline:
                    raise
                time.sleep(max(0.01, e.retry_after))

    def _submit_all(
        self, specs: list[RequestSpec], deadline: float, submitted: list[str]
    ) -> list[Future[Any]]:
        """Place every request in one call to the Conductor and submit the graphs of
        those it placed in one message (one by one, each request waited for a placement
        round trip and the engines got a batch's requests spread over that time); one it
        rejected is retried on its own after the Conductor's hint. Returns each request's
        output future, in order; ``submitted`` gets the ids of those submitted."""
        answers = self.place_many(specs)
        placed = [(s, a) for s, a in zip(specs, answers) if isinstance(a, PlacementInfo)]
        futs = dict(zip((s.request_id for s, _ in placed), self.submit_many(placed)))
        submitted.extend(futs)  # aborted by the caller if this raises
        for a in answers:
            if isinstance(a, Unavailable):
                raise a
        out = []
        for spec, a in zip(specs, answers):
            if isinstance(a, Rejected):
                if time.monotonic() + a.retry_after > deadline:
                    raise a
                time.sleep(max(0.01, a.retry_after))
                futs[spec.request_id] = self._submit_with_retry(spec, deadline)
                submitted.append(spec.request_id)
            out.append(futs[spec.request_id])
        return out

    def _first_token_future(self, rid: str, final: Future[Any]) -> Future[Any]:
        """The future of the task that computes the request's prefill (its KV is cached
        when it is done)."""
        with self._lock:
            futures = self._futures.get(rid, {})
        for step in PREFILL_STEPS:
            f = futures.get(task_key(step, rid))
            if f is not None:
                return f
        return final

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        max_retry_s: float = 600.0,
        order: Order = "prefix",
    ) -> list[RequestOutput]:
        """Run every prompt; results in input order.

        Args:
            prompts: text or token ids per prompt.
            sampling_params: one for all, or one per prompt.
            use_tqdm: show a progress bar (``tqdm.auto``: a widget in notebooks).
            max_retry_s: rejected requests are retried after the Conductor's hint, for
                at most this long.
            order: ``prefix`` (default): group prompts by shared leading blocks, run one
                per group first and the rest of the group once its prefill has cached the
                shared prefix (``mooncake.batch.plan_batch``); ``input``: submit in input
                order, all at once.
        """
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc="generate", unit="req")
        try:
            return self.generate_batch(
                prompts, sampling_params, max_retry_s=max_retry_s, order=order, bar=bar
            )
        finally:
            if bar is not None:
                bar.close()

    def generate_batch(
        self,
        prompts: Sequence[str | Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        max_retry_s: float = 600.0,
        order: Order = "prefix",
        bar: Any = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[RequestOutput]:
        """``generate`` without its own progress bar, for callers that run it inside a
        task (``mooncake.batch_dask``): ``bar`` (anything with ``update(n)``) counts
        finished requests; ``cancelled``, asked about every second, stops the batch
        (its requests aborted, ``concurrent.futures.CancelledError`` raised). A bad prompt raises
        ``ValueError`` naming its index before anything is submitted."""
        if order not in ("prefix", "input"):
            raise ValueError(f"order: must be 'prefix' or 'input', got {order!r}")
        plist = params_per_prompt(sampling_params, len(prompts))
        specs = []
        for i, (p, sp) in enumerate(zip(prompts, plist)):
            try:
                specs.append(self.make_request(p, sp))
            except ValueError as e:
                raise ValueError(f"prompts[{i}]: {e}") from None
        submitted: list[str] = []
        try:
            return self._run_batch(specs, order, max_retry_s, bar, submitted, cancelled)
        except BaseException:
            # Nothing of a failed or cancelled batch keeps running in the engines.
            with self._lock:
                running = [rid for rid in submitted if rid in self._futures]
            for rid in running:
                self.abort_sync(rid)
            raise

    def _run_batch(
        self,
        specs: list[RequestSpec],
        order: Order,
        max_retry_s: float,
        bar: Any,
        submitted: list[str],
        cancelled: Callable[[], bool] | None,
    ) -> list[RequestOutput]:
        deadline = time.monotonic() + max_retry_s
        futures: dict[Future[Any], int] = {}
        if order == "prefix":
            plan = plan_batch([s.prompt_token_ids for s in specs], int(self.info["block_size"]))
            warm: list[Future[Any]] = []
            for i in plan.warm:
                out_fut = self._submit_with_retry(specs[i], deadline)
                submitted.append(specs[i].request_id)
                futures[out_fut] = i
                warm.append(self._first_token_future(specs[i].request_id, out_fut))
            while warm:
                try:
                    wait(warm, timeout=LIVENESS_INTERVAL_S)
                    break
                except TimeoutError:
                    if cancelled is not None and cancelled():
                        raise concurrent.futures.CancelledError("the batch was cancelled") from None
                    # A warm-up on a worker that left: the loop below moves it.
                    live = self._live_workers_sync()
                    if any(self._lost_worker(specs[i].request_id, live) for i in plan.warm):
                        break
            if warm:
                # Let the prefill workers' next report (every 50 ms) put the warmed blocks
                # into the Conductor's index before the rest are placed.
                time.sleep(0.1)
            rest = [i for g in plan.groups for i in g.rest] + list(plan.singles)
        else:
            rest = list(range(len(specs)))
        for i, fut in zip(rest, self._submit_all([specs[i] for i in rest], deadline, submitted)):
            futures[fut] = i
        results: list[RequestOutput | None] = [None] * len(specs)
        attempts = {i: specs[i] for i in futures.values()}
        pending = dict(futures)
        ac = as_completed(list(futures))
        checked = time.monotonic()
        while pending:
            with ac.thread_condition:
                if not ac.has_ready():
                    ac.thread_condition.wait(timeout=LIVENESS_INTERVAL_S)
            # An attempt given up after its worker left is no longer pending.
            ready = [f for f in ac.next_batch(block=False) if f in pending]
            # Every output that is ready in one gather: one round trip through the
            # scheduler for the lot, not one each (raises the first failed task's error,
            # as each future's ``result()`` did).
            outs: list[RequestOutput] = self.client.gather(ready) if ready else []
            for fut, out in zip(ready, outs):
                i = pending.pop(fut)
                out.request_id = specs[i].request_id
                out.metrics.arrival_time = specs[i].arrival_time
                if out.prompt is None:
                    out.prompt = specs[i].prompt  # engines see token ids only
                results[i] = out
                if bar is not None:
                    bar.update(1)
            if time.monotonic() - checked < LIVENESS_INTERVAL_S:
                continue
            checked = time.monotonic()
            if cancelled is not None and cancelled():
                raise concurrent.futures.CancelledError("the batch was cancelled")
            # Liveness: a request on a worker that left runs again elsewhere, from scratch
            # (nothing was delivered yet; its seed makes the output the same).
            live = self._live_workers_sync()
            for fut, i in list(pending.items()):
                rid = attempts[i].request_id
                lost = self._lost_worker(rid, live)
                if lost is None or not self._needs_move(rid, lost):
                    continue
                self.abort_sync(rid)
                self.moves[specs[i].request_id] += 1
                attempts[i] = dataclasses.replace(
                    specs[i], request_id=next_attempt(specs[i].request_id, rid)
                )
                logger.warning(
                    "request %s: worker %s lost; placed again", specs[i].request_id, lost
                )
                try:
                    new = self._submit_with_retry(attempts[i], time.monotonic() + MOVE_DEADLINE_S)
                except (Unavailable, Rejected) as e:
                    raise WorkerLost(
                        f"request {specs[i].request_id}: worker {lost} was "
                        f"lost and no worker can take the request over ({e})"
                    ) from None
                submitted.append(attempts[i].request_id)
                del pending[fut]
                pending[new] = i
                ac.add(new)
        return [r for r in results if r is not None]

    def generate_partitions(
        self,
        bag: Any,
        sampling_params: SamplingParams | None = None,
        *,
        use_tqdm: bool = True,
        order: Order = "prefix",
    ) -> Iterator[list[RequestOutput]]:
        """``generate`` over a ``dask.bag.Bag`` of prompts, partition by partition on the
        cluster (a few at once); yields each partition's outputs in partition order, so
        callers can write them out as they come."""
        return batch_dask.generate_partitions(
            self, bag, sampling_params, use_tqdm=use_tqdm, order=order
        )

    def generate_bag(
        self,
        bag: dask.bag.Bag,
        sampling_params: SamplingParams | None = None,
        *,
        use_tqdm: bool = True,
        order: Order = "prefix",
    ) -> dask.bag.Bag:
        """``generate`` over a ``dask.bag.Bag`` of prompts (text or token ids): a lazy bag
        of ``RequestOutput`` with the same partitioning and order, each partition run by
        a task on the cluster that submits its requests through the Conductor
        (``mooncake.batch_dask``). Nothing runs until it is computed or persisted."""
        return batch_dask.generate_bag(self, bag, sampling_params, use_tqdm=use_tqdm, order=order)

    def generate_dataframe(
        self,
        df: dask.dataframe.DataFrame,
        column: str,
        sampling_params: SamplingParams | None = None,
        *,
        output_column: str = "generated_text",
        use_tqdm: bool = True,
        order: Order = "prefix",
    ) -> dask.dataframe.DataFrame:
        """``generate`` over the prompts in ``df[column]``: ``df`` with the generated text
        as ``output_column``, lazily, partition for partition on the cluster (see
        ``generate_bag``). Raises ``ValueError`` for an unknown column."""
        return batch_dask.generate_dataframe(
            self,
            df,
            column,
            sampling_params,
            output_column=output_column,
            use_tqdm=use_tqdm,
            order=order,
        )


__all__ = ["BatchMixin"]
