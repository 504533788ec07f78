"""One LMDB-backed tier: the host shared-memory tier (on tmpfs) or the SSD tier.

Each block is three records written in ONE LMDB write transaction, so a reader (in this
or any other process) sees all of a block or none of it, and a writer killed mid-put
leaves the previous committed state:

- ``hdr``:  key -> header bytes (see :mod:`mooncake.store.block_object`)
- ``data``: key -> KV payload bytes
- ``meta``: key -> (insertion sequence, bytes, position), to rebuild the store's
  index, byte accounting and eviction order on reopen.

Reads run in a read transaction opened with ``buffers=True``: the payload is a view of
the memory map, not a copy, and the returned :class:`BlockObject` keeps that
transaction open for as long as it (or any numpy/Arrow view of it) is alive. LMDB's
copy-on-write means a later delete or overwrite never changes bytes an open reader sees.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lmdb
import pyarrow as pa

from mooncake.store.block_object import BlockObject, CorruptBlockError
from mooncake.store.config import TierConfig
from mooncake.types import BlockKey

TierName = Literal["host", "ssd"]
_META = struct.Struct("<QQq")
_MAX_DBS = 4

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
                raise RuntimeError(f"{path}: already opened read-only in this process; open the store first")
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
        create = not readonly
        self._hdr = self.env.open_db(b"hdr", create=create)
        self._data = self.env.open_db(b"data", create=create)
        self._meta = self.env.open_db(b"meta", create=create)
        if not readonly:
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
    def put(self, key: BlockKey, header: bytes, payload: Any, seq: int, position: int | None) -> int:
        """Store one block atomically; returns the bytes it occupies (header + payload)."""
        nbytes = len(header) + memoryview(payload).nbytes
        meta = _META.pack(seq, nbytes, -1 if position is None else position)
        try:
            with self.env.begin(write=True) as txn:
                txn.put(key, header, db=self._hdr)
                txn.put(key, payload, db=self._data)
                txn.put(key, meta, db=self._meta)
        except lmdb.MapFullError as e:
            raise TierFullError(f"{self.name} tier map is full") from e
        return nbytes

    def put_many(self, items: Sequence[tuple[BlockKey, bytes, Any, int, int | None]]) -> list[int]:
        """Store several blocks in one transaction (all or none)."""
        out: list[int] = []
        try:
            with self.env.begin(write=True) as txn:
                for key, header, payload, seq, position in items:
                    nbytes = len(header) + memoryview(payload).nbytes
                    txn.put(key, header, db=self._hdr)
                    txn.put(key, payload, db=self._data)
                    txn.put(key, _META.pack(seq, nbytes, -1 if position is None else position), db=self._meta)
                    out.append(nbytes)
        except lmdb.MapFullError as e:
            raise TierFullError(f"{self.name} tier map is full") from e
        return out

    def delete(self, keys: Sequence[BlockKey]) -> int:
        """Delete blocks in one transaction; returns how many existed."""
        n = 0
        try:
            with self.env.begin(write=True) as txn:
                for key in keys:
                    txn.delete(key, db=self._hdr)
                    txn.delete(key, db=self._data)
                    n += bool(txn.delete(key, db=self._meta))
        except lmdb.MapFullError as e:
            raise TierFullError(f"{self.name} tier map is full (even for a delete)") from e
        return n

    # -- reads ----------------------------------------------------------------------
    def read_raw(self, txn: lmdb.Transaction, key: BlockKey) -> tuple[Any, Any] | None:
        """(header view, payload view) inside ``txn`` (a ``buffers=True`` read txn)."""
        hdr = txn.get(key, db=self._hdr)
        if hdr is None:
            return None
        data = txn.get(key, db=self._data)
        if data is None:
            raise CorruptBlockError("header without payload")
        return hdr, data

    def read_raw_many(self, txn: lmdb.Transaction, keys: Sequence[BlockKey]) -> tuple[list[Any], list[Any]]:
        """(header views, payload views) of ``keys`` inside ``txn``, index-aligned, ``None``
        where a key is absent or has no payload: the block server's loop, two lookups per
        key (``Cursor.getmulti`` measured no faster: the B-tree walks dominate)."""
        get, hdb, ddb = txn.get, self._hdr, self._data
        hdrs = [get(k, db=hdb) for k in keys]
        datas = [get(k, db=ddb) for k in keys]
        if None in hdrs or None in datas:
            for i, (h, d) in enumerate(zip(hdrs, datas)):
                if h is None or d is None:
                    hdrs[i] = datas[i] = None
        return hdrs, datas

    def begin_read(self) -> lmdb.Transaction:
        return self.env.begin(buffers=True)

    def read(self, key: BlockKey, verify: bool = True) -> BlockObject | None:
        """One checked block, or ``None`` if absent; raises :class:`CorruptBlockError`."""
        txn = self.env.begin(buffers=True)
        raw = self.read_raw(txn, key)
        if raw is None:
            return None
        return _object(*raw, txn, verify, key)

    def read_many(self, keys: Sequence[BlockKey], verify: bool = True) -> list[BlockObject | CorruptBlockError | None]:
        """Checked blocks sharing one read transaction; a corrupt one is returned as its
        :class:`CorruptBlockError` (not raised) so the others still come back."""
        txn = self.begin_read()
        out: list[BlockObject | CorruptBlockError | None] = []
        for key in keys:
            try:
                raw = self.read_raw(txn, key)
                out.append(None if raw is None else _object(raw[0], raw[1], txn, verify, key))
            except CorruptBlockError as e:
                out.append(e)
        return out

    def contains(self, key: BlockKey) -> bool:
        with self.env.begin(buffers=True) as txn:
            return txn.get(key, db=self._hdr) is not None

    def entries(self) -> Iterator[TierEntry]:
        """Every stored block's meta record (to rebuild the index on open)."""
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self._meta):
                seq, nbytes, pos = _META.unpack(v)
                yield TierEntry(BlockKey(bytes(k)), seq, nbytes, None if pos < 0 else pos)

    def stat_entries(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._hdr)["entries"])

    # -- fault injection for tests and operators ------------------------------------
    def overwrite_payload(self, key: BlockKey, payload: bytes) -> None:
        """Replace a block's payload bytes without touching its header (corruption drill)."""
        with self.env.begin(write=True) as txn:
            txn.put(key, payload, db=self._data)

    def overwrite_header(self, key: BlockKey, header: bytes) -> None:
        """Replace a block's header bytes (corruption drill)."""
        with self.env.begin(write=True) as txn:
            txn.put(key, header, db=self._hdr)


def _object(hdr: Any, data: Any, txn: lmdb.Transaction, verify: bool, key: BlockKey) -> BlockObject:
    # Wrap the mapped payload so that every numpy/Arrow view of it keeps the read
    # transaction (and with it the mapped pages) alive: ``base=txn``.
    view = pa.py_buffer(data)
    payload = pa.foreign_buffer(view.address, view.size, base=txn) if view.size else view
    obj = BlockObject.from_parts(hdr, data, owner=txn, verify=verify, buffer=payload)
    if obj.header.key != key:
        raise CorruptBlockError("header key does not match the record key")
    return obj


__all__ = ["LmdbTier", "TierEntry", "TierFullError", "TierName", "TierOwnedError"]
