"""Task functions of the request graph. They run on workers, find the worker's
``MooncakeWorker`` plugin, post work to its engine loop and wait without holding a
worker thread (``secede``/``rejoin``). Engine imports stay inside the plugin, so the
client can import this module without torch."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import time
from typing import TYPE_CHECKING, Any, TypeVar

from distributed import get_worker, rejoin, secede
from distributed.utils import sync

from mooncake.kvcache import block_keys
from mooncake.outputs import RequestMetrics, RequestOutput
from mooncake.types import BlockKey
from mooncake.worker import request_state
from mooncake.worker.engine_loop import AddRequest, RequestAborted, Watch
from mooncake.worker.messages import (
    KVHandle,
    LookupResult,
    PlacementInfo,
    RequestSpec,
    TransferResult,
)

if TYPE_CHECKING:
    from mooncake.worker.plugin import MooncakeWorker

T = TypeVar("T")


def _plugin() -> MooncakeWorker:
    from mooncake.worker.plugin import get_plugin

    return get_plugin()


def _wait(fut: concurrent.futures.Future[T]) -> T:
    """Block on an engine-loop future with the worker thread handed back to Dask."""
    secede()
    try:
        return fut.result()
    finally:
        rejoin()


def _rpc(addr: str, method: str, **kwargs: Any) -> Any:
    worker = get_worker()

    async def go() -> Any:
        return await getattr(worker.rpc(addr), method)(**kwargs)

    return sync(worker.loop, go)


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
    early = plugin.early_lookups.pop(spec.request_id, None)
    try:
        if early is not None:
            # Usually done by now: then skip secede, which costs the scheduler a message.
            return early[0].result() if early[0].done() else _wait(early[0])
        return run_lookup(plugin, spec, placement, start)
    except BaseException as e:
        plugin.apply(
            plugin.on_event(request_state.EngineFailed(spec.request_id, str(e), time.monotonic()))
        )
        raise


Admission = concurrent.futures.Future[tuple[concurrent.futures.Future[RequestOutput] | None, int]]
Begun = tuple[list[BlockKey], Admission]
"""The prompt's block keys and the admission call ``begin_lookup`` sent."""


def fetches_remote(plugin: MooncakeWorker, placement: PlacementInfo) -> bool:
    """Whether the Conductor asked this lookup to fetch a prefix from another worker."""
    return bool(placement.fetch_from and placement.fetch_from != plugin.worker.address)


def _keys(plugin: MooncakeWorker, spec: RequestSpec) -> list[BlockKey]:
    return block_keys(spec.prompt_token_ids, plugin.block_size, plugin.root_key(spec.cache_salt))


def begin_lookup(plugin: MooncakeWorker, spec: RequestSpec, start: str) -> Begun:
    """Send the engine the call that looks the prompt up and admits it, unless this
    worker's store holds the block after the cached prefix (then the lookup imports it
    and admits the request after). Returns at once; ``run_lookup`` finishes the job."""
    keys = _keys(plugin, spec)
    kvs = plugin.kv_store
    stored = kvs.store.contains_many(keys) if kvs is not None else [False] * len(keys)
    return keys, plugin.engine.lookup_and_add(_admission(spec, start == "prefill"), stored, keys)


