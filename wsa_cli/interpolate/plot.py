"""``--plot FILE.png``: a figure of the curves, drawn with matplotlib (an optional dependency).

matplotlib is not required by wsa; when it is missing, :func:`require_matplotlib` raises a
an InvalidValueError (exit 2) telling the user to install the ``plot`` extra -- checked before any work runs.
The figure is written atomically (temporary file in the target folder, then ``os.replace``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsa_cli.errors import InvalidValueError, OutputError
from wsa_cli.io.writer import staged_output
from wsa_cli.interpolate.run import InterpolationResult


def check_plot_output(out: str | Path, inputs: Sequence[str | Path], *, force: bool = False) -> Path:
    """Refuse a plot file name matplotlib cannot write, an input, or an existing file without ``force``.

    Example:
        >>> check_plot_output("curves.txt", [])
        Traceback (most recent call last):
        ...
        wsa_cli.errors.InvalidValueError: use a .png, .svg or .pdf file name
    """
    from wsa_cli.io import check_output

    if Path(out).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InvalidValueError("use a .png, .svg or .pdf file name", option="plot", value=str(out))
    return check_output(out, inputs, force=force)


def require_matplotlib() -> Any:
    """Import matplotlib with the non-interactive Agg backend, or explain how to get it.

    Example:
        >>> require_matplotlib()  # doctest: +SKIP
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidValueError("needs matplotlib, which is not installed; install the extra: pip install 'wsa[plot]'", option="plot") from None
    return plt


def save_figure(fig: Any, out: Path) -> Path:
    """Write a matplotlib figure atomically (no half-written PNG on a crash) and close it."""
    import matplotlib.pyplot as plt

    try:
        with staged_output(out) as tmp:
            fig.savefig(tmp, dpi=120, format=(out.suffix.lstrip(".") or "png"))
    except OSError as exc:
        raise OutputError(f"cannot write the plot: {exc.strerror or exc}", path=out) from None
    finally:
        plt.close(fig)
    return out


def plot_result(result: InterpolationResult, out: str | Path) -> Path:
    """Draw one panel per curve metric (loss, accuracy, ...), one line per mode; save to ``out``.

    Example:
        >>> plot_result(res, "barrier.png")  # doctest: +SKIP
    """
    plt = require_matplotlib()
    out = Path(out)
    metrics = [m for m in result.metrics if not m.endswith("_layer")][:4]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.5 * max(len(metrics), 1), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for curve in result.modes:
            ys = [float("nan") if r.get(metric) is None else r.get(metric) for r in curve.rows]
            ax.plot(result.alphas, ys, marker="o", markersize=3, label=curve.mode)
        ax.set_xlabel("alpha  (0 = A, 1 = B)")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend()
    label = "data-free diagnostics" if result.kind != "evaluation" else f"evaluator {result.evaluator}"
    fig.suptitle(f"{Path(result.a).name} -> {Path(result.b).name} ({label})")
    fig.tight_layout()
    return save_figure(fig, out)
