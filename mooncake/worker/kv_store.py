"""A worker's KV store and transfer endpoints: the host tier (LMDB on tmpfs) other
processes on the host read zero-copy, an optional SSD tier, the block server peers fetch
from, and the fetcher that pulls from peers."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mooncake.kvcache import KVBlock
from mooncake.kvcache.block import BlockRef, PackedExport
from mooncake.store import (
    BlockObject,
    BlockStore,
    ExpiredLease,
    SharedLeaseTable,
    StoreConfig,
    TierConfig,
    lease_dir,
    tier_dirs,
)
from mooncake.store.block_object import header_length_for
from mooncake.store.records import payload_offset
from mooncake.store.shm_arena import ShmArena
from mooncake.transfer import BlockFetcher, BlockServer, FetchResult, Peer
from mooncake.transfer.base import ShmBufferPool, local_host_id
from mooncake.types import BlockKey
from mooncake.worker.arena_handoff import ArenaHandoffs
from mooncake.worker.config import WorkerConfig


@dataclass
class Fetched:
    """What a fetch of a prefix delivered."""

    num_blocks: int
    nbytes: int
    paths: list[str]


#: Receives the leading blocks found, as zero-copy views valid only during the call
#: (the engine copies them into its pool); returns how many it took.
Consumer = Callable[[list[KVBlock]], int]


class KVStore:
    """Args: config: tiers and transfer settings; name: this worker's name; cluster:
    its cluster's name (the scheduler's address). The tiers live in this process's
    directory under each store root (``mooncake.store.tier_dirs``), claimed after
    removing what dead workers left there."""

    def __init__(self, config: WorkerConfig, name: str, cluster: str = "local") -> None:
        self._dirs = [tier_dirs.claim(config.store_root, cluster, str(name))]
        host = TierConfig(
            path=os.path.join(self._dirs[0], "host"),
            capacity_bytes=config.host_capacity_bytes,
            prefault=config.host_tier_prefault,
        )
        ssd = None
        if config.ssd_root is not None:
            os.makedirs(config.ssd_root, exist_ok=True)
            self._dirs.append(tier_dirs.claim(config.ssd_root, cluster, str(name)))
            ssd = TierConfig(
                path=os.path.join(self._dirs[1], "ssd"), capacity_bytes=config.ssd_capacity_bytes
            )
        # Hand-off leases live in the host tier's directory, where a same-host decode
        # worker releases them itself.
        self.leases = SharedLeaseTable(lease_dir(host.path))
        self.lease_ttl_s = config.handoff_lease_ttl_s
        self.leases_taken = 0
        """Hand-off leases this worker took (``lease_handoff``)."""
        self._peer_leases: dict[str, SharedLeaseTable] = {}
        self.store = BlockStore(
            StoreConfig(host=host, ssd=ssd, eviction=config.eviction), shared_leases=self.leases
        )
        self.arena = (
            ShmArena(os.path.join(self._dirs[0], "export.arena"), config.export_arena_bytes)
            if config.export_arena_bytes
            else None
        )
        self.held = ArenaHandoffs(self) if self.arena is not None else None
        """Export-arena regions held for same-host decode engines (``arena_handoff``)."""
        self.server = BlockServer(self.store, config.transfer, host_tier_path=host.path)
        self.recv_arena = (
            ShmArena(os.path.join(self._dirs[0], "recv.arena"), config.recv_arena_bytes)
            if config.recv_arena_bytes
            else None
        )
        self.fetcher = BlockFetcher(
            config.transfer,
            pool=ShmBufferPool(config.transfer.pool_bytes, self.recv_arena)
            if self.recv_arena is not None
            else None,
        )
        self.peer: Peer = self.server.peer()

    def put(self, blocks: Sequence[KVBlock]) -> int:
        """Publish full blocks (block index = position in the sequence)."""
        full = [(i, b) for i, b in enumerate(blocks) if b.key is not None]
        return sum(self.store.put_many([b for _, b in full], [i for i, _ in full]))

    # -- hand-off leases ------------------------------------------------------------
    def lease_handoff(self, request_id: str, keys: Sequence[BlockKey], more: bool = False) -> None:
        """Keep ``keys`` from eviction until the decode side of ``request_id`` has them
        (:meth:`release_handoff`, here or from a same-host peer) or the lease expires.
        ``more``: keys added to a lease this request already took (a streamed chunk)."""
        if keys:
            self.leases.acquire(_holder(request_id), keys, self.lease_ttl_s)
            if not more:
                self.leases_taken += 1

    @staticmethod
    def handoff_holder(request_id: str) -> str:
        """The lease table's holder name of ``request_id``'s hand-off lease."""
        return _holder(request_id)

    def release_handoff(self, request_id: str) -> bool:
        """Release this worker's hand-off lease of ``request_id`` (fetched, or the
        request ended); returns whether there was one."""
        return self.leases.release(_holder(request_id))

    def release_peer_handoff(self, peer: Peer, request_id: str) -> bool | None:
        """Release ``peer``'s hand-off lease of ``request_id`` directly when its lease
        table is on this host. ``None``: it is not; ask the peer (an RPC)."""
        if peer == self.peer:
            return self.release_handoff(request_id)
        table = self._peer_lease_table(peer)
        return None if table is None else table.release(_holder(request_id))

    def peer_handoff_expiry(self, peer: Peer, request_id: str) -> float | None:
        """When ``peer``'s hand-off lease of ``request_id`` expires (``time.monotonic``
        time, the same clock in every process of a host), read from its lease table on
        this host; ``None`` when it holds none or its table is not here."""
        if peer == self.peer:
            return self.leases.expiry(_holder(request_id))
        table = self._peer_lease_table(peer)
        return None if table is None else table.expiry(_holder(request_id))

    def _peer_lease_table(self, peer: Peer) -> SharedLeaseTable | None:
        """``peer``'s lease table when it is on this host (opened once), else ``None``."""
        if (
            peer.host_id != local_host_id()
            or peer.host_tier_path is None
            or not os.path.isdir(lease_dir(peer.host_tier_path))
        ):
            return None
        path = lease_dir(peer.host_tier_path)
        table = self._peer_leases.get(path)
        if table is None:
            table = self._peer_leases[path] = SharedLeaseTable(path)
        return table

    def sweep_leases(self) -> list[ExpiredLease]:
        """Drop and report hand-off leases that expired unreleased."""
        return self.store.sweep_leases()

    def in_recv_arena(self, blocks: Sequence[KVBlock]) -> list[BlockRef] | None:
        """Where ``blocks`` (a fetch's, views of its receive buffers) lie in the receive
        arena, for the engine to import them from there; ``None`` unless all do."""
        arena = self.recv_arena
        if arena is None or not blocks:
            return None
        refs = []
        for b in blocks:
            off = arena.offset_of(b.data.ctypes.data, b.data.nbytes)
            if off is None or b.key is None:
                return None
            refs.append(BlockRef(b.key, b.parent, b.token_ids, b.spec, b.model_fingerprint, off))
        return refs

    def put_packed(self, buf: memoryview, packed: PackedExport) -> int:
        """Publish full blocks an engine wrote as records into the export arena."""
        return sum(self.store.put_packed(buf, packed))

    @staticmethod
    def record_bytes(bytes_per_block: int, fingerprint: str, block_size: int) -> int:
        """Arena bytes one full block's record takes."""
        return payload_offset(header_length_for(fingerprint, block_size)) + bytes_per_block

    @property
    def host_tier_path(self) -> str | None:
        """This worker's host tier directory (its engine reads it in place), if any."""
        tier = self.store.tiers.get("host")
        return tier.cfg.path if tier is not None else None

    def host_prefix(self, keys: Sequence[BlockKey]) -> int:
        """How many leading ``keys`` are in this worker's host tier, for its engine to
        import in place (``import_from_tier``); they count as hits and uses (eviction
        order) as a read here would."""
        tiers = self.store.match_prefix(keys).tiers
        n = next((i for i, t in enumerate(tiers) if t != "host"), len(tiers))
        if n:
            self.store.get_raw_many(list(keys[:n]))  # hits and recency; views dropped
        return n

    def local_prefix(self, keys: Sequence[BlockKey], use: Consumer) -> Fetched:
        """Hand the leading blocks of ``keys`` found in this worker's tiers to ``use``."""
        n = self.store.match_prefix(keys).num_matched
        if not n:
            return Fetched(0, 0, [])
        objs = self.store.get_many(list(keys[:n]))
        try:
            blocks = _leading(objs)
            return Fetched(use(blocks), sum(b.data.nbytes for b in blocks), ["local"] * len(blocks))
        finally:
            for o in objs:
                if o is not None:
                    o.release()

    def same_host_tier(self, peer: Peer) -> str | None:
        """``peer``'s host tier directory when this host can read it in place, else None."""
        shm = next((b for b in self.fetcher.backends if b.name == "shm"), None)
        return peer.host_tier_path if shm is not None and shm.usable(peer) else None

    def fetch(self, keys: Sequence[BlockKey], peer: Peer, use: Consumer) -> Fetched:
        """Pull ``keys`` from ``peer`` (same host: its host tier, zero copy; else TCP or
        RDMA, retried once on another path) and hand the leading run that arrived intact
        to ``use``."""
        return _hand_on(self.fetcher.fetch(keys, peer), use)

    def poll(self, keys: Sequence[BlockKey], peer: Peer, use: Consumer) -> Fetched:
        """Ask ``peer``'s block server once for ``keys`` (a hand-off still streaming: the
        later ones may not be there yet) and hand the leading run that arrived intact to
        ``use``."""
        return _hand_on(self.fetcher.poll(keys, peer), use)

    def close(self) -> None:
        if self.held is not None:
            self.held.close()
        self.fetcher.close()
        self.server.close()
        self.store.close()
        for t in self._peer_leases.values():
            t.close()
        self.leases.close()
        if self.arena is not None:
            self.arena.close()
        if self.recv_arena is not None:
            self.recv_arena.close()
        for d in self._dirs:
            tier_dirs.release(d)
            tier_dirs.sweep(os.path.dirname(os.path.dirname(d)))  # and what dead peers left


def _holder(request_id: str) -> str:
    return f"handoff:{request_id}"


def _hand_on(res: FetchResult, use: Consumer) -> Fetched:
    """Hand the leading run of ``res``'s blocks that arrived intact to ``use`` and
    release the response (whatever ``use`` does)."""
    try:
        blocks = _leading(res.objects)
        taken = use(blocks) if blocks else 0
        return Fetched(
            taken,
            sum(b.data.nbytes for b in blocks),
            [p for p in res.paths[: len(blocks)] if p],
        )
    finally:
        res.release()


def _leading(objs: Sequence[BlockObject | None]) -> list[KVBlock]:
    out = []
    for o in objs:
        if o is None:
            break
        out.append(o.to_kvblock(copy=False))
    return out
