"""--api-key: every route but /health needs 'Authorization: Bearer KEY'."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from mooncake.server import ServerConfig, create_app
from tests.server.conftest import ServerThread

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def keyed(llm: object) -> Iterator[ServerThread]:
    with ServerThread(create_app(ServerConfig(api_key=KEY), backend=llm)) as s:  # type: ignore[arg-type]
        yield s


def test_key_required(keyed: ServerThread, model_name: str) -> None:
    """Without the key or with a wrong one: 401 in OpenAI's shape; with it: served."""
    for key in ("wrong", ""):
        oc = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key=key or "missing", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            oc.completions.create(model=model_name, prompt="hi", max_tokens=1)
        assert info.value.response.json()["error"]["code"] == "invalid_api_key"
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(keyed.base_url + path).status_code == 401
    r = httpx.post(
        f"{keyed.base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    oc = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key=KEY, max_retries=0)
    assert oc.completions.create(model=model_name, prompt="hi", max_tokens=1).choices
    assert (
        httpx.get(
            f"{keyed.base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}
        ).status_code
        == 200
    )


def test_health_is_open(keyed: ServerThread) -> None:
    """/health answers without a key (load balancers probe it)."""
    assert httpx.get(f"{keyed.base_url}/health").status_code == 200


def test_no_key_configured_is_open(server: ServerThread) -> None:
    """Without --api-key any (or no) Authorization header is accepted."""
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 200
    assert (
        httpx.get(
            f"{server.base_url}/v1/models", headers={"Authorization": "Bearer whatever"}
        ).status_code
        == 200
    )
