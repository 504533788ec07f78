"""Batch inference over Dask collections: a ``dask.bag`` of prompts or a
``dask.dataframe`` column, one input partition at a time.

The ``LLM.generate_partitions`` / ``generate_bag`` / ``generate_dataframe`` methods are
these functions; they need only the client's ``generate`` and its Dask ``Client`` (the
:class:`Generator` protocol), so they stay out of ``client.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mooncake.outputs import RequestOutput
from mooncake.sampling_params import SamplingParams

if TYPE_CHECKING:
    import dask.bag
    import dask.dataframe

Order = Literal["prefix", "input"]


class Generator(Protocol):
    client: Any

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
        max_retry_s: float = 600.0,
        order: Order = "prefix",
    ) -> list[RequestOutput]: ...


def generate_partitions(
    llm: Generator,
    bag: Any,
    sampling_params: SamplingParams | None = None,
    *,
    use_tqdm: bool = True,
    order: Order = "prefix",
) -> Iterator[list[RequestOutput]]:
    """Yield each partition's outputs (in its order) as soon as it is done; only one
    input partition is in this process at once."""
    from tqdm.auto import tqdm

    parts = bag.to_delayed()
    bar = tqdm(total=len(parts), desc="partitions", unit="part", disable=not use_tqdm)
    try:
        for part in parts:
            prompts = list(llm.client.compute(part).result())
            yield (
                llm.generate(prompts, sampling_params, use_tqdm=False, order=order)
                if prompts
                else []
            )
            bar.update(1)
    finally:
        bar.close()


def generate_bag(
    llm: Generator,
    bag: dask.bag.Bag,
    sampling_params: SamplingParams | None = None,
    *,
    use_tqdm: bool = True,
    order: Order = "prefix",
) -> dask.bag.Bag:
    """A bag of ``RequestOutput`` with the input's partitioning and order (the outputs are
    held in this process)."""
    import dask.bag as db
    from dask.delayed import delayed

    parts = [
        delayed(outs)
        for outs in generate_partitions(llm, bag, sampling_params, use_tqdm=use_tqdm, order=order)
    ]
    result: dask.bag.Bag = db.from_delayed(parts)
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
) -> dask.dataframe.DataFrame:
    """``df`` with the text generated for ``df[column]`` as ``output_column``, partition
    for partition (the outputs are held in this process). Raises ``ValueError`` for an
    unknown column."""
    import dask.dataframe as dd
    import pandas as pd
    from dask.delayed import delayed
    from tqdm.auto import tqdm

    if column not in df.columns:
        raise ValueError(f"column: {column!r} is not a column of the dataframe")
    parts: list[pd.DataFrame] = []
    bar = tqdm(total=df.npartitions, desc="partitions", unit="part", disable=not use_tqdm)
    try:
        for part in df.to_delayed():
            pdf: pd.DataFrame = llm.client.compute(part).result()
            prompts = [
                p if isinstance(p, str) else [int(t) for t in p] for p in pdf[column].tolist()
            ]
            outs = (
                llm.generate(prompts, sampling_params, use_tqdm=False, order=order)
                if prompts
                else []
            )
            parts.append(pdf.assign(**{output_column: [o.outputs[0].text for o in outs]}))
            bar.update(1)
    finally:
        bar.close()
    if not parts:
        empty: dask.dataframe.DataFrame = df.assign(**{output_column: ""})
        return empty
    divisions = df.divisions if df.known_divisions else None
    result: dask.dataframe.DataFrame = dd.from_delayed(
        [delayed(p) for p in parts], meta=parts[0].iloc[:0], divisions=divisions
    )
    return result


__all__ = ["Generator", "Order", "generate_bag", "generate_dataframe", "generate_partitions"]
