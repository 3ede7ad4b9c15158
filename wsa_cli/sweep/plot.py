"""``wsa sweep --plot FILE.png``: the evaluated points over the first two front metrics, the front drawn through them.

With one numeric axis a second panel shows every metric against it. Needs matplotlib (the
``plot`` extra); written atomically like ``wsa interpolate --plot``.
"""

from __future__ import annotations

from pathlib import Path

from wsa_cli.interpolate.plot import check_plot_output, require_matplotlib, save_figure
from wsa_cli.sweep.result import SweepResult


def plot_sweep(result: SweepResult, out: str | Path) -> Path:
    """Draw the sweep to ``out`` (.png, .svg or .pdf)."""
    plt = require_matplotlib()
    out = Path(out)
    one_axis = len(result.axes) == 1 and all(isinstance(v, (int, float)) for v in result.axes[0]["values"])
    panels = 2 if one_axis else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels, 4.0), squeeze=False)
    ax = axes[0][0]
    if len(result.front_metrics) >= 2:
        mx, my = result.front_metrics[:2]
        pts = [(r["metrics"].get(mx), r["metrics"].get(my), r["index"]) for r in result.points]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, color="0.6", label="evaluated")
        front = sorted((p for p in pts if p[2] in result.front), key=lambda p: p[0])
        ax.plot([p[0] for p in front], [p[1] for p in front], marker="o", color="C3", label="Pareto front")
        for p in front:
            ax.annotate(str(p[2]), (p[0], p[1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"{mx} ({result.directions[mx]})")
        ax.set_ylabel(f"{my} ({result.directions[my]})")
        ax.legend()
    ax.grid(True, alpha=0.3)
    if one_axis:
        ax2 = axes[0][1]
        path = result.axes[0]["path"]
        for m in result.metrics:
            xs = [r["point"][path] for r in result.points if r["metrics"].get(m) is not None]
            ys = [r["metrics"][m] for r in result.points if r["metrics"].get(m) is not None]
            ax2.plot(xs, ys, marker="o", markersize=3, label=m)
        ax2.set_xlabel(path)
        ax2.grid(True, alpha=0.3)
        ax2.legend()
    fig.suptitle(f"sweep {Path(result.recipe).name} ({result.evaluator})")
    fig.tight_layout()
    return save_figure(fig, out)


__all__ = ["check_plot_output", "plot_sweep", "require_matplotlib"]
