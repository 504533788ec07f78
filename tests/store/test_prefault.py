"""A tier opened with ``TierConfig.prefault`` takes its capacity's pages when it opens
(``mooncake.store.prefault``) and works as any other."""

from __future__ import annotations

import dataclasses
import os

from mooncake.store.prefault import prefault
from mooncake.store.store import BlockStore
from tests.store.kvfactories import make_chain, store_config


def test_prefaulted_host_tier_stores_and_reads_blocks(host_dir: str) -> None:
    """A host tier opened with ``prefault=True`` reports how its pages were taken
    (madvise on LMDB's mapping, or fallocate of the file), then stores and reads blocks
    byte-identical; without it nothing is taken up front."""
    cfg = store_config(host_dir)
    assert cfg.host is not None
    on = dataclasses.replace(cfg, host=dataclasses.replace(cfg.host, prefault=True))
    blocks = make_chain(4)
    with BlockStore(on) as store:
        assert store.tiers["host"].prefaulted in ("madvise", "fallocate")
        assert all(store.put_many(blocks))
        objs = store.get_many([b.key for b in blocks])  # type: ignore[misc]
        assert [o.numpy().tobytes() for o in objs if o is not None] == [
            b.data.tobytes() for b in blocks
        ]
    with BlockStore(cfg) as store:
        assert store.tiers["host"].prefaulted == "none"


def test_prefault_of_a_file_not_mapped_here_falls_back_to_fallocate(tmp_path) -> None:
    """A file this process has not mapped is prefaulted by allocating its pages."""
    path = str(tmp_path / "data")
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    assert prefault(path, 1 << 20) == "fallocate"
    assert os.stat(path).st_blocks * 512 >= 1 << 20
