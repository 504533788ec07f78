"""The same-host hand-off served from the export arena: one copy per block per side.

The prefill engine writes a request's full blocks as store records into its worker's
export arena (``mooncake.store.shm_arena``), copying each out of its paged pool and
summing it in the same pass. Before, the worker then had LMDB copy every record into
the host tier, and the decode engine read the tier: two copies on the prefill side, and
the tier's put (about as long as the engine's copy) on the hand-off's critical path.

Now, when the request's decode worker is on this host, the region stays as it is:

- **prefill side** (:func:`export_for_handoff`): the records are leased for the request
  (``KVStore.lease_handoff``) and the region is *held* (:class:`ArenaHandoffs`); the
  handle tells the decode worker where each record is (``KVHandle.records``);
- **decode side** (``receive``): its engine maps the arena and copies each payload into
  a free pool block, summing it on the way, and keeps it only when the sum is the
  header's (``LLMEngine.import_records``); then it releases the lease;
- **afterwards, off the critical path**: once the lease is released (or has expired),
  a thread of the prefill worker puts the records into the host tier, as before, so
  later requests still find the prefix there, and gives the region back.

A region is never reused while its lease is held, and a reader checks each record's
header (key, model, shape) and payload sum as it copies: a record half-written, or
overwritten after its lease expired, is never used. A hand-off whose decode worker is on
another host, one whose blocks do not fit in one free region, and a streamed one go the
store's way (the tier put before the handle is returned), unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mooncake.kvcache.block import PackedExport
from mooncake.store.shm_arena import Region
from mooncake.transfer.base import local_host_id
from mooncake.worker.arena_export import export_to_region, record_bytes_per_block
from mooncake.worker.messages import ArenaRecords, RequestSpec

if TYPE_CHECKING:
    from mooncake.worker.kv_store import KVStore
    from mooncake.worker.plugin import MooncakeWorker

logger = logging.getLogger(__name__)

POLL_S = 0.005
"""How often the holder looks for released leases while it holds a region (an LMDB
read per held request): a released region is put into the tier and reused this late."""


@dataclass
class _Held:
    region: Region | None
    packed: PackedExport
    holder: str
    deadline: float
    """``time.monotonic()`` after which the region is given back even if the lease
    table still names it (a lost lease table entry must not pin the arena)."""
    after: Callable[[bool], int] | None = None
    """A hold of the engine's own pool blocks (``pool_handoff``), no region: called
    once the lease is gone, with whether to put the blocks into the host tier; frees
    them in the engine and returns how many it put."""


class ArenaHandoffs:
    """Export-arena regions held for same-host decode engines, by request id.

    Args:
        kvs: the worker's store (its export arena, host tier and lease table).
        poll_s: see ``POLL_S``; ``None``: no thread, the owner calls :meth:`settle`
            (tests that must not race the thread).
    """

    def __init__(self, kvs: KVStore, poll_s: float | None = POLL_S) -> None:
        self._kvs = kvs
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._wake = threading.Event()
        self._stop = False
        self.put_after = 0
        """Blocks put into the host tier after their hand-off (off the critical path)."""
        self._thread: threading.Thread | None = None
        if poll_s is not None:
            self._thread = threading.Thread(
                target=self._run, args=(poll_s,), name="mooncake-arena-handoff", daemon=True
            )
            self._thread.start()

    def hold(self, request_id: str, region: Region, packed: PackedExport, holder: str) -> None:
        """Keep ``region`` (the request's records) until lease ``holder`` is released."""
        with self._lock:
            self._held[request_id] = _Held(
                region, packed, holder, time.monotonic() + self._kvs.lease_ttl_s
            )
        self._wake.set()

    def hold_pool(
        self, request_id: str, packed: PackedExport, holder: str, after: Callable[[bool], int]
    ) -> None:
        """Keep the request's blocks held in the prefill engine's pool until lease
        ``holder`` is released or expires, then ``after(put)`` (``pool_handoff``)."""
        with self._lock:
            self._held[request_id] = _Held(
                None, packed, holder, time.monotonic() + self._kvs.lease_ttl_s, after
            )
        self._wake.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)

    def settle(self) -> int:
        """Put and give back the regions whose lease is gone; returns how many."""
        now = time.monotonic()
        with self._lock:
            items = list(self._held.items())
        done = []
        for rid, h in items:
            try:
                until = self._kvs.leases.expiry(h.holder)
            except Exception as e:  # the table is closing: give the region back
                logger.debug("lease of %s unreadable: %s", rid, e)
                until = None
            if until is None or until <= now or now >= h.deadline:
                done.append(rid)
        for rid in done:
            with self._lock:
                h = self._held.pop(rid)
            self._settle(h)
        return len(done)

    def _settle(self, h: _Held) -> None:
        if h.after is not None:
            try:
                self.put_after += h.after(not self._stop)
            except Exception as e:  # a cache: the hand-off itself is done
                logger.warning("release after a pool hand-off failed: %s", e)
            return
        arena = self._kvs.arena
        assert arena is not None and h.region is not None
        try:
            if not self._stop:
                self._kvs.put_packed(arena.view(h.region), h.packed)
                self.put_after += len(h.packed.keys)
        except Exception as e:  # a cache: the hand-off itself is done
            logger.warning("host tier put after a hand-off failed: %s", e)
        finally:
            arena.free(h.region)

    def _run(self, poll_s: float) -> None:
        while not self._stop:
            if not len(self):
                self._wake.wait()
                self._wake.clear()
                continue
            self.settle()
            time.sleep(poll_s)

    def close(self) -> None:
        """Stop; regions still held are given back without a put."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for h in held:
            self._settle(h)


def export_for_handoff(
    plugin: MooncakeWorker, kvs: KVStore, spec: RequestSpec
) -> tuple[PackedExport, ArenaRecords] | None:
    """Have the engine write the request's full blocks as records into one region of the
    export arena, lease them for the request and hold the region for the decode engine
    on this host (see the module's docstring). ``None`` (nothing exported, nothing
    leased) when there is no room for all of them at once or no full block: the caller
    exports the store's way."""
    arena, held = kvs.arena, kvs.held
    if arena is None or held is None:
        return None
    info = plugin.engine.info
    per = record_bytes_per_block(plugin, kvs)
    want = len(spec.prompt_token_ids) // plugin.block_size
    if want <= 0:
        return None
    region = arena.alloc(want * per)
    if region is None:
        return None
    rid = spec.request_id
    plugin.handoff_times.mark(rid, "export_start")
    keep = False
    try:
        packed = export_to_region(plugin, kvs, rid, region)
        if packed is None or not packed.keys:
            return None
        if len(packed.keys) != packed.num_tokens // plugin.block_size:
            # Not every full block (the region holds all of the prompt's, so only a
            # longer sequence): the engine kept the request; the store's way exports it.
            return None
        # Leased before the handle leaves: the region is not reused until the decode
        # side is done with it.
        kvs.lease_handoff(rid, packed.keys)
        holder = kvs.handoff_holder(rid)
        held.hold(rid, region, packed, holder)
        keep = True
        plugin.handoff_times.mark(
            rid, "stored", len(packed.keys) * info["kv_bytes_per_block"], len(packed.keys)
        )
        return packed, ArenaRecords(
            arena.path, [region.offset + o for o in packed.offsets], local_host_id()
        )
    finally:
        if not keep:
            arena.free(region)


def same_host(plugin: MooncakeWorker, kvs: KVStore, address: str) -> bool:
    """Whether the worker at ``address`` (a request's decode worker) is on this host and
    reads this host's shared memory (the transfer's ``same_host`` path is on): then it
    can map this worker's export arena."""
    try:
        peer = kvs.peer if address == plugin.worker.address else plugin.peer_of(address)
    except Exception as e:  # gone, or no answer: the store's way works everywhere
        logger.debug("peer %s unknown: %s", address, e)
        return False
    return peer is not None and kvs.same_host_tier(peer) is not None


__all__ = ["ArenaHandoffs", "export_for_handoff", "same_host"]
