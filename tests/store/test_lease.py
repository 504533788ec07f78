from __future__ import annotations

import pytest

from mooncake.store.lease import Lease, LeaseTable
from mooncake.types import BlockKey

A, B = BlockKey(b"a" * 16), BlockKey(b"b" * 16)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lease_expires_and_release_is_per_holder() -> None:
    """Two holders on A: releasing one keeps A leased; the other's TTL ends the lease."""
    clock = FakeClock()
    table = LeaseTable(clock)
    l1 = Lease(table, [A, B], ttl_s=10)
    l2 = Lease(table, [A], ttl_s=5)
    l1.release()
    assert table.is_leased(A) and not table.is_leased(B)
    clock.t += 4.9
    assert table.is_leased(A)
    clock.t += 0.2
    assert not table.is_leased(A) and len(table) == 0
    l2.release()  # releasing an expired lease is harmless


def test_renew_extends_and_context_manager_releases() -> None:
    """renew() pushes expiry forward; leaving the with-block releases."""
    clock = FakeClock()
    table = LeaseTable(clock)
    with Lease(table, [A], ttl_s=1) as lease:
        clock.t += 0.9
        lease.renew(1)
        clock.t += 0.9
        assert table.is_leased(A)
    assert not table.is_leased(A)
    with pytest.raises(ValueError, match="ttl_s"):
        Lease(table, [A], ttl_s=0)
