"""Errors come back in OpenAI's shape with the right status, through the official client."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.server.conftest import ScriptedBackend, ServerThread, metric


def _error(e: openai.APIStatusError) -> dict[str, object]:
    body = e.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"logprobs": 50}, "logprobs"),
        ({"extra_body": {"top_k": -3}}, "top_k"),
        ({"extra_body": {"echo": True}, "logprobs": 1}, "echo"),
    ],
)
def test_validation_error_names_field(
    client: openai.OpenAI, model_name: str, extra: dict[str, object], param: str
) -> None:
    """A bad field value is a 400 whose error names the field."""
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model_name, prompt="hi", **extra)  # type: ignore[call-overload]
    err = _error(info.value)
    assert err["param"] == param and param in str(err["message"])
    assert err["type"] == "invalid_request_error"


def test_malformed_bodies(server: ServerThread) -> None:
    """Missing prompt, wrong types, empty messages and invalid JSON
    are 400s naming what is wrong."""
    url = f"{server.base_url}/v1"
    cases = [
        ("completions", {"model": None}, "prompt"),
        ("completions", {"prompt": [-1, 2]}, "prompt.0"),
        ("chat/completions", {"messages": []}, "messages"),
        ("chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ]
    for route, body, param in cases:
        r = httpx.post(f"{url}/{route}", json=body)
        assert r.status_code == 400, (route, body, r.text)
        assert r.json()["error"]["param"] == param
    r = httpx.post(
        f"{url}/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_404(client: openai.OpenAI) -> None:
    """A model the server does not serve is a 404 with code model_not_found."""
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-5", prompt="hi")
    err = _error(info.value)
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_context_too_long_400(client: openai.OpenAI, model_name: str, llm: object) -> None:
    """A prompt (or prompt + max_tokens) beyond the context limit is a 400, code
    context_length_exceeded, streaming or not."""
    limit = llm.max_model_len  # type: ignore[attr-defined]
    for kwargs in (
        {"prompt": [65] * limit},
        {"prompt": [65] * 10, "max_tokens": limit},
        {"prompt": [65] * limit, "stream": True},
    ):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=model_name, **kwargs)  # type: ignore[call-overload]
        err = _error(info.value)
        assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "x" * limit}]
        )
    assert _error(info.value)["param"] == "messages"


def test_rejection_429_with_retry_after(
    scripted: tuple[ServerThread, ScriptedBackend], model_name: str
) -> None:
    """An admission rejection is a 429 with Retry-After (whole seconds), streaming or not, and is
    counted by reason on /metrics."""
    server, _ = scripted
    oc = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as info:
            oc.completions.create(
                model=model_name, prompt=[ScriptedBackend.REJECT, 1, 2], stream=stream
            )
        assert info.value.response.headers["retry-after"] == "3"
        assert _error(info.value)["type"] == "rate_limit_error"
    assert metric(server.base_url, "mooncake:request_rejected_total", reason="ttft_slo") == 2


def test_internal_error_500_hides_details(
    scripted: tuple[ServerThread, ScriptedBackend], model_name: str
) -> None:
    """An unexpected failure is a 500 whose body says nothing about the internals."""
    server, _ = scripted
    oc = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        oc.completions.create(model=model_name, prompt=[ScriptedBackend.FAIL, 1])
    err = _error(info.value)
    assert err["message"] == "internal server error"
    assert "secret" not in info.value.response.text and "tcp://" not in info.value.response.text
    # The server keeps serving.
    assert oc.completions.create(model=model_name, prompt=[256, 1], max_tokens=1).choices


@pytest.mark.cluster
def test_real_admission_rejection_and_owned_cluster(chat_checkpoint: object) -> None:
    """An app built from a config alone starts its own cluster in the lifespan (and closes it
    on shutdown); with a TTFT SLO no prefill can meet, the Conductor rejects at admission and
    the client sees 429 with Retry-After."""
    from mooncake.server import ServerConfig, create_app

    config = ServerConfig(model=str(chat_checkpoint), ttft_slo_s=1e-6, admission="early")
    with ServerThread(create_app(config)) as server:
        oc = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            oc.completions.create(
                model=Path(str(chat_checkpoint)).name, prompt=[256, *range(30, 90)], max_tokens=2
            )
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert "TTFT" in _error(info.value)["message"]  # type: ignore[operator]
        assert metric(server.base_url, "mooncake:request_rejected_total", reason="ttft_slo") == 1
