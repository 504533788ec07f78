"""Streaming the hand-off while prefill runs (``WorkerConfig.stream_kv``).

Without it the decode side's ``transfer`` task starts after the whole prefill, and the
request's KV moves while nothing else happens for it. With it:

- **prefill side** (:func:`publish_while_prefilling`, run by the ``prefill`` task while
  it waits for its engine): after each engine step the blocks the prompt's chunks
  filled since the last look are written as store records into the export arena,
  leased for the request and put into the host tier;
- **decode side** (:class:`StreamImports`): the Conductor tells the decode worker of the
  request at placement (``mooncake-stream``), and a thread of this worker imports the
  leading run of the prompt's blocks as they appear there: on the same host straight
  from the prefill worker's host tier (checked in place), from another host by asking
  its block server (TCP or RDMA, checked on arrival). LMDB commits a record whole and
  the transfer paths return only blocks whose checksum holds, so a half-written or
  half-received block is never imported.
- the ``transfer`` task then stops the stream (:meth:`StreamImports.take`) and fetches
  only the blocks that had not landed yet: those of the last chunk, usually.

The unit of streaming is a prefill chunk (``EngineConfig.long_prefill_chunk``), not a
layer: the engine computes a chunk's layers in one step and the store's records are
whole blocks of all layers.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mooncake.kvcache.block import PackedExport
from mooncake.outputs import RequestOutput
from mooncake.types import BlockKey
from mooncake.worker.arena_export import (
    ENGINE_CALL_TIMEOUT_S,
    export_to_region,
    record_bytes_per_block,
)
from mooncake.worker.kv_store import KVStore
from mooncake.worker.lookup import import_blocks, prompt_keys
from mooncake.worker.messages import PlacementInfo, RequestSpec

if TYPE_CHECKING:
    from mooncake.worker.plugin import MooncakeWorker

logger = logging.getLogger(__name__)

MAX_STREAMS = 8
"""Requests one decode worker streams at once; later ones wait for a thread (their
transfer task fetches whatever did not stream)."""
STREAM_DEADLINE_S = 60.0
"""A stream gives up this long after it started (its transfer task never came)."""
TAKE_TIMEOUT_S = 10.0
"""How long the transfer task waits for a stream's import in flight to end."""
WINDOW_BLOCKS = 128
"""Blocks one look asks for at most: a look costs a lookup per key asked (most of them
not there yet), and a full window is followed by the next look at once."""


# -- prefill side -------------------------------------------------------------------------
def export_packed(
    plugin: MooncakeWorker,
    kvs: KVStore,
    spec: RequestSpec,
    *,
    first: int = 0,
    release: bool = True,
    lease: bool = True,
    more: bool = False,
) -> PackedExport | None:
    """Have the engine write the request's full blocks from block ``first`` on as store
    records into the export arena, lease them (``lease``: a decode side will fetch them;
    ``more``: added to the request's lease) and publish them: each block is copied from
    the engine's pool into the arena, then by LMDB into the host tier. ``release``: the
    engine frees a finished (held) request's blocks afterwards.

    A prompt whose blocks do not fit in the arena at once goes in several rounds, each
    as large as the arena lends (an 8,192-token prompt of the 57M model is 64 MiB of
    KV, the default arena's size). Returns what was published (``keys``,
    ``num_tokens``, ``first``; offsets are of the last round), ``None`` when the arena
    had no room for the first round (nothing exported: export the old way). When a
    later round finds no room, the result stops short of the last full block (those
    published stay leased; the caller exports the rest the old way)."""
    arena = kvs.arena
    if arena is None:
        return None
    info = plugin.engine.info
    per = record_bytes_per_block(plugin, kvs)
    left = len(spec.prompt_token_ids) // plugin.block_size - first
    most = arena.most_records(per)
    rid = spec.request_id
    out: PackedExport | None = None
    while True:
        want = max(1, min(left, most))
        region = arena.alloc(want * per)
        while region is None and want > 1:  # other exports hold part of it: take less
            want //= 2
            region = arena.alloc(want * per)
        if region is None:
            return out
        plugin.handoff_times.mark(rid, "export_start")
        try:
            packed = export_to_region(plugin, kvs, rid, region, first, release)
            if packed is None:
                return out
            if packed.keys:
                if lease:
                    # Leased before they are stored: none evicted between "stored" and
                    # "fetched".
                    kvs.lease_handoff(rid, packed.keys, more=more or out is not None)
                kvs.put_packed(arena.view(region), packed)
                plugin.handoff_times.mark(
                    rid, "stored", len(packed.keys) * info["kv_bytes_per_block"], len(packed.keys)
                )
        finally:
            arena.free(region)
        out = (
            packed
            if out is None
            else PackedExport(
                out.keys + packed.keys, packed.offsets, packed.sizes, packed.num_tokens, out.first
            )
        )
        n = len(packed.keys)
        first += n
        left -= n
        # The engine wrote what it has; only a round that filled its region may have more.
        if n < want or left <= 0:
            return out


