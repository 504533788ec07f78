"""The HTTP edge against hostile input: body size, prompt length before tokenizing, prompts
per request, strict types, and an event loop that stays free meanwhile."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.server.conftest import ServerThread

pytestmark = pytest.mark.cluster

MB = 1024 * 1024


def _error(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_body_over_the_limit_is_413(server: ServerThread) -> None:
    """A 20 MB body (default limit 8 MiB) is answered 413 in OpenAI's error shape, whether
    its size is declared up front or only seen while it streams in (chunked)."""
    body = json.dumps({"prompt": "x" * (20 * MB), "max_tokens": 1}).encode()
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413 and _error(r)["code"] == "request_too_large"

    def chunks():  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(body), MB):
            yield body[i : i + MB]

    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413 and _error(r)["type"] == "invalid_request_error"


def test_health_stays_fast_while_a_20mb_body_is_handled(server: ServerThread) -> None:
    """While a 20 MB body is refused (413: more than any acceptable request needs) and a
    text prompt too long for the context is refused from its character count without
    being tokenized (400), ``/health`` answers every poll within 100 ms: reading, parsing
    and tokenizing never hold the event loop."""
    serving = server.server.config.app.state.serving
    long_text = "hello world " * (2 * serving.max_prompt_chars // 12 + 1)
    bodies = [
        (json.dumps({"prompt": "hello world " * (20 * MB // 12), "max_tokens": 1}).encode(), 413),
        (json.dumps({"prompt": long_text, "max_tokens": 1}).encode(), 400),
    ]
    for body, status in bodies:
        result: dict[str, httpx.Response] = {}

        def post(body: bytes = body, result: dict[str, httpx.Response] = result) -> None:
            result["r"] = httpx.post(
                f"{server.base_url}/v1/completions",
                content=body,
                headers={"content-type": "application/json"},
                timeout=120,
            )

        worst = 0.0
        with httpx.Client(base_url=server.base_url, timeout=5) as health:
            health.get("/health")  # connection open before the big request starts
            t = threading.Thread(target=post)
            t0 = time.monotonic()
            t.start()
            while t.is_alive():
                h0 = time.monotonic()
                assert health.get("/health").status_code == 200
                worst = max(worst, time.monotonic() - h0)
                time.sleep(0.005)
            t.join()
        r = result["r"]
        assert r.status_code == status, r.text
        if status == 400:
            err = _error(r)
            assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
        assert worst < 0.1, (
            f"/health took {worst * 1e3:.0f} ms while a {len(body)}-byte body was handled"
        )
        assert time.monotonic() - t0 < 20


def test_long_chat_is_refused_before_templating(server: ServerThread) -> None:
    """Chat messages whose characters alone exceed what the context can hold: 400 naming
    ``messages``, at once."""
    serving = server.server.config.app.state.serving
    body = {
        "messages": [{"role": "user", "content": "y" * (serving.max_prompt_chars + 1)}],
        "max_tokens": 1,
    }
    t0 = time.monotonic()
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and _error(r)["param"] == "messages"
    assert time.monotonic() - t0 < 5


def test_prompts_per_request_are_capped(server: ServerThread) -> None:
    """200 prompts in one request is a 400 naming ``prompt`` (default cap 32); 2 are fine."""
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"prompt": ["hello"] * 200, "max_tokens": 1},
        timeout=60,
    )
    assert (
        r.status_code == 400
        and _error(r)["param"] == "prompt"
        and "32" in str(_error(r)["message"])
    )
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"prompt": ["hello"] * 2, "max_tokens": 1},
        timeout=60,
    )
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


@pytest.mark.parametrize("ids", [[2**40], [-1], [5, 2**63 - 1]])
@pytest.mark.parametrize("echo", [True, False])
def test_token_ids_outside_the_vocabulary_are_a_400(
    server: ServerThread, ids: list[int], echo: bool
) -> None:
    """Token-id prompts with ids no vocabulary has (a regression the fuzz suite found:
    with ``echo`` the server's own decode raised, a 500): 400 naming ``prompt``."""
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"prompt": ids, "max_tokens": 2, "echo": echo},
        timeout=60,
    )
    assert r.status_code == 400 and str(_error(r)["param"]).startswith("prompt"), r.text


@pytest.mark.parametrize(
    ("route", "extra", "param"),
    [
        ("completions", {"seed": "42"}, "seed"),
        ("completions", {"max_tokens": 1.0}, "max_tokens"),
        ("completions", {"max_tokens": True}, "max_tokens"),
        ("completions", {"temperature": True}, "temperature"),
        ("completions", {"n": "1"}, "n"),
        ("completions", {"stream": "yes"}, "stream"),
        ("completions", {"seed": 2**70}, "seed"),
        ("chat/completions", {"max_tokens": 2.0}, "max_tokens"),
        ("chat/completions", {"temperature": False}, "temperature"),
    ],
)
def test_types_are_strict_where_openai_is(
    server: ServerThread, route: str, extra: dict[str, object], param: str
) -> None:
    """Strings, floats and booleans are not coerced into integers or numbers: 400 naming
    the field (an integer temperature is still a number)."""
    base: dict[str, object] = (
        {"prompt": "hi"}
        if route == "completions"
        else {"messages": [{"role": "user", "content": "hi"}]}
    )
    r = httpx.post(
        f"{server.base_url}/v1/{route}", json={**base, "max_tokens": 1, **extra}, timeout=60
    )
    assert r.status_code == 400, r.text
    assert _error(r)["param"] == param
    r = httpx.post(
        f"{server.base_url}/v1/{route}",
        json={**base, "max_tokens": 1, "temperature": 0, "seed": 42},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def test_openapi_schema_is_published(server: ServerThread) -> None:
    """``/openapi.json`` is an OpenAPI 3.1 document whose request schemas are the ones the
    server validates with (strict integer ``max_tokens``)."""
    doc = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1") and "/v1/completions" in doc["paths"]
    props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
    assert any(t.get("type") == "integer" for t in props["max_tokens"]["anyOf"])
