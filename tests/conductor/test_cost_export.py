"""Exporting the cost model a Conductor fitted online, and reading it back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mooncake.conductor import Conductor, ConductorConfig, CostModel
from mooncake.conductor.cost_export import (
    COST_MODEL_SCHEMA_VERSION,
    cost_model_from_dict,
    export_cost_model,
    load_cost_model,
)
from mooncake.conductor.plugin import ConductorPlugin


def fitted(tiny_cost: CostModel) -> Conductor:
    """A Conductor that saw 64 prefills running 3× slower than its prior, plus 0.05 s
    each, and transfers at 2e6 bytes/s."""
    c = Conductor(ConductorConfig(), ["P"], {"D": 10**6}, tiny_cost)
    for i in range(64):
        n = 200 + 37 * i
        c.on_prefill_finish(f"r{i}", 0.0, n, 0, 3 * tiny_cost.prefill_time(n) + 0.05)
        c.on_transfer(2e6, 1.0)
    for i in range(64):  # decode steps: 20 ms + 5 ms per sequence + 1 µs per KV token
        batch, kv = 1 + i % 8, 300 * (1 + i % 8) + 11 * i
        c.on_decode_step(batch, kv, 0.02 + 0.005 * batch + 1e-6 * kv)
    return c


def test_export_round_trip_reproduces_the_fitted_times(
    tiny_cost: CostModel, tmp_path: Path
) -> None:
    """Exported as JSON and loaded again, the cost model's prefill time equals the live
    estimator's estimate (well above the prior, toward the observed 3×) and its transfer uses the
    learned bandwidth; the document carries the schema version and the observation count."""
    c = fitted(tiny_cost)
    doc = export_cost_model(c)
    assert doc["schema_version"] == COST_MODEL_SCHEMA_VERSION and doc["prefill_observations"] == 64
    path = tmp_path / "cost.json"
    path.write_text(json.dumps(doc))
    cost = load_cost_model(path)
    for n, cached in ((500, 0), (2000, 512), (2000, 0)):
        assert cost.prefill_time(n, cached) == pytest.approx(
            c.estimator.estimate(n, cached), rel=1e-9
        )
    assert cost.prefill_time(2000) > 2 * tiny_cost.prefill_time(
        2000
    )  # moved toward the observed 3×
    assert cost.hardware.rdma_bandwidth == pytest.approx(c.bandwidth.bandwidth)
    assert cost.prefill_time(100, 100) == 0.0
    assert doc["decode_observations"] == 64
    for batch, kv in ((1, 100), (4, 3000), (16, 20_000)):
        assert cost.decode_step_time(batch, kv) == pytest.approx(
            c.decode_estimator.estimate(batch, kv), rel=1e-9
        )
    assert cost.decode_step_time(4, 3000) == pytest.approx(0.02 + 0.02 + 0.003, rel=0.05)


def test_a_conductor_without_decode_steps_exports_no_decode_fit(tiny_cost: CostModel) -> None:
    """Before any engine reported a decode-only step the export says decode_fit null
    (and 0 observations), and the loaded model times decode steps by its roofline; a
    file written before decode steps were fitted (no decode keys) loads the same way."""
    doc = export_cost_model(Conductor(ConductorConfig(), ["P"], {"D": 10**6}, tiny_cost))
    assert doc["decode_fit"] is None and doc["decode_observations"] == 0
    cost = cost_model_from_dict(doc)
    assert cost.decode_fit is None
    assert cost.decode_step_time(3, 10) == pytest.approx(tiny_cost.decode_step_time(3, 10))
    old = {k: v for k, v in doc.items() if not k.startswith("decode_")}
    assert cost_model_from_dict(old).decode_fit is None


def test_bad_documents_name_the_field(tiny_cost: CostModel, tmp_path: Path) -> None:
    """A wrong schema version, an unknown hardware field, a non-number coefficient, bad
    JSON and a missing file each raise ValueError naming what is wrong."""
    doc = export_cost_model(fitted(tiny_cost))
    with pytest.raises(ValueError, match="schema_version"):
        cost_model_from_dict({**doc, "schema_version": 99})
    with pytest.raises(ValueError, match=r"hardware\.warp_drive"):
        cost_model_from_dict({**doc, "hardware": {**doc["hardware"], "warp_drive": 1}})
    with pytest.raises(ValueError, match=r"prefill_fit\.fixed_s"):
        cost_model_from_dict({**doc, "prefill_fit": {**doc["prefill_fit"], "fixed_s": "x"}})
    with pytest.raises(ValueError, match=r"decode_fit\.per_seq_s"):
        cost_model_from_dict({**doc, "decode_fit": {**doc["decode_fit"], "per_seq_s": None}})
    with pytest.raises(ValueError, match=r"decode_fit: must be an object"):
        cost_model_from_dict({**doc, "decode_fit": [1, 2, 3]})
    bad = tmp_path / "bad.json"
    bad.write_text("{\n nope")
    with pytest.raises(ValueError, match=r"bad\.json:2: not valid JSON"):
        load_cost_model(bad)
    with pytest.raises(ValueError, match="no such file"):
        load_cost_model(tmp_path / "missing.json")


def test_plugin_handler_exports_its_conductor(tiny_cost: CostModel) -> None:
    """The scheduler plugin's mooncake_cost_model handler answers with the export of its
    Conductor, or an error before any worker has reported; once requests were reported
    finished it adds their median serving-path time (TTFT − engine queue − prefill:
    0.03, 0.05, 0.04 s → 0.04 s) as hardware.request_overhead_s, which the loaded
    model carries."""
    plugin = ConductorPlugin(ConductorConfig())
    assert "error" in plugin.handle_cost_model()
    plugin.conductor = fitted(tiny_cost)
    assert plugin.handle_cost_model() == export_cost_model(plugin.conductor)
    assert plugin.handle_cost_model()["hardware"]["request_overhead_s"] == 0.0
    for ttft, queue, prefill in ((0.2, 0.07, 0.1), (0.3, 0.05, 0.2), (0.5, 0.16, 0.3)):
        plugin.request_overhead.observe(ttft - queue - prefill)
    doc = plugin.handle_cost_model()
    assert doc["hardware"]["request_overhead_s"] == pytest.approx(0.04)
    assert cost_model_from_dict(doc).hardware.request_overhead_s == pytest.approx(0.04)


def test_export_carries_the_live_measurements(tiny_cost: CostModel) -> None:
    """The plugin exports what it measured besides the fits: the median hand-off
    (0.2 s), the median engine-loop gap between decode steps (2 ms), the prefill
    engine's step budget from its worker's facts, and a prefill step fit from
    prompt-only steps (50 ms per step + 1 ms per token). Loaded back, the cost model
    carries them; a file without them (written before) loads with zeros and no step
    fit."""
    from mooncake.conductor.cost_model import PrefillTimeEstimator

    plugin = ConductorPlugin(ConductorConfig())
    plugin.conductor = fitted(tiny_cost)
    plugin.worker_info["w"] = {
        "roles": ["prefill"],
        "max_num_batched_tokens": 2048,
        "long_prefill_chunk": 1024,
        "max_num_seqs": 64,
    }
    for s in (0.1, 0.2, 0.3):
        plugin.handoff.observe(s)
    for s in (0.001, 0.002, 0.004):
        plugin.step_gap.observe(s)
    plugin.prefill_steps = PrefillTimeEstimator(tiny_cost)
    for i in range(64):
        chunks = [(100 + 10 * i, 0), (300 + 7 * i, 100)][: 1 + i % 2]
        tokens = sum(e - s for e, s in chunks)
        plugin.prefill_steps.observe_step(chunks, 0.05 + tokens / 1000)
    doc = plugin.handle_cost_model()
    hw = doc["hardware"]
    assert hw["handoff_s"] == pytest.approx(0.2) and hw["token_overhead_s"] == pytest.approx(0.002)
    assert (hw["prefill_step_tokens"], hw["prefill_chunk_tokens"], hw["prefill_max_seqs"]) == (
        2048,
        1024,
        64,
    )
    assert doc["prefill_step_observations"] == 64
    cost = cost_model_from_dict(json.loads(json.dumps(doc)))
    assert cost.hardware.handoff_s == pytest.approx(0.2)
    # The fit is pulled slightly toward its prior (no fixed cost).
    assert cost.prefill_step_time([(1000, 0), (600, 100)]) == pytest.approx(0.05 + 1.5, rel=0.01)
    old = {k: v for k, v in doc.items() if not k.startswith("prefill_step")}
    old["hardware"] = {
        k: v
        for k, v in hw.items()
        if k not in ("handoff_s", "token_overhead_s") and not k.startswith("prefill_")
    }
    legacy = cost_model_from_dict(old)
    assert legacy.prefill_step_fit is None and legacy.hardware.prefill_step_tokens == 0
    assert legacy.hardware.handoff_s == 0.0 and legacy.hardware.token_overhead_s == 0.0


def test_handoff_seconds_leaves_out_a_regular_gap_and_the_transfer(
    tiny_cost: CostModel,
) -> None:
    """A request whose first token gap is 0.3 s and later gaps 10–30 ms (median 20 ms),
    with 1000 prompt tokens of KV at 1 byte/token over 1e6 bytes/s (1 ms): its hand-off
    is 0.3 − 0.02 − 0.001 s."""
    from mooncake.conductor.cost_export import handoff_seconds

    c = Conductor(ConductorConfig(), ["P"], {"D": 10**6}, tiny_cost)
    assert handoff_seconds(c, 1000, [0.3, 0.01, 0.02, 0.03]) == pytest.approx(0.279)
