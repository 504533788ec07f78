"""One figure per run: latency distributions and what happened over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mooncake.bench.request import RequestResult


def _cdf(ax: object, values_ms: Sequence[float], label: str, slo_ms: float | None) -> None:
    xs = sorted(values_ms)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post")  # type: ignore[attr-defined]
    if slo_ms is not None:
        ax.axvline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO {slo_ms:g} ms")  # type: ignore[attr-defined]
        ax.legend(loc="lower right")  # type: ignore[attr-defined]
    ax.set_xlabel(f"{label} (ms)")  # type: ignore[attr-defined]
    ax.set_ylabel("fraction of requests")  # type: ignore[attr-defined]
    ax.grid(alpha=0.3)  # type: ignore[attr-defined]


def plot_run(
    results: Sequence[RequestResult],
    path: Path,
    title: str,
    slos_ms: dict[str, float] | None = None,
) -> Path:
    """Write a 2×2 PNG: TTFT and TPOT CDFs, TTFT over the run (rejections marked), E2E CDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slos_ms = slos_ms or {}
    ok = [r for r in results if r.success]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _cdf(axes[0][0], [r.ttft_s * 1000 for r in ok], "TTFT", slos_ms.get("ttft"))
    _cdf(
        axes[0][1],
        [r.tpot_s * 1000 for r in ok if r.output_tokens > 1],
        "TPOT",
        slos_ms.get("tpot"),
    )
    ax = axes[1][0]
    ax.scatter([r.start_s for r in ok], [r.ttft_s * 1000 for r in ok], s=8, label="TTFT")
    rej = [r for r in results if r.rejected]
    if rej:
        ax.scatter(
            [r.start_s for r in rej],
            [0.0] * len(rej),
            marker="x",
            color="red",
            s=20,
            label=f"rejected ({len(rej)})",
        )
    ax.set_xlabel("request sent at (s)")
    ax.set_ylabel("TTFT (ms)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    _cdf(axes[1][1], [r.latency_s * 1000 for r in ok], "E2E latency", slos_ms.get("e2el"))
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["plot_run"]
