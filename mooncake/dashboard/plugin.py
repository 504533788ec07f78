"""``MonitorPlugin``: owns the cluster's metric state and installs the Mooncake page and
the metrics collector that draw it in the scheduler process.

- The state (:class:`~mooncake.metrics.MetricsState`) is the monitor's; the Conductor
  plugin finds the monitor by name when it starts and feeds that state (placements,
  rejections, worker reports). A Conductor registered before the monitor has been
  feeding a state of its own, which the monitor then adopts, so nothing counted is lost.

- The page is a Bokeh application served next to Dask's own (a second
  ``BokehTornado`` added to the scheduler's routing application, under the same
  prefix), linked from the dashboard's navigation bar as "Mooncake". The Dask config
  route list (``distributed.scheduler.http.routes``) and the module-level application
  table are read when the scheduler starts, before a client can register a plugin, so
  the page is added to the running HTTP application instead.
- The collector is registered once per process in ``prometheus_client.REGISTRY``, which
  the scheduler's ``/metrics`` serves; it reads the monitor of the most recently started
  scheduler (tests start several in one process, one after another), and shows nothing
  until a Conductor feeds it.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref

import prometheus_client
from distributed import Scheduler, SchedulerPlugin

from mooncake.conductor.plugin import PLUGIN_NAME as CONDUCTOR
from mooncake.metrics import MONITOR_PLUGIN_NAME, MetricsState, MooncakeCollector

logger = logging.getLogger(__name__)

PAGE_PATH = "mooncake"
"""The page's path under the dashboard's prefix (``http://host:8787/mooncake``)."""

_current: weakref.ReferenceType[Scheduler] | None = None
_registered = False
_lock = threading.Lock()


def metrics_of(scheduler: Scheduler | None) -> MetricsState | None:
    """The metric state of the scheduler's monitor, or None while no Conductor feeds it
    (no monitor, or no client has registered a Conductor yet)."""
    if scheduler is None or CONDUCTOR not in scheduler.plugins:
        return None
    metrics = getattr(scheduler.plugins.get(MONITOR_PLUGIN_NAME), "metrics", None)
    return metrics if isinstance(metrics, MetricsState) else None


def _state() -> MetricsState | None:
    return metrics_of(_current() if _current is not None else None)


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
    doc = functools.partial(mooncake_doc, state=functools.partial(metrics_of, scheduler))
    bokeh_app = BokehApplication(
        {f"/{PAGE_PATH}": doc}, scheduler, prefix=prefix, template_variables=tv
    )
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
    """Owns the metric state the page and ``/metrics`` draw; installs both on start."""

    name = MONITOR_PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None
        self.metrics = MetricsState()

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        earlier = getattr(scheduler.plugins.get(CONDUCTOR), "metrics", None)
        if isinstance(earlier, MetricsState):
            self.metrics = earlier
        install(scheduler)


__all__ = [
    "PAGE_PATH",
    "MonitorPlugin",
    "install",
    "install_collector",
    "install_page",
    "metrics_of",
]
