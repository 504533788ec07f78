"""Fuzzing the HTTP API from its own ``/openapi.json``: at least 2,000 generated requests
against a real server (real cluster behind it), never a 5xx, the server alive after.

Requests come from the published request schemas (``from_schema`` below: the JSON Schema
subset pydantic emits, turned into hypothesis strategies), kept cheap when valid (short
strings and lists, at most 4 new tokens), plus the same requests with one field replaced
by arbitrary JSON, non-object JSON and raw bytes. They are sent 8 at a time."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.conftest import ServerThread

pytestmark = pytest.mark.cluster

BATCH = 8
EXAMPLES = 260  # x BATCH = 2,080 requests
MAX_NEW_TOKENS = 4


def from_schema(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under ``node`` (the keywords pydantic's request schemas use); strings
    and lists kept short."""
    if "$ref" in node:
        return st.deferred(lambda: from_schema(defs[node["$ref"].rsplit("/", 1)[1]], defs))
    if "anyOf" in node:
        return st.one_of(*(from_schema(n, defs) for n in node["anyOf"]))
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        lo = node.get(
            "minimum", node["exclusiveMinimum"] + 1 if "exclusiveMinimum" in node else None
        )
        hi = node.get(
            "maximum", node["exclusiveMaximum"] - 1 if "exclusiveMaximum" in node else None
        )
        return st.integers(lo, hi)
    if kind == "number":
        return st.floats(
            node.get("minimum", node.get("exclusiveMinimum")),
            node.get("maximum", node.get("exclusiveMaximum")),
            allow_nan=False,
            allow_infinity=False,
            exclude_min="exclusiveMinimum" in node,
            exclude_max="exclusiveMaximum" in node,
        )
    if kind == "string":
        return st.text(
            min_size=node.get("minLength", 0), max_size=min(node.get("maxLength", 24), 24)
        )
    if kind == "array":
        lo = node.get("minItems", 0)
        return st.lists(
            from_schema(node.get("items", {}), defs),
            min_size=lo,
            max_size=max(lo, min(node.get("maxItems", 3), 3)),
        )
    if kind == "object" and "properties" not in node:
        values = (
            from_schema(node["additionalProperties"], defs)
            if isinstance(node.get("additionalProperties"), dict)
            else JSON
        )
        return st.dictionaries(
            st.text(max_size=6), values, max_size=min(node.get("maxProperties", 2), 2)
        )
    if kind == "object":
        required = set(node.get("required", ()))
        props = node["properties"]
        return st.fixed_dictionaries(
            {k: from_schema(v, defs) for k, v in props.items() if k in required},
            optional={k: from_schema(v, defs) for k, v in props.items() if k not in required},
        )
    return JSON


def _cap_tokens(body: dict[str, Any]) -> dict[str, Any]:
    for k in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(k), int) and not isinstance(body.get(k), bool):
            body[k] = min(body[k], MAX_NEW_TOKENS)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_NEW_TOKENS
    return body


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _requests(doc: dict[str, Any]) -> st.SearchStrategy[tuple[str, bytes]]:
    routes = {
        "/v1/completions": "CompletionRequest",
        "/v1/chat/completions": "ChatCompletionRequest",
    }
    per_route = []
    for path, name in routes.items():
        defs = doc["components"]["schemas"]
        valid = from_schema(defs[name], defs).map(_cap_tokens)
        fields = sorted(doc["components"]["schemas"][name]["properties"])
        mutated = st.tuples(valid, st.sampled_from(fields), JSON).map(
            lambda t: {**t[0], t[1]: t[2]}
        )
        body = st.one_of(
            valid.map(json.dumps),
            mutated.map(json.dumps),
            JSON.map(json.dumps),
            st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
        )
        per_route.append(
            st.tuples(st.just(path), body.map(lambda s: s.encode("utf-8", "surrogatepass")))
        )
    return st.one_of(*per_route)


def test_generated_requests_never_get_a_5xx(server: ServerThread) -> None:
    """2,080 generated requests: every answer is below 500 (a valid request 200, anything
    else 4xx in OpenAI's error shape), and the server still serves after."""
    base = server.base_url
    doc = httpx.get(f"{base}/openapi.json", timeout=10).json()
    statuses: dict[int, int] = {}
    bad: list[tuple[str, bytes, int, str]] = []
    http = httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=BATCH))
    pool = ThreadPoolExecutor(BATCH)

    def send(req: tuple[str, bytes]) -> None:
        path, body = req
        with http.stream(
            "POST", path, content=body, headers={"content-type": "application/json"}
        ) as r:
            text = r.read().decode("utf-8", "replace")
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            bad.append((path, body[:1000], r.status_code, text[:300]))
        elif r.status_code >= 400:
            err = json.loads(text)["error"]
            assert {"message", "type"} <= set(err), text

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.lists(_requests(doc), min_size=BATCH, max_size=BATCH))
    def run(batch: list[tuple[str, bytes]]) -> None:
        list(pool.map(send, batch))

    try:
        run()
    finally:
        pool.shutdown()
        http.close()
    assert not bad, bad[:5]
    assert sum(statuses.values()) >= 2000, statuses
    assert statuses.get(200, 0) > 100, statuses  # valid requests were among them
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
