"""The simulator runs the Conductor's own policy objects, not copies."""

from __future__ import annotations

import inspect

import pytest

import mooncake.sim as sim_pkg
from mooncake.conductor import Conductor, ConductorConfig, CostModel, Placement, RequestInfo
from mooncake.conductor.admission import Rejection
from mooncake.conductor.placement import DecodeScheduler, PrefillScheduler
from mooncake.sim import SimConfig, Simulator, make_request
from mooncake.sim import engine as sim_engine


def test_simulator_uses_conductor_classes(tiny_cost: CostModel) -> None:
    """The simulator's scheduler is a mooncake.conductor.Conductor whose prefill and
    decode schedulers are the conductor's placement classes."""
    sim = Simulator(SimConfig(cost=tiny_cost), [])
    assert type(sim.conductor) is Conductor
    assert type(sim.conductor.prefill_scheduler) is PrefillScheduler
    assert type(sim.conductor.decode_scheduler) is DecodeScheduler
    assert sim_engine.Conductor is Conductor


def test_no_policy_class_is_redefined_in_sim() -> None:
    """No module of mooncake.sim defines its own scheduler/conductor class."""
    import pkgutil
    from importlib import import_module

    for info in pkgutil.iter_modules(sim_pkg.__path__):
        if info.name == "__main__":
            continue
        mod = import_module(f"mooncake.sim.{info.name}")
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and obj.__module__ == mod.__name__:
                assert "Scheduler" not in name and "Conductor" not in name, f"{mod.__name__}.{name}"


def test_every_arrival_goes_through_conductor_place(
    tiny_cost: CostModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spy on Conductor.place: a 3-request replay calls it exactly 3 times with the
    trace's block ids as keys."""
    calls: list[RequestInfo] = []
    real = Conductor.place

    def spy(self: Conductor, req: RequestInfo, now: float) -> Placement | Rejection:
        calls.append(req)
        return real(self, req, now)

    monkeypatch.setattr(Conductor, "place", spy)
    reqs = [make_request(i, float(i), 600, 2, [7, 100 + i]) for i in range(3)]
    Simulator(SimConfig(cost=tiny_cost, conductor=ConductorConfig()), reqs).run()
    assert [c.request_id for c in calls] == ["0", "1", "2"]
    assert calls[2].block_keys == (7, 102)
