from __future__ import annotations

import pytest

from mooncake.store.config import StoreConfig, TierConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"path": "", "capacity_bytes": 1}, "path"),
        ({"path": "/x", "capacity_bytes": 0}, "capacity_bytes"),
        ({"path": "/x", "capacity_bytes": 1, "map_headroom": 1.0}, "map_headroom"),
        ({"path": "/x", "capacity_bytes": 1, "max_readers": 0}, "max_readers"),
    ],
)
def test_tier_config_names_bad_field(kwargs: dict[str, object], field: str) -> None:
    """Each invalid TierConfig value raises ValueError starting with the field name."""
    with pytest.raises(ValueError, match=rf"^{field}:"):
        TierConfig(**kwargs)  # type: ignore[arg-type]


def test_store_config_validation_and_strict_parse() -> None:
    """Bad policy, no tiers, same path twice, and unknown keys are all
    rejected; nested dicts parse."""
    t = TierConfig(path="/a", capacity_bytes=10)
    with pytest.raises(ValueError, match=r"^eviction:"):
        StoreConfig(host=t, eviction="fifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^host:"):
        StoreConfig(host=None, ssd=None)
    with pytest.raises(ValueError, match=r"^ssd:"):
        StoreConfig(host=t, ssd=t)
    with pytest.raises(ValueError, match="lease_ttl_s"):
        StoreConfig(host=t, lease_ttl_s=0)
    with pytest.raises(ValueError, match="unknown field"):
        StoreConfig.from_dict(
            {"host": None, "ssd": {"path": "/s", "capacity_bytes": 5}, "colour": 1}
        )
    cfg = StoreConfig.from_dict(
        {"host": None, "ssd": {"path": "/s", "capacity_bytes": 5}, "eviction": "lfu"}
    )
    assert cfg.ssd == TierConfig(path="/s", capacity_bytes=5) and cfg.eviction == "lfu"
    assert t.map_size > t.capacity_bytes
