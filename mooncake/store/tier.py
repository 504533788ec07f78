"""One LMDB-backed tier: the host shared-memory tier (on tmpfs) or the SSD tier.

Each block is two records written in ONE LMDB write transaction, so a reader (in this
or any other process) sees all of a block or none of it, and a writer killed mid-put
leaves the previous committed state:

- ``blk``:  key -> the block record: header, zero padding, payload at a 64-byte aligned
  offset (:mod:`mooncake.store.records`); one lookup reads a block;
- ``meta``: key -> (insertion sequence, bytes, position), to rebuild the store's
  index, byte accounting and eviction order on reopen.

``info`` holds the tier's format version (:data:`TIER_FORMAT`). Format 1 kept header and
payload as two records (``hdr``, ``data``); a writer opening such a tier drops those
blocks (the tier is a cache) and a reader refuses it (:class:`TierFormatError`).

Reads run in a read transaction opened with ``buffers=True``: the payload is a view of
the memory map, not a copy, and the returned :class:`BlockObject` keeps that
transaction open for as long as it (or any numpy/Arrow view of it) is alive. LMDB's
copy-on-write means a later delete or overwrite never changes bytes an open reader sees.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lmdb

from mooncake.kvcache import copies
from mooncake.store.block_object import BlockObject, CorruptBlockError
from mooncake.store.config import TierConfig
from mooncake.store.prefault import Prefaulted, prefault
from mooncake.store.records import RecordSource, object_from_record, pack_record, split_record
from mooncake.types import BlockKey

log = logging.getLogger(__name__)

TierName = Literal["host", "ssd"]
TIER_FORMAT = 2
"""On-disk layout version: 2 = one record per block (``blk``); 1 = ``hdr`` + ``data``."""
_META = struct.Struct("<QQq")
_FORMAT = struct.Struct("<I")
_FORMAT_KEY = b"format"
_OLD_DBS = (b"hdr", b"data")
_MAX_DBS = 8

# LMDB allows one Environment per path per process; share it between a writer and any
# reader in the same process.
_ENVS: dict[str, tuple[lmdb.Environment, int]] = {}
_ENVS_LOCK = threading.Lock()


def _open_env(cfg: TierConfig, readonly: bool) -> lmdb.Environment:
    path = os.path.realpath(cfg.path)
    with _ENVS_LOCK:
        if path in _ENVS:
            env, refs = _ENVS[path]
            if not readonly and env.flags()["readonly"]:
                raise RuntimeError(
                    f"{path}: already opened read-only in this process; open the store first"
                )
            _ENVS[path] = (env, refs + 1)
            return env
        if not readonly:
            os.makedirs(path, exist_ok=True)
        env = lmdb.open(
            path,
            map_size=cfg.map_size,
            subdir=True,
            readonly=readonly,
            max_dbs=_MAX_DBS,
            max_readers=cfg.max_readers,
            # Crash safety: LMDB commits by writing a new meta page after the data pages;
            # a killed process never leaves a half-written tree visible. Without fsync
            # only an OS crash/power loss can lose the last commits (and checksums then
            # turn any damage into misses).
            sync=cfg.sync,
            metasync=cfg.sync,
            writemap=cfg.writemap and not readonly,
            meminit=False,
            readahead=False,
            lock=True,
        )
        _ENVS[path] = (env, 1)
        return env


def _close_env(env: lmdb.Environment) -> None:
    with _ENVS_LOCK:
        for path, (e, refs) in list(_ENVS.items()):
            if e is env:
                if refs > 1:
                    _ENVS[path] = (e, refs - 1)
                    return
                del _ENVS[path]
                env.close()
                return


def _take_owner_lock(path: str) -> int:
    """flock ``<path>/owner.lock``: one writing store per tier. The kernel drops the lock
    when its process dies (kill -9 included), so a restart never finds a stale owner."""
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, "owner.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TierOwnedError(
            f"{path}: another store owns this tier's writes; open it with TierReader to read"
        ) from None
    return fd


@dataclass(frozen=True, slots=True)
class TierEntry:
    """What the tier's ``meta`` record says about one stored block."""

    key: BlockKey
    seq: int
    nbytes: int
    position: int | None


class TierOwnedError(RuntimeError):
    """Another live store already owns this tier's writes."""


def _format_version(txn: lmdb.Transaction, info: Any) -> int | None:
    """The tier's format version from its ``info`` database, ``None`` if absent or unreadable."""
    raw = txn.get(_FORMAT_KEY, db=info)
    return _FORMAT.unpack(raw)[0] if raw is not None and len(raw) == _FORMAT.size else None


class TierFormatError(RuntimeError):
    """The tier on disk has another format version than this code reads."""


