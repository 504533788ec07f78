"""The monitor plugin owns the metric state that its page and ``/metrics`` draw, and the
Conductor plugin feeds that same state whichever of the two the scheduler starts first
(a stand-in scheduler: only the plugin table and handlers the plugins touch)."""

from __future__ import annotations

import asyncio
from typing import Any

from mooncake.conductor.config import ConductorConfig
from mooncake.conductor.plugin import ConductorPlugin
from mooncake.dashboard import MonitorPlugin
from mooncake.dashboard.plugin import metrics_of


class _Scheduler:
    """What the two plugins use of a scheduler (no HTTP server: no page is installed)."""

    def __init__(self) -> None:
        self.plugins: dict[str, Any] = {}
        self.handlers: dict[str, Any] = {}
        self.stream_handlers: dict[str, Any] = {}


def _scheduler() -> Any:
    return _Scheduler()


def _add(scheduler: Any, plugin: Any) -> None:
    """As ``Scheduler.add_plugin`` + ``start``: registered under its name, then started."""
    scheduler.plugins[plugin.name] = plugin
    asyncio.run(plugin.start(scheduler))


def test_conductor_feeds_the_monitors_state() -> None:
    """Monitor first (as ``mooncake.LLM`` registers them): the Conductor adopts the
    monitor's state and writes its SLOs there; nothing is drawn before a Conductor."""
    s = _scheduler()
    monitor = MonitorPlugin()
    _add(s, monitor)
    assert metrics_of(s) is None
    conductor = ConductorPlugin(ConductorConfig(ttft_slo_s=2.0, tbt_slo_s=0.2))
    _add(s, conductor)
    assert conductor.metrics is monitor.metrics is metrics_of(s)
    assert (monitor.metrics.ttft_slo_s, monitor.metrics.tbt_slo_s) == (2.0, 0.2)
    conductor.metrics.observe_admission(False, "estimated TTFT 3 s > SLO 2 s")
    assert sum(monitor.metrics.rejected.values()) == 1


def test_monitor_started_late_keeps_what_was_counted() -> None:
    """Conductor first (a monitor installed later, e.g. on a running scheduler): the
    monitor takes over the state the Conductor has been feeding, counts included."""
    s = _scheduler()
    conductor = ConductorPlugin(ConductorConfig())
    _add(s, conductor)
    conductor.metrics.observe_admission(True)
    monitor = MonitorPlugin()
    _add(s, monitor)
    assert monitor.metrics is conductor.metrics is metrics_of(s)
    assert monitor.metrics.admitted == 1