def run_lookup(
    plugin: MooncakeWorker,
    spec: RequestSpec,
    placement: PlacementInfo,
    start: str,
    begun: Begun | None = None,
) -> LookupResult:
    """The lookup itself (in a task, or in the plugin's lookup thread at placement, then
    ``begun`` is what ``begin_lookup`` already sent)."""
    t0 = time.perf_counter()
    prefill_only = start == "prefill"
    bs = plugin.block_size
    kvs = plugin.kv_store
    done: concurrent.futures.Future[RequestOutput] | None = None
    if fetches_remote(plugin, placement):
        keys = _keys(plugin, spec)
        cached = plugin.engine.call(
            "match_prefix", spec.prompt_token_ids, spec.cache_salt, keys
        ).result()
    else:
        keys, admission = begun or begin_lookup(plugin, spec, start)
        done, cached = admission.result()
    result = LookupResult(spec, placement, cached_tokens=cached)
    have = cached // bs
    plugin.hit_blocks["device"] += have
    if done is None and kvs is not None and have < len(keys):
        # Host/SSD tier: blocks this worker published earlier and its engine evicted since.
        result.store_blocks = kvs.local_prefix(
            keys[have:], lambda blocks: _import(plugin, blocks)
        ).num_blocks
        if result.store_blocks:
            for tier in kvs.store.match_prefix(keys[have : have + result.store_blocks]).tiers:
                result.store_tiers[tier] = result.store_tiers.get(tier, 0) + 1
        have += result.store_blocks
        plugin.hit_blocks["store"] += result.store_blocks
    if (
        placement.fetch_from
        and placement.fetch_from != plugin.worker.address
        and placement.fetch_blocks > have
    ):
        want = keys[have : placement.fetch_blocks]
        got, nbytes = 0, 0
        peer = plugin.peer_of(placement.fetch_from) if kvs is not None else None
        if kvs is not None and peer is not None:
            f = kvs.fetch(want, peer, lambda blocks: _import(plugin, blocks))
            got, nbytes = f.num_blocks, f.nbytes
            plugin.prefix_fetch_paths.update(f.paths[:got])
        if got < len(want):
            # Not in the peer's store (or no store): ask its engine for what it still caches.
            try:
                reply = _rpc(
                    placement.fetch_from,
                    "mooncake_fetch_blocks",
                    keys=keys[: placement.fetch_blocks],
                    token_ids=spec.prompt_token_ids,
                )
                blocks = reply["blocks"][have + got :]
                imported = _import(plugin, blocks)
                got += imported
                plugin.prefix_fetch_paths["dask"] += imported
                nbytes += sum(b.data.nbytes for b in blocks)
            except Exception:
                pass
        result.fetched_blocks = got
        plugin.hit_blocks["remote"] += got
        if nbytes:
            plugin.transfer_reports.append((nbytes, time.perf_counter() - t0))
            plugin.transfer_log.append(("prefix-fetch", nbytes, time.perf_counter() - t0))
    result.fetch_seconds = time.perf_counter() - t0
    if done is None:
        done = _watch_and_add(spec, prefill_only=prefill_only, plugin=plugin)
    plugin.started[spec.request_id] = (done, time.perf_counter())
    # An abort that came while the lookup ran takes the request out again.
    plugin.apply(plugin.on_event(request_state.LookupDone(spec.request_id, time.monotonic())))
    return result


def _arrived(
    plugin: MooncakeWorker, rid: str, step: request_state.Step, peer: str | None = None
) -> None:
    """A task of the request started here; it fails at once when the request was aborted."""
    for ins in plugin.on_event(request_state.TaskArrived(rid, step, time.monotonic(), peer)):
        if isinstance(ins, request_state.FailTask):
            raise RequestAborted(rid)


def _ended(
    plugin: MooncakeWorker, rid: str, fut: concurrent.futures.Future[RequestOutput]
) -> RequestOutput:
    """Wait for the engine's end of the request and tell the request state how it ended."""
    try:
        out = _wait(fut)
    except RequestAborted:
        raise
    except BaseException as e:
        plugin.apply(plugin.on_event(request_state.EngineFailed(rid, str(e), time.monotonic())))
        raise
    return out


def _import(plugin: MooncakeWorker, blocks: list[Any]) -> int:
    """Copy blocks into this worker's engine prefix cache (on the engine thread, while
    the caller keeps their memory alive). Returns how many are now usable."""
    if not blocks:
        return 0
    plugin.engine.call("import_blocks", blocks).result()
    return len(blocks)


def _started(
    spec: RequestSpec, prefill_only: bool
) -> tuple[concurrent.futures.Future[RequestOutput], float]:
    """The engine future that lookup started for this request (or start it now)."""
    plugin = _plugin()
    got = plugin.started.pop(spec.request_id, None)
    return (
        got
        if got is not None
        else (_watch_and_add(spec, prefill_only=prefill_only), time.perf_counter())
    )


