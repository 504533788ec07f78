"""``dask scheduler --preload mooncake.dashboard.preload``: the Mooncake dashboard page
and metrics collector on a scheduler started by hand (the Conductor plugin, which a
``mooncake.LLM`` registers when it connects, supplies the data)."""

from __future__ import annotations

from typing import Any

from mooncake.dashboard.plugin import MonitorPlugin


async def dask_setup(scheduler: Any) -> None:
    if MonitorPlugin.name in scheduler.plugins:
        return
    plugin = MonitorPlugin()
    await plugin.start(scheduler)
    scheduler.add_plugin(plugin, idempotent=True)
