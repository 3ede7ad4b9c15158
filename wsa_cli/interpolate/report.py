"""Turning an :class:`~wsa_cli.interpolate.run.InterpolationResult` into rows: CSV, tables, sparklines.

Pure functions, no printing: the CLI decides where text goes.

CSV layout (one file, tidy): a ``row`` column says ``curve`` (one row per mode and alpha, with
the curve metrics) or ``summary`` (one row per mode, alpha empty, with the summary metrics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from wsa_cli.interpolate.run import InterpolationResult

SPARK_CHARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], lo: float | None = None, hi: float | None = None) -> str:
    """One character per value, scaled between ``lo`` and ``hi`` (default: the values' range).

    Missing or non-finite values show as a space, so a diverged point is visible as a gap.

    Example:
        >>> sparkline([0.0, 1.0, 2.0, 1.0, 0.0])
        '▁▅█▅▁'
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(values)
    lo = min(finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    span = hi - lo
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif span <= 0:
            out.append(SPARK_CHARS[0])
        else:
            idx = round((v - lo) / span * (len(SPARK_CHARS) - 1))
            out.append(SPARK_CHARS[min(max(idx, 0), len(SPARK_CHARS) - 1)])
    return "".join(out)


def chart_metric(result: InterpolationResult) -> str | None:
    """Which curve metric the inline chart shows: loss, else accuracy, else the first column."""
    for name in ("loss", "accuracy", "min_std_ratio"):
        if name in result.metrics:
            return name
    return result.metrics[0] if result.metrics else None


def spark_range(result: InterpolationResult) -> tuple[float, float] | None:
    """The shared scale of the modes' sparklines: the chart metric's lowest and highest value."""
    metric = chart_metric(result)
    values = [r.get(metric) for m in result.modes for r in m.rows] if metric else []
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (min(finite), max(finite)) if finite else None


def mode_sparklines(result: InterpolationResult) -> dict[str, str]:
    """A sparkline per mode on a shared scale, so the modes' heights compare directly."""
    metric = chart_metric(result)
    if metric is None:
        return {m.mode: "" for m in result.modes}
    lo, hi = spark_range(result) or (None, None)
    return {m.mode: sparkline([r.get(metric) for r in m.rows], lo, hi) for m in result.modes}


def summary_columns(result: InterpolationResult) -> list[str]:
    """Summary keys in a stable order (the union over modes, first-seen order)."""
    cols: list[str] = []
    for m in result.modes:
        for k in m.summary:
            if k not in cols:
                cols.append(k)
    return cols


def csv_columns(result: InterpolationResult) -> list[str]:
    """``mode, row, alpha, <curve metrics>, <summary metrics>``, each name once.

    A summary metric named like a curve metric (the data-free ``min_std_ratio``, ``max_scope_kl``
    and their ``_layer``) shares its column: per-alpha values on curve rows, the path's value on
    the summary row.
    """
    return list(dict.fromkeys(["mode", "row", "alpha", *result.metrics, *summary_columns(result)]))


def csv_rows(result: InterpolationResult) -> list[dict[str, Any]]:
    """Curve rows then one summary row per mode (see the module docstring)."""
    rows: list[dict[str, Any]] = []
    for m in result.modes:
        for r in m.rows:
            rows.append({"mode": m.mode, "row": "curve", **r})
    for m in result.modes:
        rows.append({"mode": m.mode, "row": "summary", **m.summary})
    return rows


def curve_table(result: InterpolationResult) -> tuple[list[str], list[list[Any]]]:
    """Side-by-side curve table: ``alpha`` then ``<mode> <metric>`` for each mode and metric."""
    metrics = [c for c in result.metrics if not c.endswith("_layer")]
    if result.kind != "evaluation":  # the terminal gets the headline columns; JSON/CSV have all
        metrics = [c for c in ("mean_std_ratio", "min_std_ratio", "max_scope_kl") if c in metrics]
    columns = ["alpha"] + [f"{m.mode} {k}" for m in result.modes for k in metrics]
    rows = []
    for i, alpha in enumerate(result.alphas):
        row: list[Any] = [alpha]
        for m in result.modes:
            row.extend(m.rows[i].get(k) for k in metrics)
        rows.append(row)
    return columns, rows


#: Summary columns shown in the terminal table (all of them are in JSON/CSV).
TABLE_SUMMARY_EVAL = (
    ("loss 0", "loss_0"), ("loss 1", "loss_1"),
    ("barrier", "loss_barrier"), ("at", "loss_barrier_alpha"),
    ("vs mean", "loss_barrier_mean"), ("mid", "loss_barrier_mid"),
    ("vs inputs", "loss_barrier_inputs"),
    ("acc 0", "accuracy_0"), ("acc 1", "accuracy_1"),
    ("acc barrier", "acc_barrier"), ("at ", "acc_barrier_alpha"),
)  # fmt: skip
TABLE_SUMMARY_DIAG = (
    ("distance", "distance"), ("cosine", "cosine"),
    ("std shrinkage", "std_shrinkage"), ("at", "min_std_ratio_alpha"), ("layer", "min_std_ratio_layer"),
    ("max scope KL", "max_scope_kl"), ("at ", "max_scope_kl_alpha"),
)  # fmt: skip


def summary_table(result: InterpolationResult) -> tuple[list[str], list[list[Any]]]:
    """One row per mode: the headline barrier numbers and an inline chart of the curve."""
    spec = TABLE_SUMMARY_EVAL if result.kind == "evaluation" else TABLE_SUMMARY_DIAG
    sparks = mode_sparklines(result)
    metric = chart_metric(result) or ""
    scale = spark_range(result)
    shown = ""
    if scale is not None:
        digits = next((d for d in (3, 4, 5, 6, 8) if f"{scale[0]:.{d}g}" != f"{scale[1]:.{d}g}"), 3)  # the ends must read apart
        shown = f" {scale[0]:.{digits}g}..{scale[1]:.{digits}g}"
    columns = ["mode", *(label for label, _ in spec), f"{metric} vs alpha{shown}"]
    rows = [[m.mode, *(m.summary.get(key) for _, key in spec), sparks[m.mode]] for m in result.modes]
    return columns, rows
