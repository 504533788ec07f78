"""Notebook-style batch inference on a LocalCluster: prefix-aware ordering serves the
shared template from the cache, results come back in input order, and the dask.bag and
dask.dataframe paths give the same outputs as ``generate``."""

from __future__ import annotations

import random

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


def test_bag_and_dataframe_paths(llm):
    """A 3-partition bag and a 3-partition dataframe column give generate's texts, in
    order; the dataframe gains the output column."""
    import dask.bag as db
    import dask.dataframe as dd
    import pandas as pd

    prompts = _few_shot(9, seed=3)
    expected = [o.token_ids for o in llm.generate(prompts, PARAMS, use_tqdm=False)]
    bag = db.from_sequence(prompts, npartitions=3)
    outs = llm.generate_bag(bag, PARAMS, use_tqdm=False).compute(scheduler="sync")
    assert [o.token_ids for o in outs] == expected
    import dask

    pdf = pd.DataFrame({"id": range(9), "prompt": prompts})
    with dask.config.set({"dataframe.convert-string": False}):  # token-id lists, not text
        df = dd.from_pandas(pdf, npartitions=3)
    result = llm.generate_dataframe(
        df, "prompt", PARAMS, output_column="answer", use_tqdm=False
    ).compute(scheduler="sync")
    assert list(result["id"]) == list(range(9))
    assert list(result["answer"]) == [o.text for o in outs]
    with pytest.raises(ValueError, match="column"):
        llm.generate_dataframe(df, "nope", PARAMS)