def publish_while_prefilling(
    plugin: MooncakeWorker,
    kvs: KVStore,
    spec: RequestSpec,
    fut: concurrent.futures.Future[RequestOutput],
    poll_s: float,
) -> list[BlockKey]:
    """Until the engine's prefill of ``spec`` ends (``fut``), publish the blocks each of
    its chunks filled (leased for the hand-off). Returns the keys published, the
    prompt's leading blocks in order; the caller exports the rest at the end.

    An export call waits for the engine's current step to end (the engine reads calls
    between steps), so each one sees the blocks of at most one more chunk."""
    keys: list[BlockKey] = []
    while not fut.done():
        try:
            packed = export_packed(
                plugin, kvs, spec, first=len(keys), release=False, more=bool(keys)
            )
        except Exception as e:  # finished or aborted meanwhile: the end says which
            logger.debug("streamed export of %s stopped: %s", spec.request_id, e)
            break
        if packed is None:  # no room in the arena: the end exports the rest
            break
        if packed.keys:
            keys += packed.keys
        else:
            concurrent.futures.wait([fut], timeout=poll_s)
    return keys


# -- decode side ----------------------------------------------------------------------------
@dataclass
class Streamed:
    """What a stream imported into the decode engine before the transfer task took over."""

    keys: list[BlockKey]
    """The prompt's full-block keys, as this worker hashed them."""
    blocks: int = 0
    """Leading blocks of ``keys`` imported."""
    nbytes: int = 0
    paths: list[str] = field(default_factory=list)
    imports: list[tuple[float, int]] = field(default_factory=list)
    """(wall-clock time, blocks) of each import."""

    def before(self, wall: float | None) -> int:
        """Blocks imported before ``wall`` (e.g. the prefill's first token)."""
        if wall is None:
            return 0
        return sum(n for t, n in self.imports if t < wall)


class _Stream:
    def __init__(self, keys: list[BlockKey]) -> None:
        self.result = Streamed(keys)
        self.stop = threading.Event()
        self.done = threading.Event()


class StreamImports:
    """A decode worker's streams, one per request placed on it with a prefill elsewhere.

    Args:
        plugin: the worker (its engine, store and peers).
        poll_s: pause between looks when no new block had appeared.
    """

    def __init__(self, plugin: MooncakeWorker, poll_s: float) -> None:
        self._plugin = plugin
        self.poll_s = poll_s
        self._pool = concurrent.futures.ThreadPoolExecutor(
            MAX_STREAMS, thread_name_prefix="mooncake-stream"
        )
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self.counts: Counter[str] = Counter()
        """Decode side: blocks the hand-off brought, by when: ``during_prefill`` (streamed
        before the prefill's first token), ``after_prefill`` (streamed later),
        ``transfer`` (left to the transfer task). Prefill side:
        ``published_during_prefill`` (blocks published before the prefill ended)."""

    def start(self, spec: RequestSpec, placement: PlacementInfo) -> None:
        """Begin importing ``spec``'s prompt blocks as the prefill worker publishes them."""
        plugin = self._plugin
        kvs = plugin.kv_store
        if kvs is None or placement.prefill == plugin.worker.address:
            return
        keys = prompt_keys(plugin, spec)
        if not keys:
            return
        s = _Stream(keys)
        with self._lock:
            if spec.request_id in self._streams:
                return
            self._streams[spec.request_id] = s
        try:
            self._pool.submit(self._run, s, placement.prefill, kvs)
        except RuntimeError:  # shutting down
            s.done.set()

    def take(self, request_id: str) -> Streamed | None:
        """Stop ``request_id``'s stream and return what it imported (``None``: none ran
        here, or its last import did not end in time)."""
        with self._lock:
            s = self._streams.pop(request_id, None)
        if s is None:
            return None
        s.stop.set()
        if not s.done.wait(TAKE_TIMEOUT_S):
            logger.warning("stream of %s still importing: the transfer fetches it all", request_id)
            return None
        return s.result

    def cancel(self, request_id: str) -> None:
        """Stop a stream whose request ended (aborted, dropped)."""
        with self._lock:
            s = self._streams.pop(request_id, None)
        if s is not None:
            s.stop.set()

    def close(self) -> None:
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for s in streams:
            s.stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, s: _Stream, prefill: str, kvs: KVStore) -> None:
        try:
            self._import(s, prefill, kvs)
        except Exception as e:  # the prefill worker left, an engine error: transfer copes
            logger.debug("stream from %s stopped: %s", prefill, e)
        finally:
            s.done.set()

    def _import(self, s: _Stream, prefill: str, kvs: KVStore) -> None:
        plugin = self._plugin
        peer = plugin.peer_of(prefill)
        if peer is None:
            return
        tier = kvs.same_host_tier(peer)
        r = s.result
        deadline = time.monotonic() + STREAM_DEADLINE_S
        while not s.stop.is_set() and r.blocks < len(r.keys) and time.monotonic() < deadline:
            rest = r.keys[r.blocks : r.blocks + WINDOW_BLOCKS]
            if tier is not None:
                # In place: the engine reads the prefill worker's tier, checking each record.
                found, _, nbytes = plugin.engine.call("import_from_tier", tier, rest, True).result(
                    ENGINE_CALL_TIMEOUT_S
                )
                path = "shm"
            else:
                f = kvs.poll(rest, peer, lambda blocks: import_blocks(plugin, blocks, True))
                found, nbytes = f.num_blocks, f.nbytes
                path = f.paths[0] if f.paths else ""
            if found:
                r.blocks += found
                r.nbytes += nbytes
                r.paths += [path] * found
                r.imports.append((time.time(), found))
            if found < len(rest):
                s.stop.wait(self.poll_s)


__all__ = [
    "StreamImports",
    "Streamed",
    "export_packed",
    "publish_while_prefilling",
]
