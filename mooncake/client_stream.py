"""The streaming side of ``mooncake.LLM``: ``stream`` (a request's tokens as they
arrive, from the engines' direct token streams or the Dask event topic), moving a
stream off a lost worker (placed again, or resumed on a decode worker from the tokens
delivered so far), and aborts.

A mixin of :class:`mooncake.client.LLM`, which owns the state and the placement and
submission methods named below; it is kept apart because it is a concept of its own
(streams are async and event-driven, batches are synchronous and poll).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from distributed import Client, Future
from distributed.comm.addressing import get_address_host

from mooncake.client_common import (
    LIVENESS_INTERVAL_S,
    MOVE_DEADLINE_S,
    PLACE_TIMEOUT_S,
    Rejected,
    Unavailable,
    WorkerLost,
)
from mooncake.client_common import (
    post as _post,
)
from mooncake.client_moves import MoveRecord, Notice
from mooncake.conductor.messages import PlacementInfo
from mooncake.outputs import CompletionOutput, RequestMetrics, RequestOutput
from mooncake.request_ids import next_attempt, task_key
from mooncake.sampling_params import SamplingParams
from mooncake.transfer import Peer
from mooncake.worker.messages import KVHandle, RequestSpec, ResumeStart
from mooncake.worker.token_stream import TokenStreamServer

logger = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 5.0
"""How long an abort waits for one worker's answer (a dead worker never answers)."""


class _Stream:
    """Accumulates a request's token deltas into cumulative ``RequestOutput``s."""

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec
        self.token_ids: list[int] = []
        self.text = ""
        self.logprobs: list[dict[int, float]] | None = (
            [] if spec.params.logprobs is not None else None
        )
        self.finished = False
        self.finish_reason: Any = None
        self.stop_reason: Any = None
        self.cached = 0
        self.metrics = RequestMetrics(arrival_time=spec.arrival_time)

    def apply(self, msg: dict[str, Any]) -> None:
        self.token_ids.extend(msg["tokens"])
        self.text += msg["text"]
        self.cached = max(self.cached, int(msg.get("cached", 0)))
        if self.logprobs is not None and "logprobs" in msg:
            self.logprobs.extend({int(k): float(v) for k, v in d} for d in msg["logprobs"])
        if self.metrics.first_token_time is None and self.token_ids:
            self.metrics.first_token_time = time.time()
        if msg["finished"]:
            self.finished = True
            self.finish_reason = msg.get("finish_reason")
            self.stop_reason = msg.get("stop_reason")
            self.text = msg.get("final_text", self.text)
            self.metrics.finish_time = time.time()

    def apply_final(self, out: RequestOutput) -> None:
        """The decode task's result is authoritative (covers lost or absent stream messages)."""
        comp = out.outputs[0]
        self.token_ids = list(comp.token_ids)
        self.text = comp.text
        if comp.logprobs is not None:
            self.logprobs = list(comp.logprobs)
        self.finish_reason, self.stop_reason = comp.finish_reason, comp.stop_reason
        self.cached = max(self.cached, out.num_cached_tokens)
        self.finished = True
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = time.time()
        self.metrics.finish_time = self.metrics.finish_time or time.time()

    def output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.spec.request_id,
            prompt=self.spec.prompt,
            prompt_token_ids=self.spec.prompt_token_ids,
            outputs=[
                CompletionOutput(
                    index=0,
                    text=self.text,
                    token_ids=list(self.token_ids),
                    cumulative_logprob=sum(
                        d[t] for t, d in zip(self.token_ids, self.logprobs) if t in d
                    )
                    if self.logprobs is not None
                    else None,
                    logprobs=list(self.logprobs) if self.logprobs is not None else None,
                    finish_reason=self.finish_reason,
                    stop_reason=self.stop_reason,
                )
            ],
            finished=self.finished,
            num_cached_tokens=self.cached,
            metrics=dataclasses.replace(self.metrics),
        )


