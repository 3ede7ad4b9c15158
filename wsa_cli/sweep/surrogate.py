"""A quadratic surrogate of each metric over the swept parameters (in the spirit of MAP).

MAP ("Model Merging with Amortized Pareto Fronts", Li et al. 2024) fits a quadratic model of each
task's metric as a function of the merging coefficients from a few evaluated merges, and finds
the Pareto front on the cheap model instead of evaluating every combination. Here: the numeric
axes are scaled to [0, 1], each metric is fitted by least squares on ``1, x_i, x_i^2, x_i x_j``
(float64) from the evaluated points, every grid point is predicted, and the predicted front is
what the sweep then evaluates to confirm.

Example:
    >>> fit = fit_quadratic([[0.0], [0.5], [1.0]], [1.0, 0.25, 1.0])
    >>> round(float(fit.predict([[0.25]])[0]), 6)
    0.4375
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def quadratic_features(x: np.ndarray) -> np.ndarray:
    """``(n, d)`` -> ``(n, 1 + d + d(d+1)/2)``: a constant, each coordinate, and every product of two."""
    n, d = x.shape
    cols = [np.ones(n), *[x[:, i] for i in range(d)]]
    cols += [x[:, i] * x[:, j] for i in range(d) for j in range(i, d)]
    return np.stack(cols, axis=1)


def feature_count(d: int) -> int:
    """How many coefficients a quadratic in ``d`` variables has (the fewest points that determine it)."""
    return 1 + d + d * (d + 1) // 2


@dataclass
class QuadraticFit:
    """A fitted quadratic: coefficients over :func:`quadratic_features` and the scaling of each axis."""

    coef: np.ndarray
    low: np.ndarray
    span: np.ndarray

    def predict(self, x: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Predicted values at points ``x`` (``(n, d)``, in the axes' own units)."""
        z = (np.asarray(x, dtype=np.float64) - self.low) / self.span
        return quadratic_features(z) @ self.coef


def fit_quadratic(x: Sequence[Sequence[float]] | np.ndarray, y: Sequence[float], *, low: Sequence[float] | None = None,
                  high: Sequence[float] | None = None) -> QuadraticFit:  # fmt: skip
    """Least-squares quadratic through ``(x, y)``; ``low``/``high`` scale the axes (default: the points' range).

    With fewer points than coefficients the minimum-norm solution is returned (``numpy.linalg.lstsq``).
    """
    xs = np.asarray(x, dtype=np.float64)
    lo = np.asarray(low if low is not None else xs.min(axis=0), dtype=np.float64)
    hi = np.asarray(high if high is not None else xs.max(axis=0), dtype=np.float64)
    span = np.where(hi > lo, hi - lo, 1.0)
    z = (xs - lo) / span
    coef, *_ = np.linalg.lstsq(quadratic_features(z), np.asarray(y, dtype=np.float64), rcond=None)
    return QuadraticFit(coef, lo, span)


def design_points(n_points: int, count: int, seed: int = 0) -> list[int]:
    """Which of ``n_points`` grid points (indices) to evaluate first: ``count`` of them, spread out.

    Deterministic: the first point, the last, then a seeded shuffle of the rest (so the fit sees
    both ends of the grid).
    """
    count = max(1, min(count, n_points))
    first = [0] + ([n_points - 1] if n_points > 1 else [])
    rest = [i for i in np.random.default_rng(seed).permutation(n_points).tolist() if i not in first]
    return sorted((first + rest)[:count])


__all__ = ["QuadraticFit", "design_points", "feature_count", "fit_quadratic", "quadratic_features"]
