"""/v1/completions through a real uvicorn server with the official openai client."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from mooncake.sampling_params import SamplingParams

PROMPT_IDS = [256, *range(40, 72)]


@pytest.fixture(scope="module")
def engine_greedy(chat_checkpoint: Path) -> list[int]:
    """The in-process engine's greedy continuation of PROMPT_IDS (the reference)."""
    from mooncake.config import EngineConfig
    from mooncake.engine import LLMEngine

    engine = LLMEngine(EngineConfig(model=str(chat_checkpoint)))
    (out,) = engine.generate(
        [PROMPT_IDS], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    )
    return list(out.outputs[0].token_ids)


def test_greedy_output_equals_engine(
    client: openai.OpenAI, model_name: str, engine_greedy: list[int]
) -> None:
    """Greedy tokens served over HTTP equal the engine's own greedy
    tokens for the same prompt ids."""
    resp = client.completions.create(
        model=model_name,
        prompt=PROMPT_IDS,
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    choice = resp.choices[0]
    assert choice.model_extra is not None
    assert choice.model_extra["token_ids"] == engine_greedy
    assert choice.finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens == len(PROMPT_IDS)


def test_text_prompt_and_stream_agree(client: openai.OpenAI, model_name: str) -> None:
    """A text prompt, streamed with include_usage, yields the same text and usage as the
    non-streamed request; the stream ends with a usage-only chunk."""
    kwargs = dict(
        model=model_name,
        prompt="The Mooncake paper says",
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    full = client.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)  # type: ignore[call-overload]
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens  # type: ignore[union-attr]


def test_list_of_prompts(client: openai.OpenAI, model_name: str) -> None:
    """A list of text prompts gives one choice per prompt, indexed in order, usage summed."""
    resp = client.completions.create(
        model=model_name,
        prompt=["Hello", "Bonjour tout"],
        max_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage is not None and resp.usage.completion_tokens == 6
    assert (
        resp.usage.prompt_tokens == len("Hello") + 1 + len("Bonjour tout") + 1
    )  # byte tokens + BOS


def test_list_of_prompts_streamed(client: openai.OpenAI, model_name: str) -> None:
    """Two streamed prompts: chunks of both indexes arrive and each ends with a finish reason."""
    chunks = list(
        client.completions.create(
            model=model_name,
            prompt=[[256, 50, 51], [256, 60, 61, 62]],
            max_tokens=4,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    finished = {
        c.choices[0].index: c.choices[0].finish_reason
        for c in chunks
        if c.choices and c.choices[0].finish_reason
    }
    assert finished == {0: "length", 1: "length"}


def test_cached_tokens_on_repeated_prefix(client: openai.OpenAI, model_name: str) -> None:
    """The second request sharing a 64-token prefix reports cached prompt tokens in usage."""
    prefix = [256, *range(100, 163)]
    first = client.completions.create(
        model=model_name, prompt=[*prefix, 10, 11], max_tokens=2, temperature=0
    )
    second = client.completions.create(
        model=model_name, prompt=[*prefix, 12, 13], max_tokens=2, temperature=0
    )
    assert first.usage is not None and second.usage is not None
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens >= 48


def test_logprobs(client: openai.OpenAI, model_name: str) -> None:
    """logprobs=2 returns, per generated token, its logprob and the 2 most likely tokens; greedy
    picks the most likely one."""
    resp = client.completions.create(
        model=model_name,
        prompt=PROMPT_IDS,
        max_tokens=4,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    assert len(lp.token_logprobs) == 4 and len(lp.top_logprobs) == 4
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen is not None and chosen <= 0.0
        # Distinct byte tokens may print alike ("\ufffd"), merging keys: compare values only.
        assert top and max(top.values()) >= chosen - 1e-5


def test_stop_finish_reason(client: openai.OpenAI, model_name: str) -> None:
    """A stop token id ends the request with finish_reason 'stop' and the id as stop_reason."""
    ref = client.completions.create(
        model=model_name,
        prompt=PROMPT_IDS,
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    ids = ref.choices[0].model_extra["token_ids"]  # type: ignore[index]
    resp = client.completions.create(
        model=model_name,
        prompt=PROMPT_IDS,
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True, "stop_token_ids": [ids[2]]},
    )
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == ids.index(ids[2]) + 1


def test_models_and_health(server: object, client: openai.OpenAI, model_name: str) -> None:
    """/v1/models lists the served model; /health answers 200."""
    assert [m.id for m in client.models.list()] == [model_name]
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # type: ignore[attr-defined]
