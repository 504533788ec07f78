"""Plots of simulator results (matplotlib is imported only when plotting)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mooncake.sim.engine import SimResult
from mooncake.sim.sweep import CapacityCurve


def plot_run(
    result: SimResult,
    path: str | Path,
    title: str = "",
    ttft_slo_s: float | None = None,
    tbt_slos_s: Sequence[float] = (),
) -> None:
    """TTFT and TBT CDFs of one run, saved to ``path``.

    Args:
        result: the run.
        path: PNG to write.
        title: what ran (policy, split, rate scale); counts are appended.
        ttft_slo_s: drawn as a vertical line on the TTFT panel.
        tbt_slos_s: drawn as vertical lines on the TBT panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    served = [r for r in result.records if not r.rejected and r.ttft_s is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (
        (
            axes[0],
            [r.ttft_s for r in served if r.ttft_s is not None],
            "TTFT (s)",
            [ttft_slo_s] if ttft_slo_s is not None else [],
            1.0,
            "s",
        ),
        (
            axes[1],
            [1e3 * r.tbt_s for r in served if r.tbt_s is not None],
            "TBT, mean of slowest 10% gaps (ms)",
            list(tbt_slos_s),
            1e3,
            "ms",
        ),
    )
    for ax, values, xlabel, slos, scale, unit in panels:
        xs = np.sort(np.asarray(values, dtype=float))
        ax.plot(xs, np.arange(1, len(xs) + 1) / max(1, len(xs)))
        for slo in slos:
            ax.axvline(slo * scale, color="red", ls="--", lw=1)
            ax.annotate(
                f"SLO {slo * scale:g} {unit}",
                (slo * scale, 0.02),
                rotation=90,
                fontsize=7,
                color="red",
                ha="right",
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("CDF of served requests")
        ax.grid(alpha=0.3)
    counts = f"{len(served)} served, {result.summary.rejected} rejected"
    fig.suptitle(f"{title}: {counts}" if title else counts)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(
    curves: Sequence[CapacityCurve],
    path: str | Path,
    target: float = 0.9,
    labels: Mapping[str, str] | None = None,
    title: str = "",
) -> None:
    """SLO attainment vs rate scale, one panel per SLO pair, one line per curve.

    Args:
        curves: one per policy.
        path: PNG to write.
        target: attainment counted as capacity (a horizontal line).
        labels: legend label per curve name (e.g. with the cluster split).
        title: figure title (trace, admission).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves[0].capacity) if curves else []
    fig, axes = plt.subplots(
        1, max(1, len(names)), figsize=(5 * max(1, len(names)), 4), squeeze=False
    )
    for ax, label in zip(axes[0], names):
        for curve in curves:
            xs = [p.rate_scale for p in curve.points]
            name = (labels or {}).get(curve.name, curve.name)
            ax.plot(
                xs,
                [p.attainment[label] for p in curve.points],
                marker="o",
                label=f"{name} (cap {curve.capacity[label]:g}x)",
            )
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_title(f"SLO {label.replace(',', ', ')} s")
        ax.set_xlabel("arrival-rate scale")
        ax.set_ylabel("requests within both SLOs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["plot_curves", "plot_run"]