def _admission(
    spec: RequestSpec,
    prefill_only: bool,
    cached: int | None = None,
    kv: Any = None,
    prior: list[int] | None = None,
    prior_logprobs: list[dict[int, float]] | None = None,
) -> AddRequest:
    """What the engine admits: prefill runs the first token only (and keeps the KV);
    the watch says how the request is reported."""
    params = spec.params
    if prefill_only:
        params = dataclasses.replace(params, max_tokens=1, min_tokens=min(params.min_tokens, 1))
    watch = Watch(
        spec.stream_topic,
        spec.stream_addr,
        spec.stream_key,
        prefill_only=prefill_only,
        final_max_tokens=spec.params.max_tokens,
        num_cached_tokens=cached,
    )
    return AddRequest(
        spec.request_id,
        spec.prompt_token_ids,
        params,
        watch,
        cache_salt=spec.cache_salt,
        keep_kv=prefill_only,
        kv=kv,
        prior_output_ids=prior or (),
        prior_logprobs=prior_logprobs,
    )


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
    return plugin.engine.add(_admission(spec, prefill_only, cached, kv, prior, prior_logprobs))


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
    in this worker's outbox for the decode worker."""
    plugin = _plugin()
    spec = lookup_result.spec
    _arrived(plugin, spec.request_id, "prefill")
    fut, t0 = _started(spec, prefill_only=True)
    out = _ended(plugin, spec.request_id, fut)
    plugin.engine.token_times.pop(spec.request_id, None)
    seconds = _compute_seconds(out, time.perf_counter() - t0)
    plugin.report_lookup(spec, lookup_result, out.num_cached_tokens)
    first = out.token_ids
    finished = out.finish_reason in ("stop", "abort") or (
        spec.params.max_tokens is not None and spec.params.max_tokens <= len(first)
    )
    export = plugin.engine.call("export_kv", spec.request_id).result()
    kvs = plugin.kv_store
    if kvs is not None:
        kvs.put(export.blocks)  # full blocks: decode pulls them, later requests reuse them
    elif not finished:
        plugin.outbox[spec.request_id] = export
    kept = kvs is None and not finished
    ev = (
        request_state.Prefilled(spec.request_id, time.monotonic(), lookup_result.placement.decode)
        if kept
        else request_state.EngineFinished(spec.request_id, time.monotonic())
    )
    plugin.apply(plugin.on_event(ev))
    plugin.prefill_reports.append(
        (spec.request_id, len(spec.prompt_token_ids), out.num_cached_tokens, seconds)
    )
    first_token_wall = out.metrics.first_token_time
    if first_token_wall is not None:
        first_token_wall += time.time() - time.perf_counter()
    return KVHandle(
        spec=spec,
        placement=lookup_result.placement,
        worker=plugin.worker.address,
        first_token_time=first_token_wall,
        num_tokens=export.num_tokens,
        first_token_ids=list(first),
        first_logprobs=out.outputs[0].logprobs,
        block_keys=[b.key for b in export.blocks if b.key is not None],
        peer=kvs.peer if kvs is not None else None,
        num_cached_tokens=out.num_cached_tokens,
        prefill_seconds=seconds,
        queue_seconds=_queue_seconds(out),
        finished=finished,
        output=_wall_metrics(out, spec, out.num_cached_tokens) if finished else None,
    )


def transfer(handle: KVHandle) -> TransferResult:
    """Bring the request's KV to this (decode) worker: a local hand-over when prefill ran
    here, else a pull over TCP. A failed pull is a miss: decode then recomputes."""
    plugin = _plugin()
    rid = handle.spec.request_id
    if handle.finished:
        return TransferResult(handle, path="none")
    _arrived(plugin, rid, "transfer", handle.worker)
    try:
        return _transfer(plugin, handle, rid)
    finally:
        plugin.on_event(request_state.HandedOff(rid, time.monotonic()))


