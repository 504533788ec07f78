"""Notebook-style batch inference on a LocalCluster: prefix-aware ordering serves the
shared template from the cache, results come back in input order, and the dask.bag and
dask.dataframe paths give the same outputs as ``generate``."""

from __future__ import annotations

import random
import time

import pytest

import mooncake
from mooncake.config import EngineConfig

pytestmark = pytest.mark.cluster

PARAMS = mooncake.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _few_shot(n: int, seed: int = 0) -> list[list[int]]:
    """Three 64-token templates (4 blocks each) followed by short questions, shuffled."""
    rng = random.Random(seed)
    templates = [[rng.randrange(300) for _ in range(64)] for _ in range(3)]
    prompts = [
        templates[i % 3] + [rng.randrange(300) for _ in range(rng.randrange(3, 12))]
        for i in range(n)
    ]
    rng.shuffle(prompts)
    return prompts


@pytest.fixture(scope="module")
def llm(tiny_llama):
    with mooncake.LLM(
        str(tiny_llama), engine_config=EngineConfig(num_blocks=256), dashboard_address=None
    ) as llm:
        yield llm


def test_prefix_order_reuses_templates_in_input_order(llm):
    """30 prompts over 3 templates: with prefix ordering only the 3 warm-ups compute
    their template (27 x 64 cached tokens); outputs are in input order (each output's
    prompt is the input's)."""
    prompts = _few_shot(30, seed=1)
    outs = llm.generate(prompts, PARAMS, use_tqdm=False, order="prefix")
    assert [o.prompt_token_ids for o in outs] == prompts
    assert sum(o.num_cached_tokens for o in outs) == 27 * 64
    assert sorted(o.num_cached_tokens for o in outs)[:3] == [0, 0, 0]


def test_input_order_gives_the_same_tokens(llm):
    """Ordering changes what is cached, never the greedy output."""
    prompts = _few_shot(12, seed=2)
    a = llm.generate(prompts, PARAMS, use_tqdm=False, order="prefix")
    b = llm.generate(prompts, PARAMS, use_tqdm=False, order="input")
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


def _windows(llm, outs, partitions):
    """Per partition, [first placement, last finish] of its requests as the Conductor saw
    them (one clock: the scheduler's)."""
    hist = {h["request_id"]: h for h in llm.history([o.request_id for o in outs])}
    size = len(outs) // partitions
    spans = []
    for p in range(partitions):
        rows = [hist[o.request_id] for o in outs[p * size : (p + 1) * size]]
        spans.append((min(r["placed_at"] for r in rows), max(r["finished_at"] for r in rows)))
    return spans


def test_bag_is_lazy_runs_partitions_concurrently_and_equals_generate(llm):
    """A 4-partition bag: building it submits nothing (the Conductor places no request);
    computed, it gives generate's greedy tokens in input order, and the partitions ran
    at the same time (some partition's requests were placed before another's had all
    finished)."""
    import dask.bag as db

    prompts = _few_shot(12, seed=3)
    expected = [o.token_ids for o in llm.generate(prompts, PARAMS, use_tqdm=False)]
    placed = llm.stats()["placements"]
    bag = llm.generate_bag(db.from_sequence(prompts, npartitions=4), PARAMS)
    assert isinstance(bag, db.Bag) and bag.npartitions == 4
    time.sleep(0.3)
    assert llm.stats()["placements"] == placed  # lazy: nothing ran
    outs = bag.compute()
    assert llm.stats()["placements"] == placed + 12
    assert [o.token_ids for o in outs] == expected
    assert [o.prompt_token_ids for o in outs] == prompts
    spans = _windows(llm, outs, 4)
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :]), (
        spans
    )


