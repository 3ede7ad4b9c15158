"""Barrier definitions: how far the path between two checkpoints rises above its endpoints.

Given a curve ``L(alpha)`` measured on a grid that contains 0 and 1 (only ``0 <= alpha <= 1`` is
used), with endpoint values ``L0 = L(0)`` and ``L1 = L(1)``:

* ``loss_barrier`` -- ``max_alpha [L(alpha) - ((1 - alpha) L0 + alpha L1)]``: the largest rise of the
  loss above the straight line between the endpoint losses (Frankle et al. 2020; Entezari et al.
  2022). ``>= 0`` because the line meets the curve at both ends.
* ``loss_barrier_mean`` -- ``max_alpha L(alpha) - (L0 + L1) / 2``: the peak against the *mean* of the
  endpoint losses (the "instability" of Frankle et al.). ``>= |L0 - L1| / 2``.
* ``loss_barrier_mid`` -- ``L(0.5) - (L0 + L1) / 2``: the midpoint version; ``None`` when 0.5 is not
  on the grid (never guessed by interpolating neighbours). May be negative.
* ``acc_barrier`` -- ``max_alpha [((1 - alpha) A0 + alpha A1) - A(alpha)]``: the largest *drop* of the
  accuracy below the straight line between the endpoint accuracies. ``>= 0``.
* ``*_alpha`` -- the alpha where each maximum sits (the first one on ties).

Every definition is reported; none is "the" barrier. Values are ``None`` when the metric is
missing at an endpoint; NaN values along the curve propagate (a diverged model is not hidden).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from wsa_cli.errors import InvalidValueError

#: Names of the summary metrics a ``--fail-above`` gate may name (see :func:`summarize_curve`).
BARRIER_METRICS = (
    "loss_barrier",
    "loss_barrier_mean",
    "loss_barrier_mid",
    "acc_barrier",
    "loss_barrier_inputs",
)

#: Tolerance for finding alpha = 0, 0.5 and 1 on a grid built from floats.
_ALPHA_TOL = 1e-9


@dataclass(frozen=True)
class Peak:
    """A maximum over alpha and where it sits."""

    value: float | None
    alpha: float | None


@dataclass(frozen=True)
class BarrierSummary:
    """All barrier definitions for one curve (see the module docstring)."""

    loss_0: float | None
    loss_1: float | None
    accuracy_0: float | None
    accuracy_1: float | None
    loss_barrier: float | None
    loss_barrier_alpha: float | None
    loss_barrier_mean: float | None
    loss_barrier_mean_alpha: float | None
    loss_barrier_mid: float | None
    acc_barrier: float | None
    acc_barrier_alpha: float | None
    #: ``loss_barrier`` measured against the line between the *input* checkpoints' losses rather
    #: than this mode's own endpoints (modes such as ``wsa`` change the endpoints); None if unknown.
    loss_barrier_inputs: float | None = None
    loss_barrier_inputs_alpha: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def find_alpha(alphas: Sequence[float], target: float) -> int | None:
    """Index of ``target`` in ``alphas`` (within 1e-9), or None.

    Example:
        >>> find_alpha([0.0, 0.5, 1.0], 0.5)
        1
    """
    for i, a in enumerate(alphas):
        if abs(a - target) <= _ALPHA_TOL:
            return i
    return None


def _value(x: float | None) -> float | None:
    return None if x is None else float(x)


def max_above_line(alphas: Sequence[float], values: Sequence[float | None], v0: float | None, v1: float | None, sign: float = 1.0) -> Peak:
    """``max over alpha in [0, 1] of sign * (v(alpha) - line(alpha))``, line from ``v0`` to ``v1``.

    ``sign = -1`` measures the largest drop *below* the line (accuracy). NaN anywhere on the curve
    gives NaN (a diverged point must not be skipped).

    Example:
        >>> max_above_line([0, 0.5, 1], [1.0, 3.0, 2.0], 1.0, 2.0)
        Peak(value=1.5, alpha=0.5)
    """
    if v0 is None or v1 is None:
        return Peak(None, None)
    best: float | None = None
    where: float | None = None
    for a, v in zip(alphas, values, strict=True):
        if not (-_ALPHA_TOL <= a <= 1 + _ALPHA_TOL):
            continue
        if v is None:
            return Peak(None, None)
        gap = sign * (v - (v0 + a * (v1 - v0))) + 0.0  # v0 == v1 gives exactly v0; + 0.0 turns -0.0 into 0.0
        if math.isnan(gap):
            return Peak(math.nan, a)
        if best is None or gap > best:
            best, where = gap, a
    return Peak(best, where)


def summarize_curve(
    alphas: Sequence[float],
    loss: Sequence[float | None] | None,
    accuracy: Sequence[float | None] | None,
    *,
    input_losses: tuple[float | None, float | None] | None = None,
) -> BarrierSummary:
    """Compute every barrier definition for one curve.

    ``alphas`` must contain 0 and 1. ``input_losses`` are the losses of the unmodified input
    checkpoints (for ``loss_barrier_inputs``).

    Example:
        >>> s = summarize_curve([0, 0.5, 1], [1.0, 3.0, 2.0], [0.9, 0.5, 0.8])
        >>> s.loss_barrier, s.loss_barrier_mean, s.loss_barrier_mid, round(s.acc_barrier, 6)
        (1.5, 1.5, 1.5, 0.35)
    """
    i0, i1, imid = find_alpha(alphas, 0.0), find_alpha(alphas, 1.0), find_alpha(alphas, 0.5)
    if i0 is None or i1 is None:
        raise InvalidValueError("the alpha grid must contain 0 and 1 (the endpoints)")  # parse_alphas guarantees it
    loss = list(loss) if loss is not None else [None] * len(alphas)
    accuracy = list(accuracy) if accuracy is not None else [None] * len(alphas)
    l0, l1 = _value(loss[i0]), _value(loss[i1])
    a0, a1 = _value(accuracy[i0]), _value(accuracy[i1])

    linear = max_above_line(alphas, loss, l0, l1)
    mean_line = None if l0 is None or l1 is None else 0.5 * (l0 + l1)
    flat = max_above_line(alphas, loss, mean_line, mean_line)
    mid = None
    if imid is not None and mean_line is not None and loss[imid] is not None:
        mid = float(loss[imid]) - mean_line
    acc = max_above_line(alphas, accuracy, a0, a1, sign=-1.0)
    inputs = Peak(None, None)
    if input_losses is not None:
        inputs = max_above_line(alphas, loss, _value(input_losses[0]), _value(input_losses[1]))
    return BarrierSummary(
        loss_0=l0,
        loss_1=l1,
        accuracy_0=a0,
        accuracy_1=a1,
        loss_barrier=linear.value,
        loss_barrier_alpha=linear.alpha,
        loss_barrier_mean=flat.value,
        loss_barrier_mean_alpha=flat.alpha,
        loss_barrier_mid=mid,
        acc_barrier=acc.value,
        acc_barrier_alpha=acc.alpha,
        loss_barrier_inputs=inputs.value,
        loss_barrier_inputs_alpha=inputs.alpha,
    )
