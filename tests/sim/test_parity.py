"""Parity of the two drivers of the Conductor: the simulator and the live scheduler
plugin drive the same methods, and what only the simulator can do is an explicit,
documented what-if that is off by default."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import mooncake.conductor.plugin as plugin_mod
import mooncake.sim.engine as engine_mod
from mooncake.conductor import Conductor, ConductorConfig, CostModel
from mooncake.sim import SimConfig, make_request, simulate
from mooncake.sim.config import ONE_DRIVER_METHODS, WHAT_IFS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"


def conductor_api() -> set[str]:
    """Public methods of the Conductor (the interface a driver may call)."""
    return {
        n for n, v in vars(Conductor).items() if not n.startswith("_") and inspect.isfunction(v)
    }


def called(module: object, api: set[str]) -> set[str]:
    """Conductor methods a module calls (``.name(`` in its source)."""
    src = inspect.getsource(module)  # type: ignore[arg-type]
    return {m for m in re.findall(r"\.(\w+)\(", src) if m in api}


def test_every_conductor_method_is_driven_by_both_or_listed() -> None:
    """A Conductor method called by only one driver fails this test unless it is in
    ONE_DRIVER_METHODS (with its reason) — and a listed method that both now call, or
    that one of them no longer calls, must leave the list. Internal estimates the
    Conductor calls on itself (step_time, token_time, transfer_time) are not driven."""
    api = conductor_api() - {"step_time", "token_time", "transfer_time"}
    sim, live = called(engine_mod, api), called(plugin_mod, api)
    only_one = (sim ^ live) & api
    assert only_one == set(ONE_DRIVER_METHODS), (
        f"sim only: {sorted(sim - live)}, live only: {sorted(live - sim)}"
    )
    assert (sim | live) >= api - set(ONE_DRIVER_METHODS), (
        f"driven by neither: {sorted(api - sim - live)}"
    )


def test_one_driver_methods_and_what_ifs_are_documented() -> None:
    """docs/simulator.md names every what-if flag and every one-driver method."""
    text = DOCS.read_text()
    for name in (*WHAT_IFS, *ONE_DRIVER_METHODS):
        assert f"`{name}`" in text, name


def test_what_ifs_are_off_by_default() -> None:
    """Every what-if is a SimConfig field that defaults to False."""
    cfg = SimConfig()
    for name in WHAT_IFS:
        assert getattr(cfg, name) is False, name


def test_default_replay_never_calls_admit_to_decode(
    tiny_cost: CostModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode-side refusal runs only under the decode_refusal what-if: a default
    replay of a decode-bound trace never calls it, the what-if does."""
    calls: list[str] = []
    real = Conductor.admit_to_decode

    def spy(self: Conductor, rid: str, now: float) -> object:
        calls.append(rid)
        return real(self, rid, now)

    monkeypatch.setattr(Conductor, "admit_to_decode", spy)
    reqs = [make_request(i, 0.0, 1000, 100) for i in range(4)]
    base = dict(
        prefill_instances=2,
        decode_instances=1,
        conductor=ConductorConfig(),
        cost=tiny_cost,
        decode_kv_tokens=1500,
    )
    res = simulate(SimConfig(**base), reqs)  # type: ignore[arg-type]
    assert calls == [] and res.summary.rejected == 0
    simulate(SimConfig(**base, decode_refusal=True), reqs)  # type: ignore[arg-type]
    assert len(calls) == 4
