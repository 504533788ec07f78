"""Monitoring on the scheduler: the "Mooncake" page of the Dask dashboard and the
Conductor's metrics on the scheduler's ``/metrics``.

``MonitorPlugin`` (a ``SchedulerPlugin``, registered by ``mooncake.LLM``) installs both
in the scheduler process; for a ``dask scheduler`` started by hand, ``--preload
mooncake.dashboard.preload`` installs them at start-up. The data come from the
Conductor plugin's :class:`~mooncake.metrics.MetricsState`.
"""

from __future__ import annotations

from mooncake.dashboard.plugin import PAGE_PATH, MonitorPlugin, install

__all__ = ["PAGE_PATH", "MonitorPlugin", "install"]
