"""Which way each metric is better, the best point per metric, and the Pareto front.

A metric whose name says it is a cost (``loss``, ``perplexity``, ``error``, ``distance``, ``kl``,
``barrier``...) is minimised; any other (``accuracy``, ``spearman``, ``agreement``...) is
maximised. ``--direction NAME=min|max`` overrides either. A point is on the front when no other
point is at least as good on every front metric and better on one; points where a front metric
is missing or NaN are never on it.

Example:
    >>> rows = [{"loss": 1.0, "accuracy": 0.5}, {"loss": 2.0, "accuracy": 0.9}, {"loss": 2.5, "accuracy": 0.8}]
    >>> pareto_front(rows, {"loss": "min", "accuracy": "max"})
    [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from wsa_cli.errors import InvalidValueError

DIRECTIONS = ("min", "max")
#: name parts that make a metric a cost (lower is better)
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error", "err", "distance", "kl", "barrier", "nll", "mse", "time")


def default_direction(metric: str) -> str:
    """``min`` for costs (loss, perplexity, error, distance...), ``max`` for everything else.

    Example:
        >>> default_direction("val_loss"), default_direction("accuracy")
        ('min', 'max')
    """
    parts = metric.lower().replace("-", "_").replace(".", "_").split("_")
    return "min" if any(p in LOWER_IS_BETTER for p in parts) else "max"


def parse_directions(specs: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``["loss=min", "bleu=max"]`` or ``{"loss": "min"}`` -> ``{metric: direction}``."""
    items = list(specs.items()) if isinstance(specs, Mapping) else []
    if not isinstance(specs, Mapping):
        for spec in specs:
            if "=" not in spec:
                raise InvalidValueError("expected METRIC=min or METRIC=max", option="direction", value=spec)
            k, v = spec.split("=", 1)
            items.append((k, v))
    out = {}
    for k, v in items:
        d = str(v).strip().lower()
        if d not in DIRECTIONS:
            raise InvalidValueError("expected METRIC=min or METRIC=max", option="direction", value=f"{k}={v}")
        out[str(k).strip()] = d
    return out


def directions_for(metrics: Sequence[str], given: Mapping[str, str]) -> dict[str, str]:
    """Every metric's direction: the given ones, the default for the rest."""
    return {m: given.get(m, default_direction(m)) for m in metrics}


def _value(row: Mapping[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def best_index(rows: Sequence[Mapping[str, Any]], metric: str, direction: str) -> int | None:
    """The first row with the best value of ``metric`` (None when no row has it)."""
    best: int | None = None
    for i, row in enumerate(rows):
        v = _value(row, metric)
        if v is None:
            continue
        if best is None:
            best = i
            continue
        b = _value(rows[best], metric)
        assert b is not None
        if (v < b) if direction == "min" else (v > b):
            best = i
    return best


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere (values already oriented: higher is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def pareto_front(rows: Sequence[Mapping[str, Any]], directions: Mapping[str, str]) -> list[int]:
    """Indices (in row order) of the rows no other row dominates over ``directions``' metrics."""
    metrics = list(directions)
    oriented: list[tuple[int, list[float]]] = []
    for i, row in enumerate(rows):
        vals = [_value(row, m) for m in metrics]
        if any(v is None for v in vals):
            continue
        oriented.append((i, [v if directions[m] == "max" else -v for m, v in zip(metrics, vals, strict=True)]))  # type: ignore[operator]
    return [i for i, a in oriented if not any(dominates(b, a) for j, b in oriented if j != i)]


__all__ = ["DIRECTIONS", "best_index", "default_direction", "directions_for", "dominates", "pareto_front", "parse_directions"]
