"""/v1/chat/completions: the model's chat template, streaming and not."""

from __future__ import annotations

import openai

from mooncake.tokenizer import Tokenizer

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


def test_chat_uses_template(
    client: openai.OpenAI, model_name: str, chat_checkpoint: object
) -> None:
    """The prompt is the rendered chat template (prompt_tokens equals its token count) and the
    reply is an assistant message."""
    resp = client.chat.completions.create(
        model=model_name,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    tok = Tokenizer(chat_checkpoint)  # type: ignore[arg-type]
    rendered = tok.apply_chat_template(MESSAGES)
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(tok.encode(rendered, add_special_tokens=False))
    assert resp.usage.completion_tokens == 5
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "length"
    assert resp.object == "chat.completion"


def test_chat_stream_matches(client: openai.OpenAI, model_name: str) -> None:
    """Streamed chat deltas concatenate to the non-streamed content; the first delta carries the
    role, the last chunk the usage."""
    kwargs = dict(
        model=model_name,
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    full = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(
        client.chat.completions.create(  # type: ignore[call-overload]
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens_details is not None


def test_chat_logprobs(client: openai.OpenAI, model_name: str) -> None:
    """logprobs with top_logprobs=3: one entry per token, each with 3 alternatives."""
    resp = client.chat.completions.create(
        model=model_name,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 3
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
