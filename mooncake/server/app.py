"""``create_app(config)``: the Starlette application of ``mooncake serve``.

Its lifespan owns the cluster client: it starts the embedded ``LocalCluster`` (or
connects to ``config.scheduler``) before the first request and closes it on shutdown.
Tests and embedders may pass a ``backend`` they own instead; the app then leaves it open.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mooncake.server import errors
from mooncake.server.auth import APIKeyMiddleware
from mooncake.server.backend import ServingBackend, build_backend
from mooncake.server.config import ServerConfig
from mooncake.server.metrics import ServerMetrics
from mooncake.server.openapi import openapi_schema
from mooncake.server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from mooncake.server.serving import OpenAIServing

log = logging.getLogger("mooncake.server")

Handler = Callable[[Request], Awaitable[Response]]


def _serving(request: Request) -> OpenAIServing:
    serving: OpenAIServing | None = getattr(request.app.state, "serving", None)
    if serving is None:
        raise errors.APIError(503, "the server is starting", "server_error")
    return serving


def _guarded(handler: Handler) -> Handler:
    """Turn APIError into its response and any other exception into a bare 500."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except errors.APIError as e:
            serving = getattr(request.app.state, "serving", None)
            if serving is not None and e.status != 429:
                serving.metrics.error(e.status)
            return e.response()
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            serving = getattr(request.app.state, "serving", None)
            if serving is not None:
                serving.metrics.error(500)
            return errors.internal().response()

    return run


def _request_id(
    request: Request, body: CompletionRequest | ChatCompletionRequest, prefix: str
) -> str:
    return body.request_id or request.headers.get("x-request-id") or f"{prefix}-{uuid.uuid4().hex}"


PARSE_INLINE_BYTES = 256 * 1024
"""Bodies up to this size are parsed on the event loop; larger ones on a worker thread."""


async def _read_body(request: Request) -> bytearray:
    """The request body, refused with 413 as soon as it is known to exceed the limit (from
    ``Content-Length``, else while it streams in). Gathered chunk by chunk: no step holds
    the event loop for long, however large the body."""
    limit: int = request.app.state.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise errors.too_large(limit)
        body += chunk
    return body


async def _parse(model: type[BaseModel], request: Request) -> BaseModel:
    raw = await _read_body(request)

    def parse() -> BaseModel:
        try:
            return model.model_validate_json(raw)
        except ValidationError as e:
            raise errors.from_validation(e) from None

    return parse() if len(raw) <= PARSE_INLINE_BYTES else await anyio.to_thread.run_sync(parse)


async def completions(request: Request) -> Response:
    serving = _serving(request)
    body = await _parse(CompletionRequest, request)
    assert isinstance(body, CompletionRequest)
    rid = _request_id(request, body, "cmpl")
    response = await serving.completions(body, rid, request)
    response.headers["X-Request-Id"] = rid
    return response


async def chat_completions(request: Request) -> Response:
    serving = _serving(request)
    body = await _parse(ChatCompletionRequest, request)
    assert isinstance(body, ChatCompletionRequest)
    rid = _request_id(request, body, "chatcmpl")
    response = await serving.chat(body, rid, request)
    response.headers["X-Request-Id"] = rid
    return response


async def models(request: Request) -> Response:
    serving = _serving(request)
    cards = [
        ModelCard(id=name, root=serving.backend.model_name, max_model_len=serving.max_model_len)
        for name in serving.served_model_names
    ]
    return JSONResponse(ModelList(data=cards).model_dump(mode="json"))


async def health(request: Request) -> Response:
    ready = getattr(request.app.state, "serving", None) is not None
    return Response(status_code=200 if ready else 503)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_schema())


async def metrics(request: Request) -> Response:
    serving = _serving(request)
    return Response(serving.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(
    config: ServerConfig | None = None, backend: ServingBackend | None = None
) -> Starlette:
    """The OpenAI-compatible app.

    Args:
        config: server options (model, cluster, API key, SLOs).
        backend: an already running client to serve from (left open at shutdown); by
            default the lifespan builds one from ``config`` and closes it at shutdown.
    Returns:
        A Starlette app to run with uvicorn.
    """
    config = config or ServerConfig()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = backend is None
        llm = await anyio.to_thread.run_sync(build_backend, config) if backend is None else backend
        try:
            serving = OpenAIServing(
                llm,
                ServerMetrics(llm.model_name),
                config.served_model_names,
                config.max_prompts_per_request,
                config.max_prompt_chars,
            )
            # No acceptable request is larger than the prompts it may carry, JSON-escaped.
            app.state.max_body_bytes = min(config.max_body_bytes, serving.max_request_bytes())
            app.state.serving = serving
            link = getattr(llm, "dashboard_link", None)
            page = getattr(llm, "mooncake_dashboard_link", None)
            log.info(
                "serving %s (max_model_len %d)%s",
                llm.model_name,
                llm.max_model_len,
                f"; dashboard {link}" if link else "",
            )
            if page:
                log.info(
                    "Mooncake dashboard page: %s (cluster metrics on the scheduler's /metrics)",
                    page,
                )
            yield
        finally:
            app.state.serving = None
            if owned:
                await anyio.to_thread.run_sync(llm.close)

    routes = [
        Route("/v1/completions", _guarded(completions), methods=["POST"]),
        Route("/v1/chat/completions", _guarded(chat_completions), methods=["POST"]),
        Route("/v1/models", _guarded(models), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", _guarded(metrics), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    middleware = [Middleware(APIKeyMiddleware, api_key=config.api_key)] if config.api_key else []

    async def not_found(request: Request, exc: Exception) -> Response:
        return errors.APIError(
            404, f"no route {request.method} {request.url.path}", "invalid_request_error"
        ).response()

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return errors.APIError(
            405,
            f"method {request.method} not allowed on {request.url.path}",
            "invalid_request_error",
        ).response()

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed},
    )
    app.state.max_body_bytes = config.max_body_bytes
    return app


__all__ = ["create_app"]