class TierFullError(RuntimeError):
    """LMDB's map is full (pages still held by readers); evict or retry later."""


class LmdbTier:
    """One LMDB environment holding block objects.

    Args:
        name: ``host`` or ``ssd``.
        cfg: path, capacity and LMDB flags.
        readonly: open for reading only (another process owns the writes).
    """

    def __init__(self, name: TierName, cfg: TierConfig, readonly: bool = False) -> None:
        self.name: TierName = name
        self.cfg = cfg
        self.readonly = readonly
        self._owner_lock: int | None = None
        if not readonly:
            self._owner_lock = _take_owner_lock(cfg.path)
        try:
            self.env = _open_env(cfg, readonly)
        except BaseException:
            self._release_owner_lock()
            raise
        try:
            self._open_dbs(readonly)
        except BaseException:
            self.close()
            raise
        self._stage = bytearray()  # a put's record is assembled here (reused)
        self.prefaulted: Prefaulted = "none"
        if cfg.prefault and not readonly:
            self.prefaulted = prefault(
                os.path.join(cfg.path, "data.mdb"), min(cfg.capacity_bytes, cfg.map_size)
            )

    def _open_dbs(self, readonly: bool) -> None:
        if readonly:
            try:
                info = self.env.open_db(b"info", create=False)
            except lmdb.NotFoundError:
                raise TierFormatError(
                    f"{self.cfg.path}: no tier format record (format 1, or not initialised)"
                ) from None
            with self.env.begin() as txn:
                version = _format_version(txn, info)
            if version != TIER_FORMAT:
                raise TierFormatError(
                    f"{self.cfg.path}: tier format {version}, this code reads {TIER_FORMAT}"
                )
            self._blk = self.env.open_db(b"blk", create=False)
            self._meta = self.env.open_db(b"meta", create=False)
            return
        info = self.env.open_db(b"info", create=True)
        with self.env.begin(write=True) as txn:
            version = _format_version(txn, info)
            if version != TIER_FORMAT:
                # Another layout (format 1: header and payload as two records): the tier is
                # a cache, so its blocks are dropped rather than converted.
                dropped = 0
                for name in (*_OLD_DBS, b"blk", b"meta"):
                    try:
                        db = self.env.open_db(name, txn=txn, create=False)
                    except lmdb.NotFoundError:
                        continue
                    dropped = max(dropped, int(txn.stat(db)["entries"]))
                    txn.drop(db, delete=name in _OLD_DBS)
                if dropped:
                    log.warning(
                        "%s tier at %s: format %s, this code writes %d; dropped its %d block(s)",
                        self.name,
                        self.cfg.path,
                        version,
                        TIER_FORMAT,
                        dropped,
                    )
                txn.put(_FORMAT_KEY, _FORMAT.pack(TIER_FORMAT), db=info)
        self._blk = self.env.open_db(b"blk", create=True)
        self._meta = self.env.open_db(b"meta", create=True)
        self.env.reader_check()  # clear reader slots of killed processes

    @property
    def capacity_bytes(self) -> int:
        return self.cfg.capacity_bytes

    def close(self) -> None:
        """Close the environment. Views read from it must be dropped first."""
        _close_env(self.env)
        self._release_owner_lock()

    def _release_owner_lock(self) -> None:
        if self._owner_lock is not None:
            os.close(self._owner_lock)  # closing the descriptor drops the flock
            self._owner_lock = None

    # -- writes ---------------------------------------------------------------------
    def put(self, key: BlockKey, source: RecordSource, seq: int, position: int | None) -> int:
        """Store one block atomically; returns the bytes it counts for (header + payload)."""
        return self.put_many([(key, source, seq, position)])[0]

    def put_many(
        self, items: Sequence[tuple[BlockKey, RecordSource, int, int | None]]
    ) -> list[int]:
        """Store several blocks in one transaction (all or none). Each record is assembled
        in a reused staging buffer (LMDB takes one value per key, and py-lmdb has no
        reserve-then-write put), then copied into the map by LMDB."""
        out: list[int] = []
        stage = self._stage
        try:
            with self.env.begin(write=True) as txn:
                for key, source, seq, position in items:
                    with source.write(stage) as rec:  # released before the stage grows
                        txn.put(key, rec, db=self._blk)
                        copies.count("store.put", rec.nbytes)
                        if source.staged:
                            copies.count("store.stage", rec.nbytes)
                    nbytes = source.nbytes
                    txn.put(
                        key,
                        _META.pack(seq, nbytes, -1 if position is None else position),
                        db=self._meta,
                    )
                    out.append(nbytes)
        except lmdb.MapFullError as e:
            raise TierFullError(f"{self.name} tier map is full") from e
        return out

    def put_record(
        self, key: BlockKey, record: Any, nbytes: int, seq: int, position: int | None
    ) -> None:
        """Store a record read from another tier, verbatim (a demotion)."""
        try:
            with self.env.begin(write=True) as txn:
                txn.put(key, record, db=self._blk)
                txn.put(
                    key,
                    _META.pack(seq, nbytes, -1 if position is None else position),
                    db=self._meta,
                )
        except lmdb.MapFullError as e:
            raise TierFullError(f"{self.name} tier map is full") from e

    def delete(self, keys: Sequence[BlockKey]) -> int:
        """Delete blocks in one transaction; returns how many existed."""
        n = 0
        try:
            with self.env.begin(write=True) as txn:
                for key in keys:
                    txn.delete(key, db=self._blk)
                    n += bool(txn.delete(key, db=self._meta))
        except lmdb.MapFullError as e:
            raise TierFullError(f"{self.name} tier map is full (even for a delete)") from e
        return n

    # -- reads ----------------------------------------------------------------------
    def read_record(self, txn: lmdb.Transaction, key: BlockKey) -> Any:
        """The block's record (a view inside ``txn``, a ``buffers=True`` read txn), or ``None``."""
        return txn.get(key, db=self._blk)

    def read_raw(self, txn: lmdb.Transaction, key: BlockKey) -> tuple[Any, Any] | None:
        """(header view, payload view) inside ``txn``; raises :class:`CorruptBlockError`
        when the record's framing is broken."""
        rec = txn.get(key, db=self._blk)
        return None if rec is None else split_record(rec)

    def read_records(self, txn: lmdb.Transaction, keys: Sequence[BlockKey]) -> list[Any]:
        """Record views of ``keys`` inside ``txn``, index-aligned, ``None`` where absent:
        the block server's loop, one lookup per key."""
        get, db = txn.get, self._blk
        return [get(k, db=db) for k in keys]

    def begin_read(self) -> lmdb.Transaction:
        return self.env.begin(buffers=True)

    def read(self, key: BlockKey, verify: bool = True) -> BlockObject | None:
        """One checked block, or ``None`` if absent; raises :class:`CorruptBlockError`."""
        txn = self.env.begin(buffers=True)
        rec = txn.get(key, db=self._blk)
        if rec is None:
            return None
        return object_from_record(rec, txn, verify, key)

    def read_many(
        self, keys: Sequence[BlockKey], verify: bool = True
    ) -> list[BlockObject | CorruptBlockError | None]:
        """Checked blocks sharing one read transaction; a corrupt one is returned as its
        :class:`CorruptBlockError` (not raised) so the others still come back."""
        txn = self.begin_read()
        get, db = txn.get, self._blk
        out: list[BlockObject | CorruptBlockError | None] = []
        for key in keys:
            rec = get(key, db=db)
            if rec is None:
                out.append(None)
                continue
            try:
                out.append(object_from_record(rec, txn, verify, key))
            except CorruptBlockError as e:
                out.append(e)
        return out

    def contains(self, key: BlockKey) -> bool:
        with self.env.begin(buffers=True) as txn:
            return txn.get(key, db=self._blk) is not None

    def entries(self) -> Iterator[TierEntry]:
        """Every stored block's meta record (to rebuild the index on open)."""
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self._meta):
                seq, nbytes, pos = _META.unpack(v)
                yield TierEntry(BlockKey(bytes(k)), seq, nbytes, None if pos < 0 else pos)

    def stat_entries(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._blk)["entries"])

    # -- fault injection for tests and operators ------------------------------------
    def overwrite_payload(self, key: BlockKey, payload: bytes) -> None:
        """Replace a block's payload bytes, keeping its header (corruption drill)."""
        with self.env.begin(write=True, buffers=True) as txn:
            header = bytes(split_record(txn.get(key, db=self._blk))[0])
            txn.put(key, bytes(pack_record(header, payload)), db=self._blk)

    def overwrite_header(self, key: BlockKey, header: bytes) -> None:
        """Replace a block's header bytes, keeping its payload (corruption drill)."""
        with self.env.begin(write=True, buffers=True) as txn:
            payload = bytes(split_record(txn.get(key, db=self._blk))[1])
            txn.put(key, bytes(pack_record(header, payload)), db=self._blk)

    def overwrite_record(self, key: BlockKey, record: bytes) -> None:
        """Replace a block's whole record (corruption drill: broken framing)."""
        with self.env.begin(write=True) as txn:
            txn.put(key, record, db=self._blk)


__all__ = [
    "TIER_FORMAT",
    "LmdbTier",
    "TierEntry",
    "TierFormatError",
    "TierFullError",
    "TierName",
    "TierOwnedError",
]
