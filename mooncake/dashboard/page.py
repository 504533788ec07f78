"""The "Mooncake" page of the Dask dashboard (Bokeh), refreshed twice a second from the
cluster's :class:`~mooncake.metrics.MetricsState` (owned by the monitor plugin, which
hands this page a getter for it).

Panels: a worker table (role, running/waiting, batch, prefill queue, KV blocks), KV
occupancy per worker and tier, prefix-cache hit rate over time, TTFT and TBT histograms
with the SLO as a vertical line, and rejections over time. Every data source has a
``name`` (``mooncake-workers``, ``mooncake-kv``, ``mooncake-hit-rate``, ``mooncake-ttft``,
``mooncake-tbt``, ``mooncake-rejections``) so that scripts can find them in
``Bokeh.documents``; the summary line counts what the plots hold.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, DataTable, Div, FactorRange, Span, TableColumn
from bokeh.plotting import figure

from mooncake.metrics import TIERS, Histogram, MetricsState

REFRESH_MS = 500


def _hist(h: Histogram, slo: float) -> dict[str, list[float]]:
    """Log-spaced bars of the recent window of ``h`` on a range that always shows the
    SLO (latencies far below an SLO would otherwise share one bar)."""
    values = np.array([v for _, v in h.recent], dtype=float)
    values = values[values > 0]
    if values.size == 0:
        return {"left": [], "right": [], "count": []}
    lo, hi = float(values.min()), float(values.max())
    if slo > 0:
        lo, hi = min(lo, slo), max(hi, slo)
    lo, hi = lo / 1.5, hi * 1.5
    edges = np.geomspace(lo, hi, 41)
    counts, _ = np.histogram(values, bins=edges)
    return {
        "left": edges[:-1].tolist(),
        "right": edges[1:].tolist(),
        "count": counts.astype(float).tolist(),
    }


class MooncakePage:
    """The page's models and their update from ``state()``, the metric state to draw
    (None while there is nothing to draw)."""

    def __init__(self, state: Callable[[], MetricsState | None]) -> None:
        self.state = state
        self.t0 = time.time()
        self.summary = Div(
            text="waiting for the Conductor...",
            name="mooncake-summary",
            sizing_mode="stretch_width",
        )
        self.workers = ColumnDataSource(
            {
                k: []
                for k in (
                    "worker",
                    "role",
                    "running",
                    "waiting",
                    "batch",
                    "prefill_queue_s",
                    "kv_used",
                    "kv_total",
                    "cached",
                    "store",
                )
            },
            name="mooncake-workers",
        )
        table = DataTable(
            source=self.workers,
            columns=[
                TableColumn(field="worker", title="worker"),
                TableColumn(field="role", title="role"),
                TableColumn(field="running", title="running"),
                TableColumn(field="waiting", title="waiting"),
                TableColumn(field="batch", title="batch"),
                TableColumn(field="prefill_queue_s", title="prefill queue (s)"),
                TableColumn(field="kv_used", title="KV used (device blocks)"),
                TableColumn(field="kv_total", title="KV total"),
                TableColumn(field="cached", title="cached blocks"),
                TableColumn(field="store", title="store blocks used/total (host, ssd)"),
            ],
            height=160,
            sizing_mode="stretch_width",
            index_position=None,
        )
        self.kv = ColumnDataSource({"row": [], "in_use": [], "cached": []}, name="mooncake-kv")
        kv_fig = figure(
            title="KV blocks per worker and tier (fraction of the tier)",
            y_range=FactorRange(factors=[]),
            x_range=(0, 1),
            height=220,
            width=460,
            tools="hover",
            tooltips=[("", "@row"), ("in use", "@in_use{0.0%}"), ("cached", "@cached{0.0%}")],
            toolbar_location=None,
        )
        kv_fig.hbar_stack(
            ["in_use", "cached"],
            y="row",
            height=0.7,
            source=self.kv,
            color=["#1f77b4", "#aec7e8"],
            legend_label=["in use", "cached, evictable"],
        )
        kv_fig.legend.location = "bottom_right"
        self.kv_fig = kv_fig
        self.hit = ColumnDataSource({"t": [], "hit_rate": []}, name="mooncake-hit-rate")
        hit_fig = figure(
            title="Prefix-cache hit rate (tokens, per interval)",
            height=220,
            width=460,
            y_range=(0, 1.05),
            x_axis_label="seconds since start",
            tools="",
            toolbar_location=None,
        )
        hit_fig.line("t", "hit_rate", source=self.hit, line_width=2)
        hit_fig.scatter("t", "hit_rate", source=self.hit, size=4)
        self.rej = ColumnDataSource(
            {"t": [], "rejected_per_s": [], "admitted_per_s": []}, name="mooncake-rejections"
        )
        rej_fig = figure(
            title="Admitted and rejected requests per second",
            height=220,
            width=460,
            x_axis_label="seconds since start",
            tools="",
            toolbar_location=None,
        )
        rej_fig.line(
            "t",
            "admitted_per_s",
            source=self.rej,
            line_width=2,
            color="#2ca02c",
            legend_label="admitted",
        )
        rej_fig.line(
            "t",
            "rejected_per_s",
            source=self.rej,
            line_width=2,
            color="#d62728",
            legend_label="rejected",
        )
        rej_fig.legend.location = "top_left"
        self.ttft = ColumnDataSource({"left": [], "right": [], "count": []}, name="mooncake-ttft")
        self.tbt = ColumnDataSource({"left": [], "right": [], "count": []}, name="mooncake-tbt")
        self.ttft_slo = Span(
            location=0, dimension="height", line_color="#d62728", line_dash="dashed", line_width=2
        )
        self.tbt_slo = Span(
            location=0, dimension="height", line_color="#d62728", line_dash="dashed", line_width=2
        )
        figs = []
        for title, src, span in (
            ("TTFT (s), SLO dashed", self.ttft, self.ttft_slo),
            ("TBT: mean of slowest 10% gaps (s), SLO dashed", self.tbt, self.tbt_slo),
        ):
            f = figure(
                title=title,
                height=220,
                width=460,
                x_axis_type="log",
                tools="",
                toolbar_location=None,
            )
            f.quad(left="left", right="right", top="count", bottom=0, source=src, fill_alpha=0.7)
            f.add_layout(span)
            figs.append(f)
        self.root = column(
            self.summary,
            table,
            row(kv_fig, hit_fig, rej_fig),
            row(*figs),
            sizing_mode="stretch_width",
        )

    def update(self) -> None:
        m = self.state()
        if m is None:
            return
        workers = sorted(m.workers.items())
        self.workers.data = {
            "worker": [w for w, _ in workers],
            "role": [ld.role for _, ld in workers],
            "running": [ld.running for _, ld in workers],
            "waiting": [ld.waiting for _, ld in workers],
            "batch": [ld.batch_size for _, ld in workers],
            "prefill_queue_s": [round(ld.prefill_queue_s, 3) for _, ld in workers],
            "kv_used": [ld.kv_blocks.get("device", (0, 0))[0] for _, ld in workers],
            "kv_total": [ld.kv_blocks.get("device", (0, 0))[1] for _, ld in workers],
            "cached": [ld.cached_blocks for _, ld in workers],
            "store": [
                ", ".join(f"{t} {u}/{n}" for t, (u, n) in ld.kv_blocks.items() if t != "device")
                or "-"
                for _, ld in workers
            ],
        }
        rows: list[tuple[str, str]] = []
        in_use: list[float] = []
        cached: list[float] = []
        for w, ld in workers:
            label = f"{ld.role} :{w.rsplit(':', 1)[-1]}"
            for tier in TIERS:
                used, total = ld.kv_blocks.get(tier, (0, 0))
                rows.append((label, tier))
                in_use.append(used / total if total else 0.0)
                # Cached blocks not held by a running request (a lower bound: cached
                # blocks of running requests count as in use).
                extra = max(0, min(ld.cached_blocks, total - used) if tier == "device" else 0)
                cached.append(extra / total if total else 0.0)
        if list(self.kv_fig.y_range.factors) != rows:
            self.kv_fig.y_range.factors = rows
        self.kv.data = {"row": rows, "in_use": in_use, "cached": cached}
        rates = m.rates()
        pts = list(m.timeline)
        t0 = pts[0].t if pts else self.t0
        self.hit.data = {
            "t": [t - t0 for t, r, _ in rates if r is not None],
            "hit_rate": [r for _, r, _ in rates if r is not None],
        }
        admitted = [
            (b.admitted - a.admitted) / max(1e-9, b.t - a.t) for a, b in itertools.pairwise(pts)
        ]
        self.rej.data = {
            "t": [t - t0 for t, _, _ in rates],
            "rejected_per_s": [r for _, _, r in rates],
            "admitted_per_s": admitted,
        }
        slo_ttft, slo_tbt = float(m.ttft_slo_s or 0.0), float(m.tbt_slo_s or 0.0)
        self.ttft.data = _hist(m.ttft, slo_ttft)
        self.tbt.data = _hist(m.tbt, slo_tbt)
        self.ttft_slo.location = slo_ttft
        self.tbt_slo.location = slo_tbt
        p50 = m.ttft.quantile(0.5)
        self.summary.text = (
            f"<b>Mooncake</b> &mdash; model <code>{m.model_name}</code>, {len(workers)} workers; "
            f"requests: {m.ttft.count} finished, {m.admitted} admitted, {sum(m.rejected.values())} "
            f"rejected; prefix-cache hit rate {m.hit_rate():.1%} of {m.query_tokens} prompt tokens "
            f"(below-block shares: {m.lookups['below_block']}); TTFT p50 "
            f"{p50 if p50 is None else round(p50, 3)} s; KV moved "
            f"{sum(m.transfer_bytes.values()) / 2**20:.1f} MiB "
            f"({', '.join(sorted(m.transfer_bytes)) or 'none'})<span id='mooncake-counts' "
            f"data-ttft='{len(m.ttft.recent)}' data-tbt='{len(m.tbt.recent)}' "
            f"data-hit='{len(self.hit.data['t'])}' data-workers='{len(workers)}'></span>"
        )


def mooncake_doc(
    scheduler: Any, extra: dict[str, Any], doc: Any, *, state: Callable[[], MetricsState | None]
) -> None:
    """Bokeh document factory, called per browser session (``state``: the metric state
    to draw, bound by the monitor plugin)."""
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    page = MooncakePage(state)
    page.update()
    doc.add_periodic_callback(page.update, REFRESH_MS)
    doc.title = "Dask: Mooncake"
    doc.add_root(page.root)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


__all__ = ["REFRESH_MS", "MooncakePage", "mooncake_doc"]
