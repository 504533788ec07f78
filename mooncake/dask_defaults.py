"""Dask settings a mooncake cluster starts with: Dask's periodic housekeeping made rarer.

Every Dask server runs periodic callbacks on its event loop whatever the load: an event
loop health tick every 20 ms (scheduler, each Nanny, each worker), a sampling profiler
over the task threads every 10 ms and a memory check every 100 ms (each worker, and each
Nanny over its worker), a system monitor every 500 ms. Idle, on a two-worker embedded
cluster they cost ~65 CPU ms per second in the client's process (scheduler + Nannies)
and ~40 in each worker (``benchmarks/runtime_overhead.py``), on the cores the engines
compute on. Mooncake's tasks are few and long, so none of them needs that resolution:

- the tick only warns about a blocked event loop (after ``distributed.admin.tick.limit``,
  3 s): every 500 ms still catches that;
- the profiler feeds the dashboard's profile page, which shows nothing useful for tasks
  that wait on an engine in another process;
- the memory check enforces the worker's memory limits; once a second is enough for a
  process whose memory is its engine's, allocated at start.

A setting is changed only while it still has Dask's default: one set to another value
in a Dask config file or a ``DASK_*`` environment variable is left alone.
``MOONCAKE_DASK_QUIET=0`` keeps all of Dask's defaults (e.g. to get the profiler back).
"""

from __future__ import annotations

import os

import dask

ENV = "MOONCAKE_DASK_QUIET"
"""``0``: change nothing, keep Dask's own defaults."""

QUIET: dict[str, tuple[object, object]] = {
    # key: (Dask's default, mooncake's)
    "distributed.admin.tick.interval": ("20ms", "500ms"),
    "distributed.worker.profile.enabled": (True, False),
    "distributed.worker.memory.monitor-interval": ("100ms", "1s"),
    "distributed.admin.system-monitor.interval": ("500ms", "2s"),
}


def quiet_config() -> dict[str, object]:
    """The settings to change here: those of ``QUIET`` still at Dask's default."""
    if os.environ.get(ENV) == "0":
        return {}
    return {
        key: ours
        for key, (default, ours) in QUIET.items()
        if dask.config.get(key, default=None) == default
    }


def quiet_env() -> dict[str, str]:
    """The same as ``DASK_*`` environment variables, for a worker started as a command."""
    return {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in quiet_config().items()
    }


__all__ = ["ENV", "QUIET", "quiet_config", "quiet_env"]
