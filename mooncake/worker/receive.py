"""The decode side of a hand-off: bring a request's KV to this (decode) worker and
admit the request into its engine.

Run by the transfer task, or, for a request moved off a lost worker, at placement by the
plugin's resume threads (the Conductor's ``mooncake-resume``; the "early resume"), whose
result the transfer task then collects. Neither the plugin nor this module imports the
task functions (``tasks`` imports both), so there is no import circle.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING

from mooncake.outputs import RequestOutput
from mooncake.transfer import Peer
from mooncake.transfer.base import local_host_id
from mooncake.types import BlockKey
from mooncake.worker import request_state
from mooncake.worker.engine_loop import AddRequest, RequestAborted
from mooncake.worker.kv_store import Fetched, KVStore
from mooncake.worker.kv_stream import Streamed
from mooncake.worker.lookup import admission, import_blocks
from mooncake.worker.messages import KVHandle, TransferResult
from mooncake.worker.rpc import rpc

if TYPE_CHECKING:
    from mooncake.worker.plugin import MooncakeWorker

logger = logging.getLogger(__name__)


def receive(plugin: MooncakeWorker, handle: KVHandle) -> TransferResult:
    """Bring the request's KV here (a local hand-over when prefill ran here, the
    prefill worker's store, or a pull over Dask; a failed pull is a miss: decode then
    recomputes) and admit the request into the engine at once: from the prefill
    worker's host tier on this host, in the same engine command as the import. Blocks
    (run in a worker thread)."""
    rid = handle.spec.request_id
    try:
        result, fut = _transfer(plugin, handle, rid)
    finally:
        plugin.requests.handle(request_state.HandedOff(rid, time.monotonic()))
    if fut is None:
        fut = start_decode(plugin, handle)
    plugin.requests.futures.set_started(rid, fut, time.perf_counter())
    # An abort that came meanwhile takes it out of the engine again.
    plugin.requests.handle(request_state.DecodeStarted(rid, time.monotonic()))
    return result


def start_decode(
    plugin: MooncakeWorker, handle: KVHandle
) -> concurrent.futures.Future[RequestOutput]:
    """Admit the request into this engine's batch as soon as its KV is here, so its next
    token does not wait for the scheduler to dispatch the decode task (a resumed
    request's first token after a move waited on that round trip); the decode task
    owns and waits for the result, as ``lookup`` does for prefill."""
    return plugin.engine.add(_decode_admission(plugin, handle))


def _decode_admission(plugin: MooncakeWorker, handle: KVHandle) -> AddRequest:
    """What the decode engine admits: the prompt, the tokens prefill generated, and the
    KV that came over Dask (none when it came through the store)."""
    spec = handle.spec
    export = plugin.requests.handoff.take_incoming(spec.request_id)
    return admission(
        spec,
        False,
        handle.num_cached_tokens,
        export,
        handle.first_token_ids,
        handle.first_logprobs,
    )


def _transfer(
    plugin: MooncakeWorker, handle: KVHandle, rid: str
) -> tuple[TransferResult, concurrent.futures.Future[RequestOutput] | None]:
    """Bring the KV here; returns what moved and the request's engine future when the
    request was admitted with its import (None: admit it now)."""
    t0 = time.perf_counter()
    kvs = plugin.kv_store
    streamed = plugin.streams.take(rid) if plugin.streams is not None else None
    if handle.peer is not None and kvs is not None:
        # Through the store: the peer's host tier (same host: the engine reads it in
        # place) or its block server. Blocks land in this engine's prefix cache; decode
        # computes the tail. What streamed in during prefill is not fetched again.
        keys = [BlockKey(k) for k in handle.block_keys]
        n = 0
        fut = None
        try:
            n = _streamed_prefix(plugin, streamed, keys, handle.first_token_time)
            records = handle.records
            offsets = (
                records.offsets[n:]
                if records is not None and len(records.offsets) == len(keys)
                else None
            )
            pool = handle.pool
            whole = pool is not None and len(pool.block_ids) == len(keys)
            pool_ids = pool.block_ids[n:] if pool is not None and whole else None
            f, fut = _fetch_handoff(
                plugin, kvs, keys[n:], handle.peer, rid, handle, offsets, pool_ids, n
            )
        finally:
            # Fetched (or missed: decode recomputes): the prefill side may evict them now.
            _release_handoff(plugin, handle, rid)
        seconds = time.perf_counter() - t0
        if f.nbytes and "shm" not in f.paths:
            # The cost model learns the bandwidth of what this task moved, not the stream's.
            plugin.reports.transfer(f.nbytes, seconds)
        if streamed is not None and plugin.streams is not None:
            plugin.streams.counts["transfer"] += f.num_blocks
            f = Fetched(n + f.num_blocks, streamed.nbytes + f.nbytes, streamed.paths[:n] + f.paths)
        path = "+".join(sorted(set(f.paths))) if f.num_blocks == len(handle.block_keys) else "miss"
        plugin.reports.transfer_log(path, f.nbytes, seconds)
        plugin.transfer_paths[path] += 1
        result = TransferResult(
            handle, nbytes=f.nbytes, seconds=seconds, path=path, num_blocks=f.num_blocks
        )
        return result, fut
    if handle.worker == plugin.worker.address:
        export = plugin.requests.handoff.take_outgoing(rid)
        path = "local"
    else:
        try:
            reply = rpc(handle.worker, "mooncake_fetch_kv", on=plugin.worker, request_id=rid)
            export = reply["export"] if reply["found"] else None
        except Exception:
            export = None
        path = "dask"
    seconds = time.perf_counter() - t0
    if export is None:
        return TransferResult(handle, path="miss", seconds=seconds), None
    plugin.requests.handoff.receive(rid, export)
    nbytes = sum(b.data.nbytes for b in export.blocks)
    plugin.reports.transfer_log(path, nbytes, seconds)
    if path == "dask":
        plugin.reports.transfer(nbytes, seconds)
    return (
        TransferResult(
            handle, nbytes=nbytes, seconds=seconds, path=path, num_blocks=len(export.blocks)
        ),
        None,
    )


def _streamed_prefix(
    plugin: MooncakeWorker, streamed: Streamed | None, keys: list[BlockKey], prefilled: float | None
) -> int:
    """How many leading hand-off blocks the request's stream already imported (0 when
    its keys are not the prefill's: then everything is fetched); counted by when."""
    if streamed is None or plugin.streams is None:
        return 0
    n = min(streamed.blocks, len(keys))
    if streamed.keys[:n] != keys[:n]:
        logger.warning("streamed blocks are not the prefill's: fetching them all")
        return 0
    during = min(n, streamed.before(prefilled))
    plugin.streams.counts["during_prefill"] += during
    plugin.streams.counts["after_prefill"] += n - during
    return n


def _fetch_handoff(
    plugin: MooncakeWorker,
    kvs: KVStore,
    keys: list[BlockKey],
    peer: Peer,
    rid: str,
    handle: KVHandle,
    offsets: list[int] | None = None,
    pool_ids: list[int] | None = None,
    first: int = 0,
) -> tuple[Fetched, concurrent.futures.Future[RequestOutput] | None]:
    """:func:`_fetch_handoff_blocks`, its start and end recorded in the worker's
    ``handoff_times``. Same host, with ``handle.pool`` (``pool_ids``: ``keys``' pool
    blocks; ``keys`` start at block ``first`` of the prompt): the engine copies them
    from the prefill engine's shared pool; else, with ``handle.records`` (``offsets``:
    of ``keys``' records), it imports from the prefill worker's export arena first
    (either way admitting the request in the same command when every block was there)."""
    plugin.handoff_times.mark(rid, "fetch_start")
    f: Fetched = Fetched(0, 0, [])
    fut = None
    records = handle.records
    pool = handle.pool
    if (
        pool is not None
        and pool_ids is not None
        and keys
        and pool.host_id == local_host_id()
        and kvs.same_host_tier(peer) is not None
    ):
        bs = plugin.block_size
        tokens = handle.spec.prompt_token_ids[first * bs : (first + len(keys)) * bs]
        try:
            until = kvs.peer_handoff_expiry(peer, rid)
        except Exception as e:  # unreadable lease table: not this way
            logger.debug("lease of %s unreadable: %s", rid, e)
            until = None
        if until is not None:
            f, fut = _import_from_pool(
                plugin, pool.path, pool_ids, keys, tokens, until - POOL_COPY_MARGIN_S, handle
            )
    if (
        fut is None
        and not f.num_blocks
        and records is not None
        and offsets is not None
        and records.host_id == local_host_id()
        and kvs.same_host_tier(peer) is not None
    ):
        f, fut = _import_from_arena(plugin, records.path, keys, offsets, handle)
    if fut is None and f.num_blocks < len(keys):
        rest, fut = _fetch_handoff_blocks(plugin, kvs, keys[f.num_blocks :], peer, handle)
        f = Fetched(f.num_blocks + rest.num_blocks, f.nbytes + rest.nbytes, f.paths + rest.paths)
    plugin.handoff_times.mark(rid, "imported", f.nbytes, f.num_blocks)
    return f, fut


POOL_COPY_MARGIN_S = 1.0
"""A pool -> pool copy starts at least this long before the prefill side's lease (its
hold of the source blocks) expires; the copy itself takes milliseconds."""


def _import_from_pool(
    plugin: MooncakeWorker,
    path: str,
    pool_ids: list[int],
    keys: list[BlockKey],
    tokens: list[int],
    deadline: float,
    handle: KVHandle,
) -> tuple[Fetched, concurrent.futures.Future[RequestOutput] | None]:
    """The engine copies ``keys`` from pool blocks ``pool_ids`` of the prefill engine's
    shared pool at ``path`` (one copy per block, ``mooncake.worker.pool_handoff``) and,
    when all are here, admits the request in the same command (returned: its future).
    The copy starts only before ``deadline`` (``time.monotonic``): the prefill engine
    holds the blocks until its lease ends, and the bytes carry no checksum. Nothing
    here when the pool does not suit or it is too late."""
    try:
        (found, _, nbytes), fut = plugin.engine.import_from_pool_and_add(
            path, pool_ids, keys, tokens, deadline, _decode_admission(plugin, handle)
        )
    except RequestAborted:
        raise
    except Exception as e:  # the pool file is gone (its worker left): another way
        logger.debug("import from %s failed: %s", path, e)
        return Fetched(0, 0, []), None
    if fut is not None:
        plugin.pool_imports += 1
    return Fetched(found, nbytes, ["shm"] * found), fut


def _import_from_arena(
    plugin: MooncakeWorker, path: str, keys: list[BlockKey], offsets: list[int], handle: KVHandle
) -> tuple[Fetched, concurrent.futures.Future[RequestOutput] | None]:
    """The engine imports ``keys`` from the records at ``offsets`` of the prefill
    worker's export arena at ``path`` (one copy per block, checked on the way) and, when
    all were there intact, admits the request in the same command (returned: its
    future)."""
    if not keys:
        return Fetched(0, 0, []), None
    try:
        (found, _, nbytes), fut = plugin.engine.import_from_records_and_add(
            path, keys, offsets, _decode_admission(plugin, handle)
        )
    except RequestAborted:
        raise
    except Exception as e:  # the arena is gone (its worker left): the store's way
        logger.debug("import from %s failed: %s", path, e)
        return Fetched(0, 0, []), None
    return Fetched(found, nbytes, ["shm"] * found), fut


def _fetch_handoff_blocks(
    plugin: MooncakeWorker, kvs: KVStore, keys: list[BlockKey], peer: Peer, handle: KVHandle
) -> tuple[Fetched, concurrent.futures.Future[RequestOutput] | None]:
    """Bring ``keys`` from ``peer`` into this engine's prefix cache. Same host: the
    engine imports them from the peer's host tier itself (one copy per block, tier ->
    pool) and, when all were there, admits the request in the same command (returned:
    its future); whatever is not there intact, and every block from another host, comes
    through the fetcher (TCP/RDMA into a receive buffer, then the engine channel)."""
    found, nbytes, paths = 0, 0, []
    if not keys:
        return Fetched(0, 0, []), None
    tier = kvs.same_host_tier(peer)
    if tier is not None:
        try:
            (found, _, nbytes), fut = plugin.engine.import_from_tier_and_add(
                tier, keys, _decode_admission(plugin, handle)
            )
        except RequestAborted:
            raise
        except Exception as e:  # unreadable tier: the fetcher's paths still apply
            logger.debug("import from %s failed: %s", tier, e)
            fut = None
        paths = ["shm"] * found
        if fut is not None:
            return Fetched(found, nbytes, paths), fut
    if found == len(keys):
        return Fetched(found, nbytes, paths), None
    rest = kvs.fetch(keys[found:], peer, lambda blocks: import_blocks(plugin, blocks, True))
    return Fetched(found + rest.num_blocks, nbytes + rest.nbytes, paths + rest.paths), None


def _release_handoff(plugin: MooncakeWorker, handle: KVHandle, rid: str) -> None:
    """Release the prefill worker's lease on the request's blocks: in its lease table
    when that is on this host, else by a message to it, sent without waiting (if it is
    lost, the lease expires)."""
    kvs = plugin.kv_store
    assert kvs is not None and handle.peer is not None
    try:
        if kvs.release_peer_handoff(handle.peer, rid) is not None:
            return
    except Exception as e:  # lmdb errors: the lease expires instead
        logger.debug("releasing the hand-off lease of %s failed: %s", rid, e)
        return
    worker = plugin.worker

    async def tell() -> None:
        try:
            await worker.rpc(handle.worker).mooncake_release_handoff(request_id=rid)
        except Exception as e:  # gone: nothing to release there
            logger.debug("releasing hand-off lease %s on %s failed: %s", rid, handle.worker, e)

    worker.loop.add_callback(tell)


__all__ = ["receive", "start_decode"]
