"""The export arena and records written in place (``mooncake.store.shm_arena``,
``records.write_record_in_place``)."""

from __future__ import annotations

import numpy as np
import pytest

from mooncake.store.records import (
    encode_record,
    object_from_record,
    record_size,
    write_record_in_place,
)
from mooncake.store.shm_arena import ShmArena, map_arena
from tests.store.kvfactories import FINGERPRINT, TINY, make_chain


@pytest.mark.parametrize("algo", ["sum64", "crc32"])
def test_record_written_in_place_is_byte_identical_to_encoded(tmp_path, algo) -> None:
    """A record laid out in another process's mapping of the arena, its payload filled
    in place, has the same bytes as the store's own encoding, and reads back checked."""
    arena = ShmArena(str(tmp_path / "a"), 1 << 16)
    peer = map_arena(arena.path)  # what the engine process maps
    b = make_chain(3)[2]
    size = record_size(TINY, FINGERPRINT, TINY.block_size)
    region = arena.alloc(size)
    assert region is not None
    n = write_record_in_place(
        memoryview(peer)[region.offset : region.offset + size],
        b.key, b.parent, b.token_ids, TINY, FINGERPRINT, 2, algo,
        lambda view: np.copyto(view, b.data),
    )  # fmt: skip
    rec = bytes(arena.view(region)[:n])
    assert rec == bytes(encode_record(b, 2, algo, bytearray()))
    obj = object_from_record(rec, None, True, b.key)
    assert obj.header.position == 2 and np.array_equal(obj.numpy(), b.data)
    arena.free(region)
    peer.close()
    arena.close()


def test_arena_allocates_first_fit_and_merges_freed_regions(tmp_path) -> None:
    """Regions are 4 KiB aligned and disjoint; a request larger than any free span
    fails (the caller exports the old way); freed neighbours merge back."""
    arena = ShmArena(str(tmp_path / "a"), 16 * 4096)
    a, b, c = arena.alloc(1), arena.alloc(5000), arena.alloc(4096 * 13)
    assert a is not None and b is not None and c is not None
    assert (a.offset, a.size, b.offset, b.size, c.offset) == (0, 4096, 4096, 8192, 12288)
    assert arena.alloc(1) is None and arena.free_bytes == 0
    arena.free(b)
    assert arena.alloc(3 * 4096) is None
    arena.free(a)
    arena.free(c)
    assert arena.free_bytes == 16 * 4096 and arena.alloc(16 * 4096) is not None
    with pytest.raises(ValueError, match="size"):
        ShmArena(str(tmp_path / "b"), 0)
    arena.close()
