"""Record headers on the same-host hand-off (``mooncake.store.handoff_records``): built
together for a whole export, checked before a decode engine copies a payload."""

from __future__ import annotations

import numpy as np
import pytest

from mooncake.store.block_object import encode_header, sum64
from mooncake.store.handoff_records import encode_headers, leading_heads, payload_at
from mooncake.store.records import record_size
from tests.store.kvfactories import FINGERPRINT, TINY, make_chain


def _laid_out(n: int, gap: int = 0) -> tuple[bytearray, list[int], list]:
    """``n`` chained blocks as records, ``gap`` bytes apart (0: back to back, as an
    export lays them out), headers from ``encode_headers``."""
    blocks = make_chain(n)
    size = record_size(TINY, FINGERPRINT, TINY.block_size) + gap
    poff = payload_at(FINGERPRINT, TINY.block_size)
    sums = np.array([sum64(memoryview(b.data).cast("B")) for b in blocks], dtype=np.uint64)
    heads = encode_headers(
        [b.key for b in blocks],
        [b.parent for b in blocks],
        [t for b in blocks for t in b.token_ids],
        list(range(n)),
        sums,
        TINY,
        FINGERPRINT,
    )
    buf = bytearray(n * size)
    for i, b in enumerate(blocks):
        buf[i * size : i * size + heads.shape[1]] = heads[i].tobytes()
        buf[i * size + poff : (i + 1) * size - gap] = b.data.tobytes()
    return buf, [i * size for i in range(n)], blocks


def test_headers_built_together_equal_one_at_a_time():
    """Each of 6 headers built together is byte for byte ``encode_header``'s of its
    block (key, parent, position, checksum, token ids, CRC)."""
    blocks = make_chain(6)
    sums = [sum64(memoryview(b.data).cast("B")) for b in blocks]
    heads = encode_headers(
        [b.key for b in blocks],
        [b.parent for b in blocks],
        [t for b in blocks for t in b.token_ids],
        [10 + i for i in range(6)],
        np.array(sums, dtype=np.uint64),
        TINY,
        FINGERPRINT,
    )
    for i, b in enumerate(blocks):
        assert heads[i].tobytes() == encode_header(b, sums[i], 10 + i)


@pytest.mark.parametrize("gap", [0, 64])
@pytest.mark.parametrize("damage", ["none", "magic", "crc", "key", "fingerprint"])
def test_leading_heads_stop_at_the_first_bad_header(damage, gap):
    """5 records; record 3 damaged (bad magic, a flipped byte the CRC catches, asked
    under another key): the leading run is 3 headers, with each block's token ids and
    payload checksum; undamaged, all 5. Read by an engine of another model (its
    fingerprint): none. The same whether the records are back to back (checked all
    together) or apart (one by one)."""
    buf, offsets, blocks = _laid_out(5, gap)
    keys = [b.key for b in blocks]
    off = offsets[3]
    if damage == "magic":
        buf[off] ^= 0xFF
    elif damage == "crc":
        buf[off + 100] ^= 0x01
    elif damage == "key":
        keys[3] = keys[4]
    heads = leading_heads(
        bytes(buf), offsets, keys, "other" if damage == "fingerprint" else FINGERPRINT, TINY
    )
    if damage == "fingerprint":
        assert heads == []
        return
    n = 5 if damage == "none" else 3
    assert [h.token_ids for h in heads] == [b.token_ids for b in blocks[:n]]
    assert [h.payload_checksum for h in heads] == [
        sum64(memoryview(b.data).cast("B")) for b in blocks[:n]
    ]
