"""Plots of simulator results (matplotlib is imported only when plotting)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mooncake.sim.engine import SimResult
from mooncake.sim.sweep import CapacityCurve


def plot_run(result: SimResult, path: str | Path) -> None:
    """TTFT and TBT CDFs of one run, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    served = [r for r in result.records if not r.rejected and r.ttft_s is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, values, title in (
        (axes[0], [r.ttft_s for r in served if r.ttft_s is not None], "TTFT (s)"),
        (axes[1], [1e3 * r.tbt_s for r in served if r.tbt_s is not None], "TBT, mean of slowest 10% gaps (ms)"),
    ):
        xs = np.sort(np.asarray(values, dtype=float))
        ax.plot(xs, np.arange(1, len(xs) + 1) / max(1, len(xs)))
        ax.set_xlabel(title)
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(served)} served, {result.summary.rejected} rejected")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(curves: Sequence[CapacityCurve], path: str | Path, target: float = 0.9) -> None:
    """SLO attainment vs rate scale, one panel per SLO pair, one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(curves[0].capacity) if curves else []
    fig, axes = plt.subplots(1, max(1, len(labels)), figsize=(5 * max(1, len(labels)), 4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for curve in curves:
            xs = [p.rate_scale for p in curve.points]
            ax.plot(xs, [p.attainment[label] for p in curve.points], marker="o", label=f"{curve.name} (cap {curve.capacity[label]:g}x)")
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_title(label)
        ax.set_xlabel("arrival-rate scale")
        ax.set_ylabel("requests within both SLOs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["plot_curves", "plot_run"]
