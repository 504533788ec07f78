"""Tiered KV block store: checksummed block objects in a host shared-memory tier (LMDB
on tmpfs) over an SSD tier (LMDB on disk), with pluggable eviction, leases and an event
stream for the Conductor's global index. Format and behaviour: docs/store.md."""

from mooncake.store.block_object import (
    BlockHeader,
    BlockObject,
    CorruptBlockError,
    export_from_objects,
)
from mooncake.store.config import StoreConfig, TierConfig
from mooncake.store.events import StoreEvent
from mooncake.store.eviction import (
    EvictionPolicy,
    LengthAwarePolicy,
    LFUPolicy,
    LRUPolicy,
    make_policy,
)
from mooncake.store.lease import Lease
from mooncake.store.reader import HostTierReader, TierReader
from mooncake.store.shared_lease import ExpiredLease, SharedLeaseTable, lease_dir
from mooncake.store.store import BlockStore, PrefixMatch, RawBatch, StoreStats
from mooncake.store.tier import TierFormatError, TierFullError, TierName, TierOwnedError

__all__ = [
    "BlockHeader",
    "BlockObject",
    "BlockStore",
    "CorruptBlockError",
    "EvictionPolicy",
    "ExpiredLease",
    "HostTierReader",
    "LFUPolicy",
    "LRUPolicy",
    "Lease",
    "LengthAwarePolicy",
    "PrefixMatch",
    "RawBatch",
    "SharedLeaseTable",
    "StoreConfig",
    "StoreEvent",
    "StoreStats",
    "TierConfig",
    "TierFormatError",
    "TierFullError",
    "TierName",
    "TierOwnedError",
    "TierReader",
    "export_from_objects",
    "lease_dir",
    "make_policy",
]
