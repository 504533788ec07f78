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
from mooncake.types import BlockKey
from mooncake.worker import request_state
from mooncake.worker.engine_loop import AddRequest
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
    recomputes) and admit the request into the engine at once. Blocks (run in a
    worker thread)."""
    rid = handle.spec.request_id
    admitted: list[concurrent.futures.Future[RequestOutput]] = []
    try:
        result = _transfer(plugin, handle, rid, admitted)
    finally:
        plugin.requests.handle(request_state.HandedOff(rid, time.monotonic()))
    # Admitted with its blocks' import (the same engine command) when its prefill
    # worker's host tier held them all; else now.
    fut = admitted[0] if admitted else start_decode(plugin, handle)
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
    export = plugin.requests.handoff.take_incoming(handle.spec.request_id)
    return plugin.engine.add(_admission(handle, export))


def _admission(handle: KVHandle, export: object = None) -> AddRequest:
    """What the engine admits for a request whose KV came with ``handle``."""
    return admission(
        handle.spec,
        False,
        handle.num_cached_tokens,
        export,
        handle.first_token_ids,
        handle.first_logprobs,
    )


def _transfer(
    plugin: MooncakeWorker,
    handle: KVHandle,
    rid: str,
    admitted: list[concurrent.futures.Future[RequestOutput]],
) -> TransferResult:
    """Bring the KV here; ``admitted`` receives the request's engine future when it was
    admitted along with the import (see ``_fetch_handoff_blocks``)."""
    t0 = time.perf_counter()
    kvs = plugin.kv_store
    streamed = plugin.streams.take(rid) if plugin.streams is not None else None
    if handle.peer is not None and kvs is not None:
        # Through the store: the peer's host tier (same host: the engine reads it in
        # place) or its block server. Blocks land in this engine's prefix cache; decode
        # computes the tail. What streamed in during prefill is not fetched again.
        keys = [BlockKey(k) for k in handle.block_keys]
        n = 0
        try:
            n = _streamed_prefix(plugin, streamed, keys, handle.first_token_time)
            f = _fetch_handoff(plugin, kvs, keys[n:], handle.peer, rid, handle, admitted)
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
        return TransferResult(
            handle, nbytes=f.nbytes, seconds=seconds, path=path, num_blocks=f.num_blocks
        )
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
        return TransferResult(handle, path="miss", seconds=seconds)
    plugin.requests.handoff.receive(rid, export)
    nbytes = sum(b.data.nbytes for b in export.blocks)
    plugin.reports.transfer_log(path, nbytes, seconds)
    if path == "dask":
        plugin.reports.transfer(nbytes, seconds)
    return TransferResult(
        handle, nbytes=nbytes, seconds=seconds, path=path, num_blocks=len(export.blocks)
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
    rid: str = "",
    handle: KVHandle | None = None,
    admitted: list[concurrent.futures.Future[RequestOutput]] | None = None,
) -> Fetched:
    """:func:`_fetch_handoff_blocks`, its start and end recorded in the worker's
    ``handoff_times``."""
    plugin.handoff_times.mark(rid, "fetch_start")
    f = _fetch_handoff_blocks(plugin, kvs, keys, peer, handle, admitted)
    plugin.handoff_times.mark(rid, "imported", f.nbytes, f.num_blocks)
    return f


def _fetch_handoff_blocks(
    plugin: MooncakeWorker,
    kvs: KVStore,
    keys: list[BlockKey],
    peer: Peer,
    handle: KVHandle | None = None,
    admitted: list[concurrent.futures.Future[RequestOutput]] | None = None,
) -> Fetched:
    """Bring ``keys`` from ``peer`` into this engine's prefix cache. Same host: the
    engine imports them from the peer's host tier itself (one copy per block, tier ->
    pool); whatever is not there intact, and every block from another host, comes
    through the fetcher (TCP/RDMA into a receive buffer, then the engine channel).
    With ``handle`` and ``admitted``, a same-host import that finds every block admits
    the request in the same engine command (its future goes to ``admitted``)."""
    found, nbytes, paths = 0, 0, []
    if not keys:
        return Fetched(0, 0, [])
    tier = kvs.same_host_tier(peer)
    if tier is not None and handle is not None and admitted is not None:
        fut, (found, _, nbytes) = plugin.engine.import_and_add(tier, keys, _admission(handle))
        if fut is not None:
            admitted.append(fut)
        paths = ["shm"] * found
    elif tier is not None:
        try:
            found, _, nbytes = plugin.engine.call("import_from_tier", tier, keys, True).result()
        except Exception as e:  # unreadable tier: the fetcher's paths still apply
            logger.debug("import from %s failed: %s", tier, e)
        paths = ["shm"] * found
    if found == len(keys):
        return Fetched(found, nbytes, paths)
    rest = kvs.fetch(keys[found:], peer, lambda blocks: import_blocks(plugin, blocks, True))
    return Fetched(found + rest.num_blocks, nbytes + rest.nbytes, paths + rest.paths)


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
