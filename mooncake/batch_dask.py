"""Batch inference as a Dask collection operation: a ``dask.bag`` of prompts or a
``dask.dataframe`` column in, a lazy collection of outputs out.

``generate_bag`` / ``generate_dataframe`` only build a graph (``map_partitions``);
nothing runs until the result is computed or persisted. Each partition is then one task
on a worker of the cluster: it attaches an ``LLM`` to that worker's Dask client
(:class:`TaskContext`, shipped in the graph) and runs the partition's prompts through
the Conductor exactly as ``LLM.generate`` does in the client process: the same
placement, prefix-aware ordering inside the partition, retries after a rejection,
requests moved off a lost worker (``WorkerLost`` when none can take them). The task
secedes from the worker's thread pool while it waits, so many partitions are in flight
at once and the Conductor sees all their requests. Inputs and outputs stay on the
cluster; only what is computed comes back.

The ``LLM.generate_partitions`` / ``generate_bag`` / ``generate_dataframe`` methods are
these functions; they need from the ``LLM`` only its Dask client and the picklable
context of its ``task_context()`` (the :class:`Generator` protocol), so they stay out of
``client.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mooncake.outputs import RequestOutput
from mooncake.sampling_params import SamplingParams

if TYPE_CHECKING:
    import dask.bag
    import dask.dataframe

Order = Literal["prefix", "input"]

PARTITIONS_IN_FLIGHT = 4
"""How many partitions ``generate_partitions`` keeps computing ahead of the one it yields."""


class Batch(Protocol):
    """What a partition task runs: ``LLM.generate_batch`` (an ``LLM`` attached to the
    worker's client)."""

    def generate_batch(
        self,
        prompts: Sequence[str | Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        max_retry_s: float = 600.0,
        order: Order = "prefix",
        bar: Any = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[RequestOutput]: ...


class Context(Protocol):
    """Picklable; travels in the graph (``mooncake.client.TaskContext``)."""

    def attach(self, client: Any) -> Batch: ...


class Generator(Protocol):
    client: Any

    def task_context(self) -> Context: ...


def _row(prompt: Any, partition: int, row: int) -> str | list[int]:
    """A row as a prompt (text or token ids), or ``ValueError`` naming where it is."""
    if isinstance(prompt, str):
        return prompt
    try:
        return [int(t) for t in prompt]
    except (TypeError, ValueError):
        raise ValueError(
            f"prompt: partition {partition}, row {row}: must be text or a list of token "
            f"ids, got {type(prompt).__name__} {prompt!r:.60}"
        ) from None


@contextlib.contextmanager
def _task_client() -> Iterator[tuple[Any, Callable[[], bool]]]:
    """The Dask client to submit from, and whether this task was cancelled.

    On a worker: the worker's client, with the task seceded from the thread pool while
    it waits (a partition waiting on its requests must not hold a thread the engines'
    tasks need, and other partitions then start). Off a worker (``scheduler="sync"``
    or the threaded scheduler in the client process): the default client, never
    cancelled."""
    from distributed import get_client, get_worker, worker_client

    try:
        worker = get_worker()
    except ValueError:
        yield get_client(), lambda: False
        return
    key = worker.get_current_task()

    def cancelled() -> bool:
        # A running task the scheduler released (its collection was cancelled or
        # forgotten) is "cancelled" on the worker; its result would be thrown away.
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")

    with worker_client() as client:
        yield client, cancelled


def _run(
    prompts: list[str | list[int]],
    ctx: Context,
    params: SamplingParams | None,
    order: Order,
    max_retry_s: float,
    partition: int,
) -> list[RequestOutput]:
    if not prompts:
        return []
    with _task_client() as (client, cancelled):
        llm = ctx.attach(client)
        try:
            return llm.generate_batch(
                prompts, params, max_retry_s=max_retry_s, order=order, cancelled=cancelled
            )
        except ValueError as e:
            raise ValueError(f"partition {partition}: {e}") from None


def _bag_partition(
    rows: Sequence[Any],
    index: Sequence[int],
    *,
    ctx: Context,
    params: SamplingParams | None,
    order: Order,
    max_retry_s: float,
) -> list[RequestOutput]:
    (p,) = index
    return _run([_row(r, p, i) for i, r in enumerate(rows)], ctx, params, order, max_retry_s, p)


def _frame_partition(
    pdf: Any,
    *,
    ctx: Context,
    column: str,
    output_column: str,
    dtype: Any,
    params: SamplingParams | None,
    order: Order,
    max_retry_s: float,
    partition_info: dict[str, Any] | None = None,
) -> Any:
    import pandas as pd

    p = int(partition_info["number"]) if partition_info else 0
    prompts = [_row(r, p, i) for i, r in enumerate(pdf[column].tolist())]
    outs = _run(prompts, ctx, params, order, max_retry_s, p)
    texts = pd.Series([o.outputs[0].text for o in outs], index=pdf.index, dtype=dtype)
    return pdf.assign(**{output_column: texts})


def generate_bag(
    llm: Generator,
    bag: dask.bag.Bag,
    sampling_params: SamplingParams | None = None,
    *,
    use_tqdm: bool = True,
    order: Order = "prefix",
    max_retry_s: float = 600.0,
) -> dask.bag.Bag:
    """A lazy bag of ``RequestOutput`` with the input's partitioning and order: one task
    per partition, run on the cluster when the bag is computed. ``use_tqdm`` is unused
    (nothing runs here; watch ``distributed.progress`` or the dashboard)."""
    import dask.bag as db

    if order not in ("prefix", "input"):
        raise ValueError(f"order: must be 'prefix' or 'input', got {order!r}")
    index = db.range(bag.npartitions, npartitions=bag.npartitions)
    result: dask.bag.Bag = bag.map_partitions(
        _bag_partition,
        index,
        ctx=llm.task_context(),
        params=sampling_params,
        order=order,
        max_retry_s=max_retry_s,
    )
    return result


def generate_dataframe(
    llm: Generator,
    df: dask.dataframe.DataFrame,
    column: str,
    sampling_params: SamplingParams | None = None,
    *,
    output_column: str = "generated_text",
    use_tqdm: bool = True,
    order: Order = "prefix",
    max_retry_s: float = 600.0,
) -> dask.dataframe.DataFrame:
    """``df`` with the text generated for ``df[column]`` as ``output_column``, lazily,
    partition for partition (one task per partition, run on the cluster). Raises
    ``ValueError`` for an unknown column. ``use_tqdm`` is unused (see ``generate_bag``)."""
    if column not in df.columns:
        raise ValueError(f"column: {column!r} is not a column of the dataframe")
    if order not in ("prefix", "input"):
        raise ValueError(f"order: must be 'prefix' or 'input', got {order!r}")
    meta = df._meta.assign(**{output_column: df._meta[column].astype(str)})
    result: dask.dataframe.DataFrame = df.map_partitions(
        _frame_partition,
        ctx=llm.task_context(),
        column=column,
        output_column=output_column,
        dtype=meta[output_column].dtype,
        params=sampling_params,
        order=order,
        max_retry_s=max_retry_s,
        meta=meta,
    )
    return result


def generate_partitions(
    llm: Generator,
    bag: Any,
    sampling_params: SamplingParams | None = None,
    *,
    use_tqdm: bool = True,
    order: Order = "prefix",
) -> Iterator[list[RequestOutput]]:
    """Yield each partition's outputs, in partition order, as soon as it and those
    before it are done; at most ``PARTITIONS_IN_FLIGHT`` partitions run (and are held
    here) at once, so callers can write them out as they come."""
    from tqdm.auto import tqdm

    parts = generate_bag(llm, bag, sampling_params, order=order).to_delayed()
    bar = tqdm(total=len(parts), desc="partitions", unit="part", disable=not use_tqdm)
    running: list[Any] = []
    try:
        for part in parts:
            running.append(llm.client.compute(part))
            if len(running) >= PARTITIONS_IN_FLIGHT:
                yield list(running.pop(0).result())
                bar.update(1)
        while running:
            yield list(running.pop(0).result())
            bar.update(1)
    finally:
        if running:
            llm.client.cancel(running)
        bar.close()


__all__ = ["Generator", "Order", "generate_bag", "generate_dataframe", "generate_partitions"]
