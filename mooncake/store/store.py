"""The tiered block store of one worker process: host shared-memory tier over SSD tier.

Tiers are exclusive: a block lives in exactly one tier. A put lands in the host tier
(or SSD when there is no host tier). When a tier is over its byte capacity the
eviction policy names victims, leased blocks are skipped, and a host victim is demoted
to SSD when SSD can make room for it (else dropped). A hit in SSD is promoted back to
the host tier. Every change is an event in :attr:`BlockStore.events`.

One process owns a tier's writes (this class); any number of processes on the host
read it with :class:`~mooncake.store.reader.HostTierReader`. Public methods are
thread-safe; checksum verification runs outside the store lock, so readers on several
threads (a transfer server and the engine) do not serialise on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from threading import RLock
from typing import Any

from mooncake.kvcache.block import KVBlock, KVExport, PackedExport
from mooncake.store.block_object import BlockObject, CorruptBlockError
from mooncake.store.config import StoreConfig
from mooncake.store.events import EventLog, StoreEvent
from mooncake.store.eviction import EvictionPolicy, make_policy
from mooncake.store.lease import Lease, LeaseTable
from mooncake.store.records import NewBlock, PackedRecord, RecordSource, StoredParts
from mooncake.store.shared_lease import ExpiredLease, SharedLeaseTable
from mooncake.store.tier import LmdbTier, TierFullError, TierName
from mooncake.types import BlockKey

_MAP_FULL_RETRIES = 4
log = logging.getLogger(__name__)


@dataclass
class StoreStats:
    """Counters since the store was opened."""

    puts: int = 0
    rejected_puts: int = 0
    hits: dict[str, int] = field(default_factory=lambda: {"host": 0, "ssd": 0})
    misses: int = 0
    corrupt: int = 0
    evictions: int = 0
    demotions: int = 0
    promotions: int = 0
    leases_expired: int = 0
    """Shared (hand-off) leases found expired before their holder released them."""
    leased_skips: int = 0
    """Eviction victims skipped because a lease held them."""


@dataclass(slots=True)
class RawBatch:
    """Result of :meth:`BlockStore.get_raw_many`: views valid while this is alive."""

    records: list[Any]
    """Block record view per key (``mooncake.store.records``), ``None`` for a miss."""
    txns: list[Any]
    """Read transactions that keep the views valid."""


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """Result of :meth:`BlockStore.match_prefix`."""

    num_matched: int
    """How many leading keys are present."""
    tiers: tuple[TierName, ...]
    """Tier of each matched key, in order."""


class BlockStore:
    """Tiered, checksummed KV block store.

    Args:
        config: tiers, eviction policy, lease TTL.
        clock: monotonic seconds for lease expiry (tests inject a fake clock).
        shared_leases: leases other processes on the host take and release (the
            hand-off's, :mod:`mooncake.store.shared_lease`); eviction skips what they
            hold as it skips this process's own leases.
    """

    def __init__(
        self,
        config: StoreConfig,
        clock: Callable[[], float] = time.monotonic,
        shared_leases: SharedLeaseTable | None = None,
    ) -> None:
        self.config = config
        self.shared_leases = shared_leases
        self.tiers: dict[TierName, LmdbTier] = {}
        try:
            if config.host is not None:
                self.tiers["host"] = LmdbTier("host", config.host)
            if config.ssd is not None:
                self.tiers["ssd"] = LmdbTier("ssd", config.ssd)
        except BaseException:
            for tier in self.tiers.values():
                tier.close()
            raise
        self._top: TierName = "host" if "host" in self.tiers else "ssd"
        self._policies: dict[TierName, EvictionPolicy[BlockKey]] = {
            t: make_policy(config.eviction) for t in self.tiers
        }
        self._used: dict[TierName, int] = dict.fromkeys(self.tiers, 0)
        self._where: dict[BlockKey, TierName] = {}
        self._size: dict[BlockKey, int] = {}
        self._position: dict[BlockKey, int | None] = {}
        self._seq = 0
        self._lock = RLock()
        self.leases = LeaseTable(clock)
        self.events = EventLog()
        self.stats = StoreStats()
        self._load()

    # -- open / close -----------------------------------------------------------------
    def _load(self) -> None:
        """Rebuild index, byte counts and eviction order from the tiers' meta records."""
        for name, tier in self.tiers.items():
            dupes: list[BlockKey] = []
            for e in sorted(tier.entries(), key=lambda e: e.seq):
                self._seq = max(self._seq, e.seq)
                if e.key in self._where:  # crash between a promotion's put and delete
                    dupes.append(e.key)
                    continue
                self._index(e.key, name, e.nbytes, e.position)
            if dupes:
                tier.delete(dupes)
        for name in self.tiers:  # capacity may have shrunk since the last run
            self._make_room(name, 0)

    def close(self) -> None:
        """Close the tiers. Views returned by :meth:`get` must be dropped first."""
        with self._lock:
            for tier in self.tiers.values():
                tier.close()
            self.tiers = {}

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- index bookkeeping (caller holds the lock) --------------------------------------
    def _index(self, key: BlockKey, tier: TierName, nbytes: int, position: int | None) -> None:
        self._where[key] = tier
        self._size[key] = nbytes
        self._position[key] = position
        self._used[tier] += nbytes
        self._policies[tier].insert(key, position)

    def _unindex(self, key: BlockKey) -> TierName | None:
        tier = self._where.pop(key, None)
        if tier is not None:
            self._used[tier] -= self._size.pop(key)
            self._position.pop(key, None)
            self._policies[tier].remove(key)
        return tier

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- eviction (caller holds the lock) -----------------------------------------------
    def _make_room(self, tier: TierName, nbytes: int, keep: BlockKey | None = None) -> bool:
        cap = self.tiers[tier].capacity_bytes
        if nbytes > cap:
            return False
        while self._used[tier] + nbytes > cap:
            if not self._evict_one(tier, keep):
                return False
        return True

    def _evict_one(self, tier: TierName, keep: BlockKey | None = None) -> bool:
        shared = self.shared_leases
        for victim in self._policies[tier].victims():
            if victim == keep:
                continue
            if self.leases.is_leased(victim) or (shared is not None and shared.is_leased(victim)):
                self.stats.leased_skips += 1
                continue
            return self._evict(victim, tier)
        return False

    def _evict(self, key: BlockKey, tier: TierName) -> bool:
        """Demote or drop ``key``; False when LMDB had no page even for the delete
        (open readers pin every freed page): the caller gives up for now."""
        if (
            tier == "host"
            and "ssd" in self.tiers
            and self.config.demote_on_evict
            and self._demote(key)
        ):
            self.stats.evictions += 1
            return True
        try:
            self.tiers[tier].delete([key])
        except TierFullError:
            return False
        self.stats.evictions += 1
        self._unindex(key)
        self.events.emit(StoreEvent("removed", key, tier, reason="evicted"))
        return True

    def _demote(self, key: BlockKey) -> bool:
        host, ssd = self.tiers["host"], self.tiers["ssd"]
        nbytes, position = self._size[key], self._position[key]
        if not self._make_room("ssd", nbytes):
            return False
        txn = host.begin_read()
        try:
            rec = host.read_record(txn, key)
            if rec is None:
                return False
            # Verbatim copy: the SSD reader checks the block when it is read back.
            ssd.put_record(key, rec, nbytes, self._next_seq(), position)
        except (CorruptBlockError, TierFullError):
            return False
        finally:
            txn.abort()
        try:
            host.delete([key])
        except TierFullError:
            # Keep it in the host tier; a leftover SSD copy (if this delete fails too)
            # is found as a duplicate and dropped when the store is reopened.
            try:
                ssd.delete([key])
            except TierFullError:
                pass
            return False
        self._unindex(key)
        self._index(key, "ssd", nbytes, position)
        self.stats.demotions += 1
        self.events.emit(StoreEvent("moved", key, "ssd", from_tier="host", reason="demoted"))
        return True

    # -- writes -------------------------------------------------------------------------
    def put(self, block: KVBlock, position: int | None = None) -> bool:
        """Store one full block; returns False if it could not be stored (all room
        leased, or larger than the tier). A key already present is only touched."""
        return self.put_many([block], None if position is None else [position])[0]

    def put_many(
        self, blocks: Sequence[KVBlock], positions: Sequence[int | None] | None = None
    ) -> list[bool]:
        """Store blocks (one LMDB transaction for those that fit); returns per-block success."""
        items = []
        for i, b in enumerate(blocks):
            if b.key is None:
                raise ValueError(
                    "put: a block without a key (trailing partial block) cannot be cached"
                )
            pos = positions[i] if positions is not None else self._guess_position(b)
            # encoded (checksummed) while the tier copies it in: one pass over the payload
            items.append((b.key, NewBlock(b, pos, self.config.checksum), pos))
        return self._put_raw(items)

    def put_export(self, export: KVExport) -> int:
        """Store every full block of an engine export (block index = position);
        returns how many are now in the store."""
        full = [b for b in export.blocks if b.key is not None]
        return sum(self.put_many(full, list(range(len(full)))))

    def put_packed(self, buf: memoryview, packed: PackedExport) -> list[bool]:
        """Store records an engine laid out in ``buf`` (shared memory,
        :mod:`mooncake.store.shm_arena`): LMDB copies each into the tier, nothing
        stages it. Block index = ``packed.first`` + position in the export."""
        items: list[tuple[BlockKey, RecordSource, int | None]] = [
            (key, PackedRecord(buf[off : off + size]), packed.first + i)
            for i, (key, off, size) in enumerate(zip(packed.keys, packed.offsets, packed.sizes))
        ]
        return self._put_raw(items)

    def put_objects(self, objs: Sequence[BlockObject]) -> list[bool]:
        """Store checked block objects verbatim (what the transfer layer receives)."""
        items = []
        for o in objs:
            if o.key is None:
                raise ValueError("put_objects: a block without a key cannot be cached")
            items.append((o.key, StoredParts(o.header_bytes, o.payload), o.header.position))
        return self._put_raw(items)

    def _guess_position(self, block: KVBlock) -> int | None:
        parent_pos = self._position.get(block.parent) if block.parent is not None else None
        return None if parent_pos is None else parent_pos + 1

    def _put_raw(self, items: Sequence[tuple[BlockKey, RecordSource, int | None]]) -> list[bool]:
        """Write new keys in as few transactions as capacity allows: a chunk grows while
        room can be made for it; then it is written, indexed (so later items of the same
        batch may evict it, as sequential puts would) and the next chunk starts."""
        ok = [False] * len(items)
        with self._lock:
            tier = self._top
            chunk: list[tuple[int, BlockKey, RecordSource, int | None]] = []
            pending = 0
            seen: set[BlockKey] = set()
            for i, (key, source, pos) in enumerate(items):
                if key in self._where or key in seen:
                    # Content-addressed: same key, same bytes. Count it as a use.
                    self._policies[self._where.get(key, tier)].touch(key)
                    ok[i] = True
                    continue
                seen.add(key)
                size = source.nbytes
                if not self._make_room(tier, pending + size) and chunk:
                    self._flush(tier, chunk, ok)
                    chunk, pending = [], 0
                if self._make_room(tier, pending + size):
                    chunk.append((i, key, source, pos))
                    pending += size
                else:
                    self.stats.rejected_puts += 1
            if chunk:
                self._flush(tier, chunk, ok)
        return ok

    def _flush(
        self,
        tier: TierName,
        chunk: list[tuple[int, BlockKey, RecordSource, int | None]],
        ok: list[bool],
    ) -> None:
        if not self._write(tier, chunk):
            self.stats.rejected_puts += len(chunk)
            return
        for i, key, source, pos in chunk:
            self._index(key, tier, source.nbytes, pos)
            ok[i] = True
            self.stats.puts += 1
            self.events.emit(StoreEvent("stored", key, tier, reason="put"))

    def _write(
        self, tier: TierName, items: list[tuple[int, BlockKey, RecordSource, int | None]]
    ) -> bool:
        rows = [(key, source, self._next_seq(), pos) for _, key, source, pos in items]
        for _ in range(_MAP_FULL_RETRIES):
            try:
                self.tiers[tier].put_many(rows)
                return True
            except TierFullError:
                # Pages still referenced by open readers cannot be reused yet; free more.
                if not self._evict_one(tier):
                    return False
        return False

    def delete(self, key: BlockKey) -> bool:
        """Remove a block from every tier; returns whether it was present."""
        return self.delete_many([key])[0]

    def delete_many(self, keys: Iterable[BlockKey]) -> list[bool]:
        """Remove blocks; per-key whether it was present.

        Raises:
            TierFullError: LMDB found no free page even for the delete, because open
                readers still see every page freed since they started; retry later.
        """
        out = []
        with self._lock:
            for key in keys:
                tier = self._where.get(key)
                if tier is None:
                    out.append(False)
                    continue
                self.tiers[tier].delete([key])
                self._unindex(key)
                self.events.emit(StoreEvent("removed", key, tier, reason="deleted"))
                out.append(True)
        return out

    # -- reads --------------------------------------------------------------------------
    def contains(self, key: BlockKey) -> bool:
        return key in self._where

    def contains_many(self, keys: Iterable[BlockKey]) -> list[bool]:
        where = self._where
        return [k in where for k in keys]

    def tier_of(self, key: BlockKey) -> TierName | None:
        return self._where.get(key)

    def match_prefix(self, keys: Sequence[BlockKey]) -> PrefixMatch:
        """Number of leading ``keys`` present, and the tier of each of them."""
        tiers: list[TierName] = []
        with self._lock:
            for k in keys:
                t = self._where.get(k)
                if t is None:
                    break
                tiers.append(t)
        return PrefixMatch(len(tiers), tuple(tiers))

    def get(self, key: BlockKey) -> BlockObject | None:
        """The checked block, or ``None`` (absent or corrupt). The returned object's
        payload is a zero-copy view that stays valid while the object is referenced."""
        # The one-key path of get_many without its grouping: per-call overhead is what
        # limits small blocks.
        with self._lock:
            t = self._where.get(key)
            if t is None:
                self.stats.misses += 1
                return None
            self._policies[t].touch(key)
        verify = self.config.verify_checksums
        try:
            obj = self.tiers[t].read(key, verify)
        except CorruptBlockError:
            self._drop_corrupt(key, t)
            return None
        with self._lock:
            if obj is None:
                self.stats.misses += 1
                return None
            self.stats.hits[t] += 1
        if t == "ssd" and self.config.promote_on_hit and "host" in self.tiers:
            self._promote(key, obj)
        return obj

    def get_many(
        self, keys: Sequence[BlockKey], verify: bool | None = None
    ) -> list[BlockObject | None]:
        """Checked blocks (one read transaction per tier); ``None`` for each miss.

        ``verify=False`` skips the payload CRC (the header is always checked): for a
        block server whose receiver checks the CRC end to end anyway."""
        out: list[BlockObject | None] = [None] * len(keys)
        groups: dict[TierName, list[int]] = {}
        with self._lock:
            for i, k in enumerate(keys):
                t = self._where.get(k)
                if t is None:
                    self.stats.misses += 1
                    continue
                self._policies[t].touch(k)
                groups.setdefault(t, []).append(i)
        verify = self.config.verify_checksums if verify is None else verify
        promote: list[int] = []
        # Read every tier first, move blocks after: a promotion may demote another
        # requested block, which must not turn it into a miss.
        for t, idx in groups.items():
            tier = self.tiers[t]
            hits = gone = 0
            for i, res in zip(idx, tier.read_many([keys[i] for i in idx], verify)):
                if isinstance(res, CorruptBlockError):
                    self._drop_corrupt(keys[i], t)
                elif res is None:
                    gone += 1  # deleted between lookup and read
                else:
                    out[i] = res
                    hits += 1
                    if t == "ssd" and self.config.promote_on_hit and "host" in self.tiers:
                        promote.append(i)
            with self._lock:
                self.stats.hits[t] += hits
                self.stats.misses += gone
        for i in promote:
            obj = out[i]
            assert obj is not None
            self._promote(keys[i], obj)
        return out

    def get_raw_many(self, keys: Sequence[BlockKey]) -> RawBatch:
        """Unchecked record views, for a server that forwards bytes whose receiver checks
        them end to end. Counts hits and recency like :meth:`get_many`;
        does not promote. The views live as long as the returned batch."""
        # The block server's hot loop: per key, a dictionary lookup and C-level loops only.
        n = len(keys)
        with self._lock:
            tier_of = list(map(self._where.get, keys))
            for t, policy in self._policies.items():
                hits = tier_of.count(t)
                if hits:
                    self.stats.hits[t] += hits
                    policy.touch_many(
                        keys if hits == n else [k for k, kt in zip(keys, tier_of) if kt == t]
                    )
            self.stats.misses += tier_of.count(None)
        batch = RawBatch([None] * n, [])
        for t, tier in self.tiers.items():
            hits = tier_of.count(t)
            if not hits:
                continue
            txn = tier.begin_read()
            batch.txns.append(txn)
            if hits == n:
                batch.records = tier.read_records(txn, keys)
                break
            idx = [i for i, kt in enumerate(tier_of) if kt == t]
            for i, rec in zip(idx, tier.read_records(txn, [keys[i] for i in idx])):
                batch.records[i] = rec
        return batch

    def _drop_corrupt(self, key: BlockKey, tier: TierName) -> None:
        with self._lock:
            self.stats.corrupt += 1
            self.stats.misses += 1
            if self._where.get(key) == tier:
                try:
                    self.tiers[tier].delete([key])
                except TierFullError:
                    return  # still a miss; deleted when it is next found corrupt
                self._unindex(key)
                self.events.emit(StoreEvent("removed", key, tier, reason="corrupt"))

    def _promote(self, key: BlockKey, obj: BlockObject) -> None:
        with self._lock:
            if self._where.get(key) != "ssd":
                return
            nbytes, position = self._size[key], self._position[key]
            with Lease(self.leases, [key], self.config.lease_ttl_s):  # demotions must not drop it
                if not self._make_room("host", nbytes):
                    return
                try:
                    self.tiers["host"].put(
                        key, StoredParts(obj.header_bytes, obj.payload), self._next_seq(), position
                    )
                except TierFullError:
                    return
            try:
                self.tiers["ssd"].delete([key])
            except TierFullError:
                # Leave it in SSD; the host copy is a duplicate dropped on reopen...
                try:
                    self.tiers["host"].delete([key])
                except TierFullError:
                    pass  # ...or, if even that fails, the SSD copy is the one dropped then
                return
            self._unindex(key)
            self._index(key, "host", nbytes, position)
            self.stats.promotions += 1
            self.events.emit(StoreEvent("moved", key, "host", from_tier="ssd", reason="promoted"))

    # -- leases, introspection -----------------------------------------------------------
    def lease(self, keys: Iterable[BlockKey], ttl_s: float | None = None) -> Lease:
        """Pin ``keys`` against eviction until released or ``ttl_s`` (default from config)."""
        return Lease(self.leases, keys, ttl_s if ttl_s is not None else self.config.lease_ttl_s)

    def sweep_leases(self) -> list[ExpiredLease]:
        """Remove expired shared leases, report each (a warning and
        ``stats.leases_expired``) and return them: a hand-off whose receiver never
        released its lease (lost, or slower than the lease's lifetime) is worth knowing."""
        if self.shared_leases is None:
            return []
        expired = self.shared_leases.sweep()
        for e in expired:
            log.warning(
                "lease %s on %d block(s) expired %.1f s ago before it was released; "
                "its blocks may be evicted now",
                e.holder,
                e.num_keys,
                e.overdue_s,
            )
        with self._lock:
            self.stats.leases_expired += len(expired)
        return expired

    def used_bytes(self, tier: TierName) -> int:
        return self._used[tier]

    def keys(self, tier: TierName | None = None) -> list[BlockKey]:
        """Stored keys (of one tier, or all), in no particular order."""
        with self._lock:
            return [k for k, t in self._where.items() if tier is None or t == tier]

    def eviction_order(self, tier: TierName) -> list[BlockKey]:
        """The policy's victim order for ``tier`` (leases not applied)."""
        with self._lock:
            return list(self._policies[tier].victims())

    def __len__(self) -> int:
        return len(self._where)


__all__ = ["BlockStore", "PrefixMatch", "RawBatch", "StoreStats"]
