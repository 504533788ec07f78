"""Completions and chat completions: validated request in, backend stream, OpenAI body out.

Every request is turned into token ids here (so the context-length check and the chat
template are the server's business) and handed to the backend's ``stream``. A text is
measured in characters before it is tokenized (a text too long to fit the context in any
tokenization is refused without tokenizing it), and tokenizing runs on a worker thread,
never on the event loop. The first
output is awaited before any byte is sent, so that a bad prompt or an admission
rejection is an HTTP status (400, 429 with ``Retry-After``) even for ``stream: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mooncake.client import Rejected, Unavailable, WorkerLost
from mooncake.outputs import RequestOutput
from mooncake.sampling_params import SamplingParams
from mooncake.server import errors
from mooncake.server.backend import ServingBackend
from mooncake.server.metrics import ServerMetrics
from mooncake.server.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatResponseMessage,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    PromptTokensDetails,
    TopLogprob,
    Usage,
    now,
)
from mooncake.server.sse import DONE, EventStreamResponse, event
from mooncake.tokenizer import IncrementalDetokenizer, Tokenizer

log = logging.getLogger("mooncake.server")
T = TypeVar("T")


@dataclass
class Delta:
    """What one backend output adds to the previous one."""

    text: str
    token_ids: list[int]
    logprobs: list[dict[int, float]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestStream:
    """One backend request: its first output already received, then deltas."""

    agen: AsyncIterator[RequestOutput]
    request_id: str
    metrics: ServerMetrics
    arrival: float
    first: RequestOutput
    detok: IncrementalDetokenizer | None = None
    """Streams text from the token ids (None: use the backend's text)."""
    holdback: int = 0
    """Characters kept back while streaming so a stop string is never sent (longest - 1)."""
    last: RequestOutput | None = None
    _pending: str = ""
    _sent_tokens: int = 0
    _sent_text: str = ""
    _last_time: float | None = None
    _done: bool = False
    _closed: bool = field(default=False, repr=False)

    def _delta(self, out: RequestOutput) -> Delta | None:
        c = out.outputs[0]
        new_ids = c.token_ids[self._sent_tokens :]
        text = self._text(out, new_ids)
        if not new_ids and not text and not out.finished:
            return None
        t = time.perf_counter()
        if new_ids:
            if self._last_time is None:
                self.metrics.ttft.observe(t - self.arrival)
            else:
                self.metrics.itl.observe(t - self._last_time)
            self._last_time = t
        lps = c.logprobs[self._sent_tokens : len(c.token_ids)] if c.logprobs is not None else None
        self._sent_tokens = len(c.token_ids)
        self._sent_text += text
        self.last = out
        if out.finished:
            self._finish(out, t)
        return Delta(
            text, list(new_ids), lps, c.finish_reason if out.finished else None, c.stop_reason
        )

    def _text(self, out: RequestOutput, new_ids: list[int]) -> str:
        """The text to send now. While streaming, the server decodes the token ids itself
        (so the text is a function of the ids alone, whichever worker produced them); the
        backend's final text is authoritative (stop strings cut it) and only what it adds
        beyond the text already sent goes out at the end."""
        final = out.outputs[0].text
        if self.detok is None or out.finished:
            return final[len(self._sent_text) :] if final.startswith(self._sent_text) else ""
        self._pending += self.detok.add(new_ids)
        cut = len(self._pending) - self.holdback
        if cut <= 0:
            return ""
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return text

    def _finish(self, out: RequestOutput, t: float) -> None:
        self._done = True
        c = out.outputs[0]
        self.metrics.e2e.observe(t - self.arrival)
        self.metrics.prompt_tokens.inc(len(out.prompt_token_ids))
        self.metrics.cached_prompt_tokens.inc(out.num_cached_tokens)
        self.metrics.generation_tokens.inc(len(c.token_ids))
        self.metrics.request_prompt_tokens.observe(len(out.prompt_token_ids))
        self.metrics.request_generation_tokens.observe(len(c.token_ids))
        self.metrics.finished(c.finish_reason or "stop")

    async def deltas(self) -> AsyncIterator[Delta]:
        """Deltas from the first output on; the last one carries the finish reason."""
        d = self._delta(self.first)
        if d is not None:
            yield d
        if self.first.finished:
            return
        try:
            async for out in self.agen:
                d = self._delta(out)
                if d is not None:
                    yield d
                if out.finished:
                    return
        except Unavailable as e:
            log.warning("request %s: %s", self.request_id, e)
            raise errors.unavailable(isinstance(e, WorkerLost)) from None
        raise RuntimeError(f"request {self.request_id}: stream ended before the request finished")

    async def collect(self) -> RequestOutput:
        """Run to the end; the final output."""
        async for _ in self.deltas():
            pass
        assert self.last is not None
        return self.last

    async def close(self) -> None:
        """Stop the request if still running (client gone); frees its blocks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            aclose = getattr(self.agen, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            if not self._done:
                self.metrics.finished("abort")


def _usage(outs: list[RequestOutput]) -> Usage:
    prompt = sum(len(o.prompt_token_ids) for o in outs)
    completion = sum(len(o.outputs[0].token_ids) for o in outs)
    cached = sum(o.num_cached_tokens for o in outs)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


class OpenAIServing:
    """The handlers behind ``/v1/completions`` and ``/v1/chat/completions``.

    Args:
        backend: the cluster client.
        metrics: where request metrics go.
        served_model_names: names accepted in ``model`` (the first is echoed back).
    """

    def __init__(
        self,
        backend: ServingBackend,
        metrics: ServerMetrics,
        served_model_names: tuple[str, ...],
        max_prompts_per_request: int = 32,
        max_prompt_chars: int | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.served_model_names = served_model_names or (backend.model_name,)
        self.tokenizer: Tokenizer | None = backend.tokenizer
        self.max_model_len = backend.max_model_len
        self.max_prompts_per_request = max_prompts_per_request
        if max_prompt_chars is None:
            # Any text longer than this is more than max_model_len tokens; the factor 2
            # covers normalizers that shorten a text (composing accents, stripping).
            per_token = self.tokenizer.max_token_chars if self.tokenizer is not None else 1
            max_prompt_chars = 2 * self.max_model_len * per_token
        self.max_prompt_chars = max_prompt_chars

    def max_request_bytes(self) -> int:
        """The largest body an acceptable request can need: every prompt at the character
        limit, each character escaped as JSON's longest form (12 bytes: a surrogate pair of
        ``\\uXXXX``), every token-id prompt at the context length, plus 1 MiB for the rest."""
        per_prompt = max(12 * self.max_prompt_chars, 12 * self.max_model_len)
        return self.max_prompts_per_request * per_prompt + 1024**2

    # -- request preparation ---------------------------------------------------------
    def check_model(self, model: str | None) -> str:
        if model is not None and model not in self.served_model_names:
            raise errors.model_not_found(model)
        return self.served_model_names[0]

    def _token_str(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _check_chars(self, n: int, param: str) -> None:
        if n > self.max_prompt_chars:
            raise errors.bad_request(
                f"{param}: {n} characters is more than this model's maximum context length of "
                f"{self.max_model_len} tokens can hold (at most "
                f"{self.max_prompt_chars} characters are accepted)",
                param,
                "context_length_exceeded",
            )

    async def _encode(self, text: str, add_special_tokens: bool, param: str) -> list[int]:
        """Token ids of ``text``: its length checked first, tokenized off the event loop."""
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise errors.bad_request(f"{param}: this model has no tokenizer; send token ids", param)
        self._check_chars(len(text), param)
        return await anyio.to_thread.run_sync(
            lambda: tokenizer.encode(text, add_special_tokens=add_special_tokens)
        )

    def _decode_prompt(self, ids: list[int]) -> str:
        """A token-id prompt's text (for ``echo``); ids the tokenizer cannot hold (a
        huge or negative id) are the caller's error, before the cluster sees them."""
        if self.tokenizer is None:
            return ""
        try:
            return self.tokenizer.decode(ids)
        except (OverflowError, ValueError, TypeError) as e:
            raise errors.bad_request(
                f"prompt: token ids the tokenizer cannot decode ({e})", "prompt"
            ) from None

    def _check_length(self, ids: list[int], params: SamplingParams, param: str) -> None:
        n, limit = len(ids), self.max_model_len
        if n == 0:
            raise errors.bad_request(f"{param}: the prompt is empty", param)
        if n >= limit or (params.max_tokens is not None and n + params.max_tokens > limit):
            raise errors.bad_request(
                f"{param}: this model's maximum context length is {limit} tokens; the request has "
                f"{n} prompt tokens and asks for {params.max_tokens} more",
                param,
                "context_length_exceeded",
            )

    async def open(
        self, ids: list[int], params: SamplingParams, request_id: str, cache_salt: str | None
    ) -> RequestStream:
        """Submit one request and wait for its first output (errors surface here).

        The cluster sees ``<request_id>-<random>``: a caller's id (``request_id`` field,
        ``X-Request-Id``) names the response, but two requests sent with the same id must
        never share one inside the engines."""
        arrival = time.perf_counter()
        agen = self.backend.stream(
            ids, params, request_id=f"{request_id}-{uuid.uuid4().hex[:8]}", cache_salt=cache_salt
        )
        try:
            first = await agen.__anext__()
        except ValueError as e:
            raise errors.from_value_error(e) from None
        except Rejected as e:
            self.metrics.rejected(e.reason)
            raise errors.rejected(e.reason, e.retry_after) from None
        except Unavailable as e:
            log.warning("request %s: %s", request_id, e)
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await agen.aclose()  # type: ignore[attr-defined]
            raise errors.unavailable(isinstance(e, WorkerLost)) from None
        except StopAsyncIteration:
            raise errors.internal() from None
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await agen.aclose()  # type: ignore[attr-defined]
            raise
        detok = (
            IncrementalDetokenizer(self.tokenizer, ids)
            if self.tokenizer is not None and params.skip_special_tokens
            else None
        )
        holdback = max((len(x) for x in params.stop), default=1) - 1
        return RequestStream(agen, request_id, self.metrics, arrival, first, detok, holdback)

    async def _open_all(
        self, prompts: list[list[int]], params: SamplingParams, base_id: str, cache_salt: str | None
    ) -> list[RequestStream]:
        if len(prompts) == 1:
            return [await self.open(prompts[0], params, base_id, cache_salt)]
        results = await asyncio.gather(
            *(self.open(p, params, f"{base_id}-{i}", cache_salt) for i, p in enumerate(prompts)),
            return_exceptions=True,
        )
        streams = [r for r in results if isinstance(r, RequestStream)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for s in streams:
                await s.close()
            raise failed[0]
        return streams

    # -- /v1/completions -------------------------------------------------------------
    async def completions(
        self, req: CompletionRequest, request_id: str, request: Request
    ) -> Response:
        model = self.check_model(req.model)
        params = _sampling(req.sampling_params)
        prompts: list[list[int]] = []
        echo_texts: list[str] = []
        given = req.prompts()
        if len(given) > self.max_prompts_per_request:
            raise errors.bad_request(
                f"prompt: {len(given)} prompts in one request; at "
                f"most {self.max_prompts_per_request} are accepted",
                "prompt",
            )
        for p in given:
            ids = await self._encode(p, True, "prompt") if isinstance(p, str) else p
            self._check_length(ids, params, "prompt")
            prompts.append(ids)
            if req.echo:
                echo_texts.append(p if isinstance(p, str) else self._decode_prompt(p))
        self.metrics.num_requests_running.inc(len(prompts))
        try:
            streams = await self._open_all(prompts, params, request_id, req.cache_salt)
        except BaseException:
            self.metrics.num_requests_running.dec(len(prompts))
            raise
        if req.stream:
            gen = _event_stream(
                request_id,
                self._completion_events(req, model, request_id, streams, echo_texts),
                streams,
            )
            return EventStreamResponse(gen, on_close=_closer(streams, self.metrics, len(prompts)))
        try:
            outs = await _until_disconnect(request, asyncio.gather(*(s.collect() for s in streams)))
        finally:
            for s in streams:
                await s.close()
            self.metrics.num_requests_running.dec(len(prompts))
        choices = []
        for i, out in enumerate(outs):
            c = out.outputs[0]
            text = (echo_texts[i] if req.echo else "") + c.text
            choices.append(
                CompletionChoice(
                    index=i,
                    text=text,
                    logprobs=self._completion_logprobs(
                        c.token_ids, c.logprobs, params.logprobs or 0
                    ),
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                    token_ids=list(c.token_ids) if req.return_token_ids else None,
                    prompt_token_ids=list(out.prompt_token_ids) if req.return_token_ids else None,
                )
            )
        resp = CompletionResponse(id=request_id, model=model, choices=choices, usage=_usage(outs))
        return JSONResponse(resp.model_dump(mode="json"))

    async def _completion_events(
        self,
        req: CompletionRequest,
        model: str,
        rid: str,
        streams: list[RequestStream],
        echo_texts: list[str],
    ) -> AsyncIterator[bytes]:
        created = now()
        opts = req.stream_options
        include_usage = bool(opts and opts.include_usage)
        continuous = bool(opts and opts.continuous_usage_stats)
        k = req.logprobs or 0
        for i, text in enumerate(echo_texts):
            yield event(
                CompletionResponse(
                    id=rid,
                    created=created,
                    model=model,
                    choices=[CompletionChoice(index=i, text=text)],
                )
            )
        async for i, d in _merge(streams):
            s = streams[i]
            choice = CompletionChoice(
                index=i,
                text=d.text,
                logprobs=self._completion_logprobs(
                    d.token_ids, d.logprobs, k, len(s._sent_text) - len(d.text)
                ),
                finish_reason=d.finish_reason,  # type: ignore[arg-type]
                stop_reason=d.stop_reason if d.finish_reason else None,
                token_ids=d.token_ids if req.return_token_ids else None,
                prompt_token_ids=list(s.first.prompt_token_ids)
                if req.return_token_ids and s._sent_tokens == len(d.token_ids)
                else None,
            )
            chunk = CompletionResponse(id=rid, created=created, model=model, choices=[choice])
            if continuous:
                chunk.usage = _usage([s.last or s.first])
            yield event(chunk)
        if include_usage:
            outs = [s.last or s.first for s in streams]
            yield event(
                CompletionResponse(
                    id=rid, created=created, model=model, choices=[], usage=_usage(outs)
                )
            )

    def _completion_logprobs(
        self, token_ids: list[int], lps: list[dict[int, float]] | None, k: int, offset: int = 0
    ) -> CompletionLogprobs | None:
        if lps is None:
            return None
        out = CompletionLogprobs()
        for tid, lp in zip(token_ids, lps):
            tok = self._token_str(tid)
            out.tokens.append(tok)
            out.token_logprobs.append(lp.get(tid))
            top = sorted(lp.items(), key=lambda kv: -kv[1])[:k]
            out.top_logprobs.append({self._token_str(t): v for t, v in top} if k else None)
            out.text_offset.append(offset)
            offset += len(tok)
        return out

    # -- /v1/chat/completions --------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, request_id: str, request: Request) -> Response:
        model = self.check_model(req.model)
        params = _sampling(req.sampling_params)
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise errors.bad_request(
                "messages: this model has no tokenizer, so no chat template", "messages"
            )
        messages = req.chat_messages()
        self._check_chars(sum(len(m["content"]) for m in messages), "messages")

        def render() -> str:
            return tokenizer.apply_chat_template(
                messages, add_generation_prompt=req.add_generation_prompt
            )

        try:
            text = await anyio.to_thread.run_sync(render)
        except ValueError as e:
            raise errors.bad_request(f"messages: {e}", "messages") from None
        ids = await self._encode(text, False, "messages")
        self._check_length(ids, params, "messages")
        self.metrics.num_requests_running.inc()
        try:
            stream = await self.open(ids, params, request_id, req.cache_salt)
        except BaseException:
            self.metrics.num_requests_running.dec()
            raise
        if req.stream:
            body = _event_stream(
                request_id, self._chat_events(req, model, request_id, stream), [stream]
            )
            return EventStreamResponse(body, on_close=_closer([stream], self.metrics, 1))
        try:
            out = await _until_disconnect(request, stream.collect())
        finally:
            await stream.close()
            self.metrics.num_requests_running.dec()
        c = out.outputs[0]
        choice = ChatChoice(
            index=0,
            message=ChatResponseMessage(content=c.text),
            logprobs=self._chat_logprobs(c.token_ids, c.logprobs, params.logprobs or 0),
            finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
            token_ids=list(c.token_ids) if req.return_token_ids else None,
        )
        resp = ChatCompletionResponse(
            id=request_id,
            model=model,
            choices=[choice],
            usage=_usage([out]),
            prompt_token_ids=list(out.prompt_token_ids) if req.return_token_ids else None,
        )
        return JSONResponse(resp.model_dump(mode="json"))

    async def _chat_events(
        self, req: ChatCompletionRequest, model: str, rid: str, s: RequestStream
    ) -> AsyncIterator[bytes]:
        created = now()
        opts = req.stream_options
        include_usage = bool(opts and opts.include_usage)
        continuous = bool(opts and opts.continuous_usage_stats)
        k = req.top_logprobs or 0

        def chunk(choice: ChatChunkChoice | None, usage: Usage | None = None) -> bytes:
            return event(
                ChatCompletionChunk(
                    id=rid,
                    created=created,
                    model=model,
                    choices=[choice] if choice else [],
                    usage=usage,
                )
            )

        yield chunk(ChatChunkChoice(index=0, delta={"role": "assistant", "content": ""}))
        async for d in s.deltas():
            choice = ChatChunkChoice(
                index=0,
                delta={"content": d.text} if d.text or not d.finish_reason else {},
                logprobs=self._chat_logprobs(d.token_ids, d.logprobs, k),
                finish_reason=d.finish_reason,  # type: ignore[arg-type]
                stop_reason=d.stop_reason if d.finish_reason else None,
                token_ids=d.token_ids if req.return_token_ids else None,
            )
            yield chunk(choice, _usage([s.last or s.first]) if continuous else None)
        if include_usage:
            yield chunk(None, _usage([s.last or s.first]))

    def _chat_logprobs(
        self, token_ids: list[int], lps: list[dict[int, float]] | None, k: int
    ) -> ChatLogprobs | None:
        if lps is None:
            return None
        content = []
        for tid, lp in zip(token_ids, lps):
            tok = self._token_str(tid)
            top = sorted(lp.items(), key=lambda kv: -kv[1])[:k]
            content.append(
                ChatTokenLogprob(
                    token=tok,
                    logprob=lp.get(tid, float("-inf")),
                    bytes=list(tok.encode()),
                    top_logprobs=[
                        TopLogprob(
                            token=(t := self._token_str(i)), logprob=v, bytes=list(t.encode())
                        )
                        for i, v in top
                    ],
                )
            )
        return ChatLogprobs(content=content)


def _sampling(build: Any) -> SamplingParams:
    """Build SamplingParams; a ValueError naming a field becomes a 400 naming it."""
    try:
        params: SamplingParams = build()
    except ValueError as e:
        raise errors.from_value_error(e) from None
    return params


async def _event_stream(
    rid: str, body: AsyncIterator[bytes], streams: list[RequestStream]
) -> AsyncIterator[bytes]:
    """A streamed response's SSE body: ``body``'s events, then an OpenAI error event if it
    failed, the request streams closed in every case, and ``[DONE]``."""
    try:
        async for frame in body:
            yield frame
    except errors.APIError as e:
        yield event(e.body())
    except Exception:
        log.exception("request %s failed while streaming", rid)
        yield event(errors.internal().body())
    finally:
        for s in streams:
            await s.close()
    yield DONE


async def _merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Delta]]:
    """Deltas of several requests as they come, tagged with the request's index."""
    if len(streams) == 1:
        async for d in streams[0].deltas():
            yield 0, d
        return
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for d in s.deltas():
                await queue.put((i, d))
            await queue.put((i, None))
        except Exception as e:
            await queue.put((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


def _closer(
    streams: list[RequestStream], metrics: ServerMetrics, n: int
) -> Callable[[], Awaitable[None]]:
    """Cleanup of a streamed response, run once however it ends (finished, client gone,
    or gone before the body started, when the body's own ``finally`` never runs)."""
    done = False

    async def close() -> None:
        nonlocal done
        if done:
            return
        done = True
        for s in streams:
            await s.close()
        metrics.num_requests_running.dec(n)

    return close


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first (then cancel it: the caller's
    cleanup aborts the requests)."""
    task: asyncio.Future[T] = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher: asyncio.Future[None] = asyncio.ensure_future(disconnected())
    try:
        pending: list[asyncio.Future[Any]] = [task, watcher]
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if not task.done() or task.cancelled():
        raise errors.APIError(499, "client disconnected", "client_closed_request")
    return task.result()


__all__ = ["OpenAIServing", "RequestStream"]
