"""SimConfig validation."""

from __future__ import annotations

import pytest

from mooncake.conductor import ConductorConfig
from mooncake.sim import SimConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "hybrid"}, "mode"),
        ({"prefill_instances": 0}, "prefill_instances"),
        ({"decode_instances": 0}, "decode_instances"),
        ({"eviction": "fifo"}, "eviction"),
        ({"chunk_tokens": 0}, "chunk_tokens"),
        ({"mode": "colocated"}, "conductor"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    """Each bad value raises ValueError naming its field."""
    with pytest.raises(ValueError, match=field):
        SimConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_match_paper_testbed() -> None:
    """8P+8D, 3M-token cache per prefill instance, KV capacity from HBM."""
    cfg = SimConfig()
    assert cfg.num_instances == 16 and cfg.prefill_cache_blocks == 5859
    assert cfg.kv_tokens == cfg.cost.kv_capacity_tokens() > 1_000_000
    colo = SimConfig(mode="colocated", conductor=ConductorConfig(colocated=True))
    assert colo.num_instances == 16