class StreamMixin:
    """``stream``, moves off lost workers and aborts of :class:`mooncake.client.LLM`."""

    # What the stream methods use of the LLM (set by mooncake.client.LLM).
    client: Client
    info: dict[str, Any]
    workers: dict[str, dict[str, Any]]
    moves: collections.Counter[str]
    _lock: threading.Lock
    _sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]]
    _futures: dict[str, dict[str, Future[Any]]]
    _placed: dict[str, set[str]]
    _moved_to: dict[str, str]
    move_log: collections.deque[MoveRecord]
    _left_at: dict[str, float]
    _task_workers: dict[str, str]
    _gone: set[str]
    _stream_server: TokenStreamServer

    if TYPE_CHECKING:

        @property
        def _scheduler(self) -> Any: ...

        @property
        def _client_loop(self) -> asyncio.AbstractEventLoop: ...

        async def _on_client_loop(self, coro: Any) -> Any: ...

        def make_request(
            self,
            prompt: str | Sequence[int],
            params: SamplingParams | None = None,
            *,
            request_id: str | None = None,
            cache_salt: str | None = None,
            stream: bool = False,
        ) -> RequestSpec: ...

        def _block_keys(self, spec: RequestSpec) -> list[Any]: ...

        def _place_request(
            self,
            spec: RequestSpec,
            resume: bool = False,
            exclude: tuple[str, ...] = (),
            resume_from: ResumeStart | None = None,
        ) -> dict[str, Any]: ...

        async def _ask_place(self, request: dict[str, Any]) -> dict[str, Any]: ...

        @staticmethod
        def _placement(reply: dict[str, Any]) -> PlacementInfo: ...

        def submit(self, spec: RequestSpec, placement: PlacementInfo) -> Future[Any]: ...

        def _submit_resume(
            self, spec: RequestSpec, handle: KVHandle, placement: PlacementInfo
        ) -> Future[Any]: ...

        async def _live_workers(self) -> set[str] | None: ...

        def _lost_worker(self, rid: str, live: set[str] | None) -> str | None: ...

        def _needs_move(self, rid: str, worker: str) -> bool: ...

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, payload = event
        self._on_msgs(payload["msgs"])

    def _on_msgs(self, msgs: list[dict[str, Any]]) -> None:
        for msg in msgs:
            sink = self._sinks.get(msg["rid"])
            if sink is not None:
                _post(*sink, ("msg", msg))

    def _stream_host(self) -> str:
        """The address this process reaches the scheduler from: workers reach it there."""
        comm = getattr(self.client.scheduler_comm, "comm", None)
        addr = getattr(comm, "local_address", None)
        if addr:
            try:
                return str(get_address_host(addr))
            except Exception:
                pass
        return "127.0.0.1"

    async def stream(
        self,
        prompt: str | Sequence[int],
        sampling_params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's cumulative output each time tokens arrive; the last has
        ``finished=True``. Raises ``ValueError`` (bad input), ``Rejected`` or
        ``Unavailable`` before the first yield. Closing the generator early aborts the
        request. A request whose worker is lost moves to another one and the stream goes
        on (no token repeated or missing); when none is left it raises ``WorkerLost``."""
        spec = self.make_request(
            prompt, sampling_params, request_id=request_id, cache_salt=cache_salt, stream=True
        )
        if spec.request_id in self._sinks:  # two requests must never share an id in the engines
            raise ValueError(f"request_id: {spec.request_id!r} is already running")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = asyncio.Queue()
        acc = _Stream(spec)
        attempt = spec
        move: MoveRecord | None = None
        last_token_at: float | None = None
        lost_on: list[str] = []
        """The workers this request was lost on (its placements exclude them)."""
        self._sinks[spec.request_id] = (loop, q)
        try:
            placement = self._placement(await self._place_async(spec))
            out_fut = self.submit(spec, placement)
            out_fut.add_done_callback(lambda f: _post(loop, q, ("done", f)))
            while not acc.finished:
                notice: Notice = "membership"
                try:
                    got = await asyncio.wait_for(q.get(), LIVENESS_INTERVAL_S)
                except asyncio.TimeoutError:
                    live = await self._live_workers()
                    got = ("lost", self._lost_worker(attempt.request_id, live), "liveness")
                    if got[1] is None:
                        continue
                kind, item = got[0], got[1]
                if kind == "lost":  # ("lost", worker, how it was noticed)
                    notice = got[2]
                if kind == "msg":
                    if item["rid"] == attempt.request_id:
                        if item["tokens"]:
                            last_token_at = time.monotonic()
                            if move is not None and move.first_token_at is None:
                                move.first_token_at = last_token_at
                        acc.apply(item)
                        yield acc.output()
                elif kind == "lost":
                    if self._needs_move(attempt.request_id, item):
                        move = MoveRecord(
                            spec.request_id,
                            attempt.request_id,
                            item,
                            resumed=bool(acc.token_ids),
                            tokens_before=len(acc.token_ids),
                            notice=notice,
                            left_at=self._left_at.get(item),
                            noticed_at=time.monotonic(),
                            last_token_at=last_token_at,
                            prompt_tokens=len(spec.prompt_token_ids),
                            block_size=int(self.info["block_size"]),
                        )
                        self.move_log.append(move)
                        lost_on.append(item)
                        attempt, out_fut = await self._move(
                            spec, acc, attempt, item, loop, q, move, tuple(lost_on)
                        )
                elif item is out_fut:  # the graph's output (an earlier attempt's is stale)
                    if item.status == "error":
                        raise await self._on_client_loop(item._exception())
                    if item.status == "cancelled":
                        raise asyncio.CancelledError(f"request {spec.request_id} was cancelled")
                    final = await self._on_client_loop(item._result())
                    if not acc.finished:
                        acc.apply_final(final)
                        yield acc.output()
        finally:
            self._sinks.pop(attempt.request_id, None)
            self._sinks.pop(spec.request_id, None)
            self._stream_server.forget(attempt.request_id)
            self._moved_to.pop(spec.request_id, None)
            if not acc.finished:
                await self._abort_unless_cancelled(attempt.request_id)

    async def _place_async(
        self,
        spec: RequestSpec,
        resume: bool = False,
        exclude: tuple[str, ...] = (),
        resume_from: ResumeStart | None = None,
    ) -> dict[str, Any]:
        """The Conductor's answer for ``spec`` (``asyncio.TimeoutError`` when the scheduler
        does not answer within ``PLACE_TIMEOUT_S``); ``resume_from``: a moved request's
        tokens so far, which its new decode worker resumes from at placement."""
        place = self._ask_place(
            self._place_request(spec, resume=resume, exclude=exclude, resume_from=resume_from)
        )
        reply: dict[str, Any] = await asyncio.wait_for(self._on_client_loop(place), PLACE_TIMEOUT_S)
        return reply

    async def _move(
        self,
        spec: RequestSpec,
        acc: _Stream,
        attempt: RequestSpec,
        lost: str,
        loop: asyncio.AbstractEventLoop,
        q: asyncio.Queue[Any],
        record: MoveRecord,
        lost_on: tuple[str, ...],
    ) -> tuple[RequestSpec, Future[Any]]:
        """Run the request again without the lost worker, under a new attempt id (the
        old id stays refused by the engines that aborted it). With no token delivered
        yet it is placed from scratch; otherwise it resumes on a decode worker from the
        tokens delivered so far. The placement excludes ``lost_on`` (the scheduler may
        not have removed the worker yet). Raises ``WorkerLost`` when that is impossible."""
        old = attempt.request_id
        self.moves[spec.request_id] += 1
        new = dataclasses.replace(attempt, request_id=next_attempt(spec.request_id, old))
        record.attempt_id = new.request_id
        self._sinks.pop(old, None)
        self._stream_server.forget(old)
        self._sinks[new.request_id] = (loop, q)
        self._moved_to[spec.request_id] = new.request_id
        resume = bool(acc.token_ids)
        start = self._resume_start(new, acc) if resume else None
        deadline = time.monotonic() + MOVE_DEADLINE_S
        while True:
            try:
                placement = self._placement(await self._place_async(new, resume, lost_on, start))
                break
            except Unavailable as e:
                raise WorkerLost(
                    f"request {spec.request_id}: worker {lost} was lost "
                    f"and no worker can take the request over ({e})"
                ) from None
            except Rejected as e:
                if time.monotonic() + e.retry_after > deadline:
                    raise WorkerLost(
                        f"request {spec.request_id}: worker {lost} was lost "
                        "and the cluster is too busy to take the request over"
                    ) from None
                await asyncio.sleep(max(0.01, e.retry_after))
        record.placed_at, record.decode_worker = time.monotonic(), placement.decode
        # Stop what is left of the old attempt (on the surviving workers); not awaited,
        # and only now: the placement (which starts the resume) reaches the scheduler
        # first. (Had it failed, the stream's own abort of the old attempt does it.)
        asyncio.run_coroutine_threadsafe(self._abort(old, moved_off=lost), self._client_loop)
        logger.warning(
            "request %s: worker %s lost; %s on %s",
            spec.request_id,
            lost,
            "resuming" if resume else "placed again",
            placement.decode,
        )
        if start is not None:
            # Its decode worker started it already (the Conductor passed ``start`` on);
            # the graph's tasks collect what it began.
            out_fut = self._submit_resume(
                new, self._resume_handle(start, placement, lost), placement
            )
        else:
            out_fut = self.submit(new, placement)
        record.submitted_at = time.monotonic()
        out_fut.add_done_callback(lambda f: _post(loop, q, ("done", f)))
        self._watch_transfer(new.request_id, record)
        return new, out_fut

    def _watch_transfer(self, rid: str, record: MoveRecord) -> None:
        """Fill ``record``'s transfer fields from the attempt's transfer task once it is
        done (its result is small; read on the client's loop, never blocking a stream)."""
        with self._lock:
            fut = self._futures.get(rid, {}).get(task_key("transfer", rid))
        if fut is None:
            return

        async def read() -> None:
            try:
                tr = await asyncio.wait_for(fut._result(), ABORT_TIMEOUT_S)
            except Exception as e:  # lost again, aborted: the record stays without it
                logger.debug("transfer result of %s: %s", rid, e)
                return
            record.transfer_path = str(tr.path)
            record.transfer_s = float(tr.seconds)
            record.fetched_blocks = int(getattr(tr, "num_blocks", 0))
            record.early = bool(getattr(tr, "early", False))

        fut.add_done_callback(
            lambda _f: asyncio.run_coroutine_threadsafe(read(), self._client_loop)
        )

    @staticmethod
    def _resume_start(spec: RequestSpec, acc: _Stream) -> ResumeStart:
        """What a resumed request's decode starts from: the tokens delivered so far."""
        return ResumeStart(
            spec=spec,
            first_token_ids=list(acc.token_ids),
            first_logprobs=list(acc.logprobs) if acc.logprobs is not None else None,
            num_cached_tokens=acc.cached,
            first_token_time=acc.metrics.first_token_time,
        )

    def _resume_handle(self, start: ResumeStart, placement: PlacementInfo, lost: str) -> KVHandle:
        """The resume graph's handle: ``start``, and the prompt's blocks in the prefill
        worker's store when that worker is alive (decode recomputes whatever it cannot
        fetch); the decode worker made the same one from the Conductor's message."""
        info = self.workers.get(placement.prefill) if placement.prefill != lost else None
        peer = Peer.from_msg(info.get("peer")) if info else None
        return start.handle(placement, peer, self._block_keys(start.spec))

    async def abort(self, request_id: str) -> None:
        """Cancel a request wherever it is and free its KV blocks (also after it moved
        off a lost worker)."""
        await self._on_client_loop(self._abort(self._moved_to.get(request_id, request_id)))

    def abort_sync(self, request_id: str) -> None:
        self.client.sync(self._abort, request_id)

    async def _abort_unless_cancelled(self, request_id: str) -> None:
        """Abort from a stream's ``finally``. The caller's task is often being cancelled
        right then (a server's cancel scope cancels every later await of it too), and an
        abort awaited through ``_on_client_loop`` was cancelled with it: the request
        then kept decoding on its worker to the end. So the abort is started on the
        client's loop first and only awaited here, shielded: cancelling the caller no
        longer cancels the abort."""
        fut = asyncio.run_coroutine_threadsafe(self._abort(request_id), self._client_loop)
        await asyncio.shield(asyncio.wrap_future(fut))

    async def _abort(self, request_id: str, moved_off: str | None = None) -> None:
        """Stop the request on every worker that may hold it and cancel its graph. With
        ``moved_off`` (an attempt left behind by a move off that lost worker) only on the
        surviving workers where a task of it has not finished: the others hold nothing
        of it (the Conductor tells them to drop KV kept for the lost worker), and an
        abort call to each, all at once for every request of the lost worker, delayed
        the moved requests' resumption."""
        with self._lock:
            futures = self._futures.pop(request_id, {})
            busy = {
                w
                for key, f in futures.items()
                if f.status != "finished" and (w := self._task_workers.get(key)) is not None
            }
            for key in futures:
                self._task_workers.pop(key, None)

        async def on(addr: str) -> None:
            try:
                await asyncio.wait_for(
                    self.client.rpc(addr).mooncake_abort(request_id=request_id), ABORT_TIMEOUT_S
                )
            except Exception as e:  # a worker that is gone has nothing to stop
                logger.debug("abort on %s failed: %s", addr, e)

        # The engines first and all at once: each step a request keeps running costs
        # every other request in the batch. Cancelling the graph only releases the tasks
        # (a running decode task would wait for its engine to the end).
        addresses = self._worker_addresses(request_id)
        if moved_off is not None:
            addresses = [a for a in addresses if a in busy and a != moved_off]
        await asyncio.gather(*(on(a) for a in addresses))
        if futures:
            await self.client._cancel(list(futures.values()), force=True)

    def _worker_addresses(self, request_id: str) -> list[str]:
        """Where the request may be: the workers it was placed on, and every worker
        this client has seen (an early lookup may run before its placement is known)."""
        with self._lock:
            placed = self._placed.pop(request_id, ())
            # Not those known gone: connecting to a dead address retries until the timeout.
            return sorted((set(self.workers) | set(placed)) - self._gone)


__all__ = ["ABORT_TIMEOUT_S", "StreamMixin"]
