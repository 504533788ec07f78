"""A thread that owns one engine and steps it whenever there is work.

Tasks never touch the engine directly: they post commands (run between steps) and wait
on futures. After each step the loop publishes token deltas, batched per topic, through
the emit callback (one message per step, not per token).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mooncake.engine import LLMEngine
from mooncake.outputs import RequestOutput

logger = logging.getLogger(__name__)

class RequestAborted(RuntimeError):
    """The request was cancelled while its task waited on it."""


Emit = Callable[[str, list[dict[str, Any]]], None]


@dataclass
class Watch:
    """How the loop reports one request."""

    future: concurrent.futures.Future[RequestOutput]
    topic: str | None
    sent_tokens: int = 0
    sent_text: int = 0
    prefill_only: bool = False
    """The engine runs only the first token here; 'length' after it is not the end."""
    final_max_tokens: int | None = None
    num_cached_tokens: int | None = None
    """Prefix-cache hit to report (decode reports prefill's, not its own import)."""


class EngineLoop:
    """Args: engine: owned from now on; emit: ``emit(topic, messages)``, thread-safe."""

    def __init__(self, engine: LLMEngine, emit: Emit) -> None:
        self.engine = engine
        self.emit = emit
        self._commands: collections.deque[tuple[Callable[[LLMEngine], Any], concurrent.futures.Future[Any]]] = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._watches: dict[str, Watch] = {}
        self.block_events: collections.deque[tuple[str, bytes]] = collections.deque()
        self.busy_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="mooncake-engine", daemon=True)
        self._thread.start()

    # -- API for tasks (any thread) ---------------------------------------------------
    def call(self, fn: Callable[[LLMEngine], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn(engine)`` on the loop thread between steps."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._commands.append((fn, fut))
        self._wake.set()
        return fut

    def watch(self, request_id: str, watch: Watch) -> None:
        """Register before adding the request (from the loop thread, via ``call``)."""
        self._watches[request_id] = watch

    def abort(self, engine: LLMEngine, request_id: str) -> bool:
        """(Loop thread.) Abort a request and fail the task waiting on it."""
        found = engine.abort_request(request_id)
        w = self._watches.pop(request_id, None)
        if w is not None and not w.future.done():
            w.future.set_exception(RequestAborted(request_id))
        return found or w is not None

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    # -- loop thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            while self._commands:
                fn, fut = self._commands.popleft()
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(self.engine))
                    except BaseException as e:
                        fut.set_exception(e)
            if self.engine.has_unfinished():
                t0 = time.perf_counter()
                try:
                    outputs = self.engine.step()
                except Exception:  # pragma: no cover - a bug: fail every waiting request
                    logger.exception("engine step failed")
                    self._fail_all()
                    continue
                self.busy_seconds += time.perf_counter() - t0
                self._publish(outputs)
                for ev in self.engine.pool.drain_events():
                    self.block_events.append((ev.kind, ev.key))
            else:
                for ev in self.engine.pool.drain_events():
                    self.block_events.append((ev.kind, ev.key))
                self._wake.wait(0.05)
                self._wake.clear()

    def _fail_all(self) -> None:
        for rid, w in list(self._watches.items()):
            self.engine.abort_request(rid)
            if not w.future.done():
                w.future.set_exception(RuntimeError("engine step failed"))
        self._watches.clear()

    def _publish(self, outputs: list[RequestOutput]) -> None:
        by_topic: dict[str, list[dict[str, Any]]] = {}
        finished: list[tuple[Watch, RequestOutput]] = []
        for out in outputs:
            w = self._watches.get(out.request_id)
            if w is None:
                continue
            done = out.finished
            if done and w.prefill_only and out.finish_reason == "length" and (w.final_max_tokens is None or w.final_max_tokens > len(out.token_ids)):
                done = False  # prefill's own limit, the request goes on at decode
            if w.topic is not None:
                by_topic.setdefault(w.topic, []).append(self._delta(out, w, done))
            if out.finished:
                del self._watches[out.request_id]
                finished.append((w, out))
        # Stream first, then resolve the tasks: a client sees the last tokens no later
        # than the task's completion.
        for topic, msgs in by_topic.items():
            self.emit(topic, msgs)
        for w, out in finished:
            w.future.set_result(out)

    @staticmethod
    def _delta(out: RequestOutput, w: Watch, done: bool) -> dict[str, Any]:
        comp = out.outputs[0]
        msg: dict[str, Any] = {
            "rid": out.request_id,
            "tokens": comp.token_ids[w.sent_tokens :],
            "text": comp.text[w.sent_text :],
            "finished": done,
            "cached": out.num_cached_tokens if w.num_cached_tokens is None else w.num_cached_tokens,
            "prompt_len": len(out.prompt_token_ids),
        }
        if comp.logprobs is not None:
            msg["logprobs"] = [[[int(k), float(v)] for k, v in d.items()] for d in comp.logprobs[w.sent_tokens :]]
        if done:
            msg.update(finish_reason=comp.finish_reason, stop_reason=comp.stop_reason, final_text=comp.text)
        w.sent_tokens = len(comp.token_ids)
        w.sent_text = len(comp.text)
        return msg