def _transfer(plugin: MooncakeWorker, handle: KVHandle, rid: str) -> TransferResult:
    t0 = time.perf_counter()
    kvs = plugin.kv_store
    if handle.peer is not None and kvs is not None:
        # Through the store: the peer's host tier (same host, zero copy) or its block
        # server. Blocks land in this engine's prefix cache; decode computes the tail.
        f = kvs.fetch(
            [BlockKey(k) for k in handle.block_keys],
            handle.peer,
            lambda blocks: _import(plugin, blocks),
        )
        seconds = time.perf_counter() - t0
        if f.nbytes and "shm" not in f.paths:
            plugin.transfer_reports.append((f.nbytes, seconds))
        path = "+".join(sorted(set(f.paths))) if f.num_blocks == len(handle.block_keys) else "miss"
        plugin.transfer_log.append((path, f.nbytes, seconds))
        plugin.transfer_paths[path] += 1
        return TransferResult(handle, nbytes=f.nbytes, seconds=seconds, path=path)
    if handle.worker == plugin.worker.address:
        export = plugin.outbox.pop(rid, None)
        path = "local"
    else:
        try:
            reply = _rpc(handle.worker, "mooncake_fetch_kv", request_id=rid)
            export = reply["export"] if reply["found"] else None
        except Exception:
            export = None
        path = "dask"
    seconds = time.perf_counter() - t0
    if export is None:
        return TransferResult(handle, path="miss", seconds=seconds)
    plugin.inbox[rid] = export
    nbytes = sum(b.data.nbytes for b in export.blocks)
    plugin.transfer_log.append((path, nbytes, seconds))
    if path == "dask":
        plugin.transfer_reports.append((nbytes, seconds))
    return TransferResult(handle, nbytes=nbytes, seconds=seconds, path=path)


def decode(tr: TransferResult) -> RequestOutput:
    """Join this worker's continuous batch with the imported KV and run to the end."""
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
    export = plugin.inbox.pop(spec.request_id, None)
    plugin.decode_joins.append(spec.request_id)
    # On a miss the prompt is recomputed here (prefix cache permitting); the first token
    # is kept, so the output is the same.
    out = _ended(
        plugin,
        spec.request_id,
        _watch_and_add(
            spec,
            prefill_only=False,
            kv=export,
            prior=handle.first_token_ids,
            prior_logprobs=handle.first_logprobs,
            cached=handle.num_cached_tokens,
        ),
    )
    plugin.on_event(request_state.EngineFinished(spec.request_id, time.monotonic()))
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


def generate(lookup_result: LookupResult) -> RequestOutput:
    """Colocated mode: prefill and decode in this worker's engine, one request."""
    plugin = _plugin()
    spec = lookup_result.spec
    _arrived(plugin, spec.request_id, "generate")
    fut, t0 = _started(spec, prefill_only=False)
    out = _ended(plugin, spec.request_id, fut)
    plugin.on_event(request_state.EngineFinished(spec.request_id, time.monotonic()))
    token_times = plugin.engine.token_times.pop(spec.request_id, [])
    seconds = _compute_seconds(out, time.perf_counter() - t0)
    plugin.prefill_reports.append(
        (spec.request_id, len(spec.prompt_token_ids), out.num_cached_tokens, seconds)
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
    from mooncake.worker.plugin import PLUGIN_NAME

    info: dict[str, Any] = dask_worker.plugins[PLUGIN_NAME].info()
    return info


def engine_stats(dask_worker: Any) -> dict[str, Any]:
    """This worker's engine counters and pool state (run with ``Client.run``)."""
    from mooncake.worker.plugin import PLUGIN_NAME

    plugin = dask_worker.plugins[PLUGIN_NAME]
    stats: dict[str, Any] = plugin.engine.call("stats").result()
    return {
        "host_blocks": len(plugin.kv_store.store.keys("host"))
        if plugin.kv_store is not None
        else 0,
        "transfer_paths": dict(plugin.transfer_paths),
        "prefix_fetch_paths": dict(plugin.prefix_fetch_paths),
        "hit_blocks": dict(plugin.hit_blocks),
        **stats,
    }


__all__ = ["decode", "engine_stats", "generate", "lookup", "prefill", "transfer", "worker_info"]
