"""``MonitorPlugin``: installs the Mooncake page and the metrics collector in the
scheduler process.

- The page is a Bokeh application served next to Dask's own (a second
  ``BokehTornado`` added to the scheduler's routing application, under the same
  prefix), linked from the dashboard's navigation bar as "Mooncake". The Dask config
  route list (``distributed.scheduler.http.routes``) and the module-level application
  table are read when the scheduler starts, before a client can register a plugin, so
  the page is added to the running HTTP application instead.
- The collector is registered once per process in ``prometheus_client.REGISTRY``, which
  the scheduler's ``/metrics`` serves; it reads the Conductor plugin of the most recently
  started scheduler (tests start several in one process, one after another).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import prometheus_client
from distributed import Scheduler, SchedulerPlugin

from mooncake.conductor.plugin import PLUGIN_NAME as CONDUCTOR
from mooncake.metrics import MetricsState, MooncakeCollector

logger = logging.getLogger(__name__)

PAGE_PATH = "mooncake"
"""The page's path under the dashboard's prefix (``http://host:8787/mooncake``)."""

_current: weakref.ReferenceType[Scheduler] | None = None
_registered = False
_lock = threading.Lock()


def conductor_of(scheduler: Scheduler | None) -> Any:
    """The scheduler's Conductor plugin, or None before a client registered it."""
    if scheduler is None:
        return None
    return scheduler.plugins.get(CONDUCTOR)


def _state() -> MetricsState | None:
    plugin = conductor_of(_current() if _current is not None else None)
    metrics = getattr(plugin, "metrics", None)
    return metrics if isinstance(metrics, MetricsState) else None


def install_collector(scheduler: Scheduler) -> None:
    """Point the process's Mooncake collector at ``scheduler`` (registering it once)."""
    global _current, _registered
    with _lock:
        _current = weakref.ref(scheduler)
        if not _registered:
            prometheus_client.REGISTRY.register(MooncakeCollector(_state))
            _registered = True


def install_page(scheduler: Scheduler) -> bool:
    """Serve the Mooncake page from the scheduler's dashboard. Returns False when the
    scheduler has no dashboard (no HTTP server or no Bokeh)."""
    app = getattr(scheduler, "http_application", None)
    if app is None or getattr(scheduler, "_mooncake_page", False):
        return bool(getattr(scheduler, "_mooncake_page", False))
    try:
        from distributed.dashboard.core import BokehApplication
        from distributed.dashboard.scheduler import template_variables
        from tornado.ioloop import IOLoop

        from mooncake.dashboard.page import mooncake_doc
    except ImportError as e:  # pragma: no cover - bokeh missing
        logger.info("no Mooncake dashboard page: %s", e)
        return False
    # Same prefix as Dask's own pages (``dask scheduler --dashboard-prefix``).
    prefix = next((str(a._prefix) for a in app.applications if hasattr(a, "_prefix")), "")
    tv = template_variables(scheduler)
    if PAGE_PATH not in tv["pages"]:
        # The dashboard's page list is shared (memoized per scheduler): every Dask page's
        # navigation bar links to the Mooncake page from now on.
        tv["pages"].append(PAGE_PATH)
    bokeh_app = BokehApplication({f"/{PAGE_PATH}": mooncake_doc}, scheduler, prefix=prefix, template_variables=tv)
    app.add_application(bokeh_app)
    bokeh_app.initialize(IOLoop.current())
    bokeh_app.start()
    scheduler._mooncake_page = True  # type: ignore[attr-defined]
    return True


def install(scheduler: Scheduler) -> None:
    """Both: the page (when there is a dashboard) and the metrics collector."""
    install_collector(scheduler)
    install_page(scheduler)


class MonitorPlugin(SchedulerPlugin):
    """Registers the Mooncake page and metrics on start; holds no state of its own."""

    name = "mooncake-monitor"
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        install(scheduler)


__all__ = ["PAGE_PATH", "MonitorPlugin", "conductor_of", "install", "install_collector", "install_page"]
