"""Block key invariants and the test vectors of docs/kv-hashing.md."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mooncake.kvcache.hashing import block_keys, hash_block, root_key

FP = "0" * 32
ROOT = root_key(0, FP)


def test_vectors():
    """The published vectors: any change to the spec breaks this test on purpose."""
    assert ROOT.hex() == "e798ba45ab7365c14559e262b5d54c87"
    assert root_key(0, FP, "tenant-a").hex() == "b7e73473d5e780728f39f7d48e58930d"
    assert root_key(1, FP).hex() == "82ddec099b5d7482be832b235fb2cf54"
    keys = block_keys(list(range(8)), 4, ROOT)
    assert [k.hex() for k in keys] == [
        "71666ad123a8d4b408c798fe2a260b53",
        "a8348223cfeb34b0510ffb8bda9a98e7",
    ]
    assert hash_block(ROOT, [0, 1, 2, 3], b"lora:7").hex() == "bb0e543016fb3429b8ffc768c3b01dbd"
    salted = block_keys(list(range(8)), 4, root_key(0, FP, "tenant-a"))
    assert [k.hex() for k in salted] == [
        "26db4f6b8d596ac2ebb545a95a3772c7",
        "c4b2a87c85dc0581f65cefa1a231d7ad",
    ]
    assert root_key(0, FP, "tenant-b").hex() == "a6761a850fb4998e23f145592b235398"
    salted = block_keys(list(range(8)), 4, root_key(0, FP, "tenant-b"))
    assert [k.hex() for k in salted] == [
        "493620f98bbfd04cc6245fb9a7b16763",
        "bdaf91807097d44293c928e409b04e2b",
    ]


def test_same_prefix_same_keys():
    """Two sequences sharing 3 blocks share exactly those 3 keys."""
    a = block_keys(list(range(12)) + [1, 2, 3, 4], 4, ROOT)
    b = block_keys(list(range(12)) + [9, 9, 9, 9], 4, ROOT)
    assert a[:3] == b[:3] and a[3] != b[3]


def test_changed_token_changes_every_later_key():
    """Changing one token in block 1 changes keys 1..end, keeps key 0."""
    toks = list(range(20))
    other = toks.copy()
    other[5] = 999
    a, b = block_keys(toks, 4, ROOT), block_keys(other, 4, ROOT)
    assert a[0] == b[0]
    assert all(x != y for x, y in zip(a[1:], b[1:]))


def test_partial_block_has_no_key():
    assert len(block_keys(list(range(11)), 4, ROOT)) == 2


@pytest.mark.parametrize(
    "other", [root_key(0, "1" * 32), root_key(0, FP, "tenant-b"), root_key(7, FP)]
)
def test_model_salt_seed_isolation(other):
    """Another model, salt or seed gives disjoint keys for the same tokens."""
    toks = list(range(16))
    assert set(block_keys(toks, 4, ROOT)).isdisjoint(block_keys(toks, 4, other))


def test_empty_salt_equals_no_salt():
    assert root_key(0, FP, "") == root_key(0, FP, None)


def test_identical_across_processes():
    """A fresh interpreter (different PYTHONHASHSEED) computes the same keys."""
    code = (
        "from mooncake.kvcache.hashing import *; "
        "print(block_keys(list(range(8)),4,root_key(0,'0'*32))[1].hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": "."},
    )
    assert out.stdout.strip() == "a8348223cfeb34b0510ffb8bda9a98e7"


def test_bad_block_size():
    with pytest.raises(ValueError, match="block_size"):
        block_keys([1, 2], 0, ROOT)
