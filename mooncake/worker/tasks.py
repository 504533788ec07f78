"""Task functions of the request graph: thin adapters. They run on workers, find the
worker's ``MooncakeWorker`` plugin, tell its request table what happens, post work to
its engine and wait without holding a worker thread. The engine runs in its own
process, so the client can import this module without torch. This module imports the
plugin, never the reverse.

The tasks that last as long as the request's generation (``decode``, ``generate``) are
coroutines: Dask runs them on the worker's event loop, and they hand their slot back at
once (``_secede_slot``) and await the engine's future there, so a request being decoded
holds neither a thread nor a slot. The short ones (``prefill_request``: lookup then
prefill; ``transfer``) block on engine calls, LMDB and sockets, so they run in the
worker's threads and ``secede`` (never to rejoin, see ``_leave_pool``) while they wait
on the engine. Steps that always run on
the same worker are one task (the lookup is inside the prefill or generate task): every
task costs the scheduler, the workers and the client messages and bookkeeping."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import time
from typing import Any, TypeVar

from distributed import Worker, secede
from distributed.threadpoolexecutor import thread_state
from distributed.worker_state_machine import SecedeEvent

from mooncake.kvcache import copies
from mooncake.outputs import RequestMetrics, RequestOutput
from mooncake.request_ids import Step, task_key
from mooncake.types import BlockKey
from mooncake.worker import request_state
from mooncake.worker.arena_handoff import export_for_handoff, same_host
from mooncake.worker.engine_loop import RequestAborted
from mooncake.worker.kv_stream import export_packed, publish_while_prefilling
from mooncake.worker.lookup import admission, run_lookup
from mooncake.worker.messages import (
    KVHandle,
    LookupResult,
    PlacementInfo,
    RequestSpec,
    TransferResult,
)
from mooncake.worker.plugin import PLUGIN_NAME, MooncakeWorker, get_plugin
from mooncake.worker.pool_handoff import hold_for_pool_copy
from mooncake.worker.receive import receive, start_decode

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _plugin() -> MooncakeWorker:
    return get_plugin()


def _leave_pool() -> None:
    """Hand this task's worker thread back to Dask for the rest of the task (once; the
    thread ends with the task). It never rejoins: ``rejoin`` blocks until a slot is
    free, and when one engine step ended several prefills, the ones that found every
    slot taken waited there for their export, and their hand-off missed the engine's
    export window (``EXPORT_WAIT_S``) and waited for the whole next prefill step (~0.6 s
    in a traced 16-request burst)."""
    if getattr(thread_state, "proceed", True):  # still in the pool
        secede()


def _wait(fut: concurrent.futures.Future[T]) -> T:
    """Block on an engine-loop future with the worker thread handed back to Dask
    (``_leave_pool``)."""
    _leave_pool()
    return fut.result()


def _secede_slot(worker: Worker, step: Step, request_id: str, started: float) -> None:
    """(In a coroutine task, on the worker's event loop.) Hand the task's slot back to
    Dask, as ``secede`` does for a thread: the worker may start other tasks and the
    scheduler counts this one as long-running. ``started``: ``time.time()`` at the
    task's start (the compute time the scheduler learns)."""
    key = task_key(step, request_id)
    ts = worker.state.tasks.get(key)
    if ts is None or ts.state != "executing":
        return  # not this key (or already released): nothing to hand back
    ev = SecedeEvent(
        key=key, compute_duration=time.time() - started, stimulus_id=f"secede-{time.time()}"
    )
    # As ``secede`` does: the state machine runs from the loop, not inside this task.
    worker.loop.add_callback(worker.handle_stimulus, ev)


async def _awaited(
    plugin: MooncakeWorker, rid: str, fut: concurrent.futures.Future[RequestOutput]
) -> RequestOutput:
    """``_ended`` for a coroutine task: the engine's end of the request, awaited."""
    try:
        return await asyncio.wrap_future(fut)
    except RequestAborted:
        raise
    except BaseException as e:
        plugin.requests.handle(request_state.EngineFailed(rid, str(e), time.monotonic()))
        raise


def lookup(spec: RequestSpec, placement: PlacementInfo, start: str = "prefill") -> LookupResult:
    """Prefix lookup on the prefill worker: count the locally cached prefix and, when the
    Conductor chose to fetch a longer one from a peer, pull those blocks in. Then the
    request is admitted into the engine's batch at once (``start``: ``prefill`` for a
    prefill-only request, ``generate`` for colocated), so its prefill does not wait for
    the scheduler to dispatch the next task; that task owns and waits for the result.

    When the Conductor already started the lookup at placement (``MooncakeWorker.
    handle_start``), this task collects its result instead of doing it again."""
    plugin = _plugin()
    _arrived(plugin, spec.request_id, "lookup")
    early = plugin.requests.futures.take_early(spec.request_id)
    try:
        if early is not None:
            # Usually done by now: then skip secede, which costs the scheduler a message.
            return early.future.result() if early.future.done() else _wait(early.future)
        return run_lookup(plugin, spec, placement, start)
    except BaseException as e:
        plugin.requests.handle(
            request_state.EngineFailed(spec.request_id, str(e), time.monotonic())
        )
        raise


async def _lookup_async(
    plugin: MooncakeWorker, spec: RequestSpec, placement: PlacementInfo, start: str
) -> LookupResult:
    """``lookup`` for a coroutine task: the early lookup's result awaited, or the lookup
    run in a thread, never blocking the worker's event loop."""
    _arrived(plugin, spec.request_id, "lookup")
    early = plugin.requests.futures.take_early(spec.request_id)
    try:
        if early is not None:
            return await asyncio.wrap_future(early.future)
        return await asyncio.to_thread(run_lookup, plugin, spec, placement, start)
    except BaseException as e:
        plugin.requests.handle(
            request_state.EngineFailed(spec.request_id, str(e), time.monotonic())
        )
        raise


def _arrived(
    plugin: MooncakeWorker, rid: str, step: request_state.Step, peer: str | None = None
) -> list[request_state.Instruction]:
    """A task of the request started here; it fails at once when the request was
    aborted. Returns the machine's instructions (what the task collects)."""
    told = plugin.requests.handle(request_state.TaskArrived(rid, step, time.monotonic(), peer))
    for ins in told:
        if isinstance(ins, request_state.FailTask):
            raise RequestAborted(rid)
    return told


def _ended(
    plugin: MooncakeWorker, rid: str, fut: concurrent.futures.Future[RequestOutput]
) -> RequestOutput:
    """Wait for the engine's end of the request and tell the request state how it ended."""
    try:
        # Often done by now (the prefill started at placement): then skip secede, which
        # costs the scheduler a message and the pool a thread.
        out = fut.result() if fut.done() else _wait(fut)
    except RequestAborted:
        raise
    except BaseException as e:
        plugin.requests.handle(request_state.EngineFailed(rid, str(e), time.monotonic()))
        raise
    return out


def _started(
    spec: RequestSpec, prefill_only: bool
) -> tuple[concurrent.futures.Future[RequestOutput], float]:
    """The engine future that lookup started for this request (or start it now)."""
    plugin = _plugin()
    got = plugin.requests.futures.take_started(spec.request_id)
    if got is not None:
        return got.future, got.since
    return _watch_and_add(spec, prefill_only=prefill_only), time.perf_counter()


def _watch_and_add(
    spec: RequestSpec,
    *,
    prefill_only: bool,
    kv: Any = None,
    prior: list[int] | None = None,
    prior_logprobs: list[dict[int, float]] | None = None,
    cached: int | None = None,
    plugin: MooncakeWorker | None = None,
) -> concurrent.futures.Future[RequestOutput]:
    plugin = plugin or _plugin()
    return plugin.engine.add(admission(spec, prefill_only, cached, kv, prior, prior_logprobs))


def _compute_seconds(out: RequestOutput, fallback: float) -> float:
    """Prefill time as the engine saw it (first scheduled -> first token), without the
    wait in the engine's queue, so the Conductor's cost model learns compute time."""
    m = out.metrics
    if m.first_scheduled_time is not None and m.first_token_time is not None:
        return m.first_token_time - m.first_scheduled_time
    return fallback


def _queue_seconds(out: RequestOutput) -> float | None:
    """Time the request waited in the engine before its first step."""
    m = out.metrics
    return (
        None
        if m.first_scheduled_time is None
        else max(0.0, m.first_scheduled_time - m.arrival_time)
    )


def _gaps(first_token_time: float | None, token_times: list[float]) -> list[float]:
    """Gaps between consecutive tokens; the first gap starts at the first token sampled
    elsewhere (prefill), so the hand-over to decode counts as the user sees it."""
    times = ([first_token_time] if first_token_time is not None else []) + token_times
    return [b - a for a, b in itertools.pairwise(times)]


def _wall_metrics(out: RequestOutput, spec: RequestSpec, cached: int) -> RequestOutput:
    """Re-express an engine's timings (``perf_counter`` of this process) on the wall
    clock the client uses, from the client's arrival time, with the prefix-cache hit of
    the whole request (not the decode side's import)."""
    offset = time.time() - time.perf_counter()
    m = out.metrics

    def wall(t: float | None) -> float | None:
        return None if t is None else t + offset

    out.metrics = RequestMetrics(
        arrival_time=spec.arrival_time,
        first_scheduled_time=wall(m.first_scheduled_time),
        first_token_time=wall(m.first_token_time),
        finish_time=wall(m.finish_time),
        num_computed_prompt_tokens=len(spec.prompt_token_ids) - cached,
    )
    out.num_cached_tokens = cached
    return out


def prefill(lookup_result: LookupResult) -> KVHandle:
    """Compute the prompt's KV (reusing cached blocks) and the first token; keep the KV
    in this worker's outbox for the decode worker. With ``WorkerConfig.stream_kv`` the
    blocks each prefill chunk fills are published while the engine runs
    (``kv_stream``), and only the rest at the end."""
    plugin = _plugin()
    spec = lookup_result.spec
    _arrived(plugin, spec.request_id, "prefill")
    fut, t0 = _started(spec, prefill_only=True)
    kvs = plugin.kv_store
    streamed: list[BlockKey] = []
    if kvs is not None and plugin.worker_config.stream_kv:
        _leave_pool()
        streamed = publish_while_prefilling(
            plugin, kvs, spec, fut, plugin.worker_config.stream_poll_s
        )
        if plugin.streams is not None:
            plugin.streams.counts["published_during_prefill"] += len(streamed)
    out = _ended(plugin, spec.request_id, fut)
    plugin.engine.token_times.pop(spec.request_id, None)
    seconds = _compute_seconds(out, time.perf_counter() - t0)
    plugin.report_lookup(spec, lookup_result, out.num_cached_tokens)
    first = out.token_ids
    finished = out.finish_reason in ("stop", "abort") or (
        spec.params.max_tokens is not None and spec.params.max_tokens <= len(first)
    )
    packed = None
    records = None
    pool = None
    if (
        kvs is not None
        and not finished
        and not streamed
        and same_host(plugin, kvs, lookup_result.placement.decode)
    ):
        # The decode engine copies from this engine's pool (or imports from the export
        # arena); the tier put follows later.
        held = hold_for_pool_copy(plugin, kvs, spec)
        if held is not None:
            packed, pool = held
        else:
            got = export_for_handoff(plugin, kvs, spec)
            if got is not None:
                packed, records = got
    if kvs is not None and packed is None:
        packed = export_packed(
            plugin, kvs, spec, first=len(streamed), lease=not finished, more=bool(streamed)
        )
        if finished and streamed:
            kvs.release_handoff(spec.request_id)  # no decode side will fetch them
    exported_some = bool(streamed)
    full = packed.num_tokens // plugin.block_size if packed is not None else 0
    if packed is not None and packed.first + len(packed.keys) < full:
        # The arena ran out of room midway (other exports hold it): the rest the old way.
        packed, exported_some = None, True
    if packed is not None:
        keys, num_tokens = streamed + packed.keys, packed.num_tokens
    else:
        if exported_some and kvs is not None:
            kvs.release_handoff(spec.request_id)  # exported again, whole, below
        export = plugin.engine.call("export_kv", spec.request_id).result()
        keys, num_tokens = [b.key for b in export.blocks if b.key is not None], export.num_tokens
        if kvs is not None:
            if not finished:
                # Leased before they are stored: none evicted between "stored" and "fetched".
                kvs.lease_handoff(spec.request_id, keys)
            kvs.put(export.blocks)  # full blocks: decode pulls them, later requests reuse them
        elif not finished:
            plugin.requests.handoff.keep(spec.request_id, export)
    kept = kvs is None and not finished
    ev = (
        request_state.Prefilled(spec.request_id, time.monotonic(), lookup_result.placement.decode)
        if kept
        else request_state.EngineFinished(spec.request_id, time.monotonic())
    )
    plugin.requests.handle(ev)
    plugin.reports.prefill(
        spec.request_id, len(spec.prompt_token_ids), out.num_cached_tokens, seconds
    )
    first_token_wall = out.metrics.first_token_time
    if first_token_wall is not None:
        first_token_wall += time.time() - time.perf_counter()
    handle = KVHandle(
        spec=spec,
        placement=lookup_result.placement,
        worker=plugin.worker.address,
        first_token_time=first_token_wall,
        num_tokens=num_tokens,
        first_token_ids=list(first),
        first_logprobs=out.outputs[0].logprobs,
        block_keys=list(keys),
        peer=kvs.peer if kvs is not None else None,
        num_cached_tokens=out.num_cached_tokens,
        prefill_seconds=seconds,
        queue_seconds=_queue_seconds(out),
        finished=finished,
        output=_wall_metrics(out, spec, out.num_cached_tokens) if finished else None,
        records=records,
        pool=pool,
    )
    # The decode worker starts the transfer on this word (the early hand-off), before the
    # scheduler has seen this task end; its transfer task then collects it.
    plugin.offer_handoff(handle)
    return handle


def prefill_request(spec: RequestSpec, placement: PlacementInfo) -> KVHandle:
    """The prefill worker's task of a disaggregated request: ``lookup`` (usually just
    collecting the lookup the Conductor started at placement), then ``prefill``. They
    always run on the same worker, so they are one task: each task of a request costs
    the scheduler, the worker and the client messages and bookkeeping."""
    return prefill(lookup(spec, placement, "prefill"))


def transfer(handle: KVHandle) -> TransferResult:
    """Bring the request's KV to this (decode) worker: a local hand-over when prefill ran
    here, else a pull over TCP. A failed pull is a miss: decode then recomputes."""
    plugin = _plugin()
    rid = handle.spec.request_id
    if handle.finished:
        if plugin.streams is not None:
            plugin.streams.cancel(rid)  # nothing to hand off
        return TransferResult(handle, path="none")
    told = _arrived(plugin, rid, "transfer", handle.worker)
    early = (
        plugin.requests.futures.take_receiving(rid)
        if any(isinstance(i, request_state.CollectTransfer) for i in told)
        else None
    )
    if early is None:
        # The receive waits on the engine (its import and admission run between two
        # steps): out of the pool, so that a burst of hand-offs does not queue for the
        # worker's few threads behind each other's waits.
        _leave_pool()
        return receive(plugin, handle)
    # A transfer begun ahead of this task: a moved request's, which the Conductor started
    # at placement (the early resume, ``MooncakeWorker.handle_resume``), or one its
    # prefill worker said was ready (``handle_handoff``). Collect it (often done by now).
    try:
        done = early.future.result() if early.future.done() else _wait(early.future)
    except BaseException as e:
        plugin.requests.handle(request_state.EngineFailed(rid, str(e), time.monotonic()))
        raise
    # The graph's handle is the one its decode task reads (the same request, tokens and
    # blocks as the one the worker built at placement).
    return dataclasses.replace(done, handle=handle, early=True)


async def decode(tr: TransferResult) -> RequestOutput:
    """Join this worker's continuous batch with the imported KV and run to the end (a
    coroutine: no thread waits for the request, see the module's docstring)."""
    task_start = time.time()
    plugin = _plugin()
    handle = tr.handle
    if handle.finished:
        out: RequestOutput = handle.output
        plugin.report_request(
            out,
            queue_s=handle.queue_seconds,
            prefill_s=handle.prefill_seconds,
            decode_s=None,
            itl=[],
        )
        return out
    spec = handle.spec
    _arrived(plugin, spec.request_id, "decode", handle.worker)
    plugin.reports.decode_joined(spec.request_id)
    # Admitted by the transfer task (``_start_decode``); a decode whose transfer ran
    # elsewhere admits it now (in a thread: the engine's acceptance is waited for, and a
    # Dask-path KV export is pickled onto the engine's socket). On a miss the prompt is
    # recomputed (prefix cache permitting); the first tokens are kept, so the output is
    # the same.
    got = plugin.requests.futures.take_started(spec.request_id)
    fut = got.future if got is not None else await asyncio.to_thread(start_decode, plugin, handle)
    _secede_slot(plugin.worker, "decode", spec.request_id, task_start)
    out = await _awaited(plugin, spec.request_id, fut)
    plugin.requests.handle(request_state.EngineFinished(spec.request_id, time.monotonic()))
    token_times = plugin.engine.token_times.pop(spec.request_id, [])
    out = _wall_metrics(out, spec, handle.num_cached_tokens)
    m = out.metrics
    decode_s = (
        m.finish_time - m.first_scheduled_time
        if m.finish_time is not None and m.first_scheduled_time is not None
        else None
    )
    m.first_token_time = handle.first_token_time
    plugin.report_request(
        out,
        queue_s=handle.queue_seconds,
        prefill_s=handle.prefill_seconds,
        decode_s=decode_s,
        itl=_gaps(handle.first_token_time, token_times),
    )
    return out


async def generate(spec: RequestSpec, placement: PlacementInfo) -> RequestOutput:
    """Colocated mode: the lookup, then prefill and decode in this worker's engine, one
    request and one task (a coroutine: no thread waits for the request, see the
    module's docstring)."""
    started = time.time()
    plugin = _plugin()
    lookup_result = await _lookup_async(plugin, spec, placement, "generate")
    _arrived(plugin, spec.request_id, "generate")
    got = plugin.requests.futures.take_started(spec.request_id)
    if got is not None:
        fut, t0 = got.future, got.since
    else:
        t0 = time.perf_counter()
        fut = await plugin.engine.add_async(admission(spec, False, None, None, None, None))
    _secede_slot(plugin.worker, "generate", spec.request_id, started)
    out = await _awaited(plugin, spec.request_id, fut)
    plugin.requests.handle(request_state.EngineFinished(spec.request_id, time.monotonic()))
    token_times = plugin.engine.token_times.pop(spec.request_id, [])
    seconds = _compute_seconds(out, time.perf_counter() - t0)
    plugin.reports.prefill(
        spec.request_id, len(spec.prompt_token_ids), out.num_cached_tokens, seconds
    )
    plugin.report_lookup(spec, lookup_result, out.num_cached_tokens)
    queue_s = _queue_seconds(out)
    out = _wall_metrics(out, spec, out.num_cached_tokens)
    m = out.metrics
    decode_s = (
        m.finish_time - m.first_token_time
        if m.finish_time is not None and m.first_token_time is not None
        else None
    )
    plugin.report_request(
        out, queue_s=queue_s, prefill_s=seconds, decode_s=decode_s, itl=_gaps(None, token_times)
    )
    return out


def worker_info(dask_worker: Any) -> dict[str, Any]:
    """This worker's engine and model facts (run with ``Client.run``, which passes the worker)."""
    info: dict[str, Any] = dask_worker.plugins[PLUGIN_NAME].info()
    return info


def engine_stats(dask_worker: Any) -> dict[str, Any]:
    """This worker's engine counters and pool state (run with ``Client.run``)."""
    plugin = dask_worker.plugins[PLUGIN_NAME]
    stats: dict[str, Any] = plugin.engine.call("stats").result()
    return {
        "host_blocks": len(plugin.kv_store.store.keys("host"))
        if plugin.kv_store is not None
        else 0,
        "handoff_leases": len(plugin.kv_store.leases) if plugin.kv_store is not None else 0,
        "handoff_leases_taken": plugin.kv_store.leases_taken if plugin.kv_store is not None else 0,
        # Blocks a same-host hand-off served from the export arena, put into the host
        # tier after the decode side had them (``arena_handoff``).
        "handoff_put_after": plugin.kv_store.held.put_after
        if plugin.kv_store is not None and plugin.kv_store.held is not None
        else 0,
        # Same-host hand-offs served straight from this engine's shared pool
        # (``pool_handoff``), and those a decode engine here copied that way.
        "pool_handoffs": plugin.pool_handoffs,
        "pool_imports": plugin.pool_imports,
        "worker_copies": copies.snapshot(),
        "transfer_paths": dict(plugin.transfer_paths),
        "stream_blocks": dict(plugin.streams.counts) if plugin.streams is not None else {},
        "handoff_times": plugin.handoff_times.snapshot(),
        "prefix_fetch_paths": dict(plugin.prefix_fetch_paths),
        "hit_blocks": dict(plugin.hit_blocks),
        **stats,
    }


__all__ = [
    "decode",
    "engine_stats",
    "generate",
    "lookup",
    "prefill",
    "prefill_request",
    "transfer",
    "worker_info",
]
