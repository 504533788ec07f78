"""``GET /openapi.json``: the server's OpenAPI 3.1 document, built from the same pydantic
models that validate the requests (so the schema cannot drift from what is accepted)."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mooncake.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _errors(*statuses: int) -> dict[str, Any]:
    what = {
        400: "invalid request",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "body too large",
        429: "rejected by admission control (see Retry-After)",
        503: "starting",
    }
    return {
        str(s): {
            "description": what[s],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for s in statuses
    }


def _post(summary: str, request: type[BaseModel], response: type[BaseModel]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(request)}},
            },
            "responses": {
                "200": {
                    "description": "the result (``stream: true``: server-sent events of chunks)",
                    "content": {
                        "application/json": {"schema": _ref(response)},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **_errors(400, 401, 404, 413, 429, 503),
            },
        }
    }


@cache
def openapi_schema() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    models: list[type[BaseModel]] = [
        CompletionRequest,
        CompletionResponse,
        ChatCompletionRequest,
        ChatCompletionResponse,
        ModelList,
    ]
    _, defs = models_json_schema(
        [(m, "validation" if m.__name__.endswith("Request") else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    schemas = {**defs.get("$defs", {}), "Error": _ERROR}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mooncake OpenAI-compatible API", "version": "1"},
        "paths": {
            "/v1/completions": _post("Create a completion", CompletionRequest, CompletionResponse),
            "/v1/chat/completions": _post(
                "Create a chat completion", ChatCompletionRequest, ChatCompletionResponse
            ),
            "/v1/models": {
                "get": {
                    "summary": "List served models",
                    "responses": {
                        "200": {
                            "description": "models",
                            "content": {"application/json": {"schema": _ref(ModelList)}},
                        },
                        **_errors(401),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness (200 when serving, 503 while starting)",
                    "responses": {"200": {"description": "serving"}, **_errors(503)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(401),
                    },
                }
            },
        },
        "components": {"schemas": schemas},
    }


__all__ = ["openapi_schema"]