def test_dataframe_column_is_lazy_and_equals_generate(llm):
    """A 3-partition dataframe: lazy until computed, then ``df`` plus the answer column in
    the input's order, equal to generate's greedy texts; an unknown column is a
    ValueError at once."""
    import dask
    import dask.dataframe as dd
    import pandas as pd

    prompts = _few_shot(9, seed=4)
    expected = [o.text for o in llm.generate(prompts, PARAMS, use_tqdm=False)]
    pdf = pd.DataFrame({"id": range(9), "prompt": prompts})
    with dask.config.set({"dataframe.convert-string": False}):  # token-id lists, not text
        df = dd.from_pandas(pdf, npartitions=3)
    placed = llm.stats()["placements"]
    answered = llm.generate_dataframe(df, "prompt", PARAMS, output_column="answer")
    assert list(answered.columns) == ["id", "prompt", "answer"]
    assert llm.stats()["placements"] == placed
    result = answered.compute()
    assert list(result["id"]) == list(range(9))
    assert list(result["answer"]) == expected
    with pytest.raises(ValueError, match="column"):
        llm.generate_dataframe(df, "nope", PARAMS)


def test_bad_row_names_its_partition_and_row(llm):
    """A token id outside the vocabulary in row 1 of partition 1 fails the compute with
    a ValueError naming the partition, the row and the problem; a row that is not a
    prompt at all (None) likewise."""
    import dask.bag as db

    prompts = _few_shot(4, seed=5)
    prompts[3] = [1, 2, 10**6]
    with pytest.raises(ValueError, match=r"partition 1: prompts\[1\]: prompt: token ids"):
        llm.generate_bag(db.from_sequence(prompts, npartitions=2), PARAMS).compute()
    prompts[3] = None
    with pytest.raises(ValueError, match="partition 1, row 1: must be text or a list"):
        llm.generate_bag(db.from_sequence(prompts, npartitions=2), PARAMS).compute()


def test_generate_partitions_streams_in_order(llm):
    """generate_partitions yields each partition's outputs in partition order; the bag
    computed with the synchronous scheduler (partitions run in this process, through
    the default client) gives the same."""
    import dask.bag as db

    prompts = _few_shot(6, seed=6)
    expected = [o.token_ids for o in llm.generate(prompts, PARAMS, use_tqdm=False)]
    parts = list(
        llm.generate_partitions(db.from_sequence(prompts, npartitions=3), PARAMS, use_tqdm=False)
    )
    assert [len(p) for p in parts] == [2, 2, 2]
    assert [o.token_ids for p in parts for o in p] == expected
    bag = llm.generate_bag(db.from_sequence(prompts, npartitions=2), PARAMS)
    assert [o.token_ids for o in bag.compute(scheduler="sync")] == expected


def test_cancelling_the_collection_aborts_its_requests(llm):
    """A persisted bag of 24 long generations (more than the KV pool holds at once),
    cancelled while its requests decode: the partition tasks see the cancellation and
    abort their requests, so the decode worker is idle again within seconds and not
    every request ran to its end. Before the cancel the requests keep running (a
    running partition is not taken for cancelled)."""
    import dask.bag as db

    n = 24
    long = mooncake.SamplingParams(temperature=0.0, max_tokens=900, ignore_eos=True)
    prompts = _few_shot(n, seed=7)
    t0 = time.time()
    placed = llm.stats()["placements"]
    persisted = llm.generate_bag(db.from_sequence(prompts, npartitions=2), long).persist()
    deadline = time.monotonic() + 30
    while llm.stats()["placements"] < placed + n:
        assert time.monotonic() < deadline, "the partitions never placed their requests"
        time.sleep(0.05)
    time.sleep(1.5)  # past the partitions' first cancellation check: still running
    assert sum(llm.stats()["decode_running"].values()) > 0
    llm.client.cancel(persisted)
    deadline = time.monotonic() + 15
    while sum(llm.stats()["decode_running"].values()):
        assert time.monotonic() < deadline, "requests kept decoding after the cancel"
        time.sleep(0.1)
    history = llm.history()
    finished = [h for h in history if h.get("placed_at", 0) >= t0 and h["state"] == "memory"]
    assert len(finished) < n
