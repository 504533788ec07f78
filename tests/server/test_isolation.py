"""One request with extreme sampling parameters never fails the requests batched with it
(through a real uvicorn server, 1 prefill + 1 decode worker, the official client)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize(
    "extreme", [{"temperature": 1e-300}, {"temperature": 1.0, "top_p": 1e-300}]
)
def test_extreme_sampling_beside_greedy(
    client: openai.OpenAI, model_name: str, extreme: dict[str, float]
) -> None:
    """8 greedy requests sent together with one ``temperature=1e-300`` (or
    ``top_p=1e-300``) request: all 9 succeed and the greedy ones return exactly what they
    return alone."""
    prompts = [[256, *range(60 + 7 * i, 75 + 7 * i)] for i in range(8)]

    def complete(prompt: list[int], **kw: Any) -> list[int]:
        resp = client.completions.create(
            model=model_name,
            prompt=prompt,
            max_tokens=16,
            extra_body={"ignore_eos": True, "return_token_ids": True},
            **kw,
        )
        extra = resp.choices[0].model_extra
        assert extra is not None
        return list(extra["token_ids"])

    alone = [complete(p, temperature=0) for p in prompts]
    with ThreadPoolExecutor(9) as pool:
        greedy = [pool.submit(complete, p, temperature=0) for p in prompts]
        odd = pool.submit(complete, [256, 5, 6, 7], seed=1, **extreme)
        assert [f.result(timeout=120) for f in greedy] == alone
        assert len(odd.result(timeout=120)) == 16
