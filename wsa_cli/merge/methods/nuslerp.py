"""``nuslerp``: mergekit's NuSLERP -- slerp of two models with ``t`` from their weights, whole or per slice.

``t = w_2 / (w_1 + w_2)`` (``t = 0.5`` when ``|w_1 + w_2| < 1e-6``, as mergekit). Then Shoemake's
slerp (:mod:`wsa_cli.merge.methods.slerp`, same linear fallback when ``|cos| > dot_threshold`` or
a vector is zero) on:

* ``flatten: true`` (default): the whole flattened tensor -- exactly ``slerp`` at that ``t``
  (``row_wise`` is then ignored, as in mergekit);
* ``flatten: false, row_wise: false``: each slice along the last dimension, ``x[..., :]`` (for a
  2-D ``(out, in)`` weight: each row ``W[r, :]``), with its own angle;
* ``flatten: false, row_wise: true``: each slice along the first dimension, ``x[:, ...]`` (for a
  2-D weight: each column ``W[:, c]``).

A 0-d or 1-D tensor is one vector in every variant. ``task_vectors: true`` interpolates the task
vectors ``x_i - b`` and adds the base back.

Mapping from mergekit (its ``nuslerp.py`` read, not run against it): ``nuslerp_flatten`` ->
``flatten``, ``nuslerp_row_wise`` -> ``row_wise`` (mergekit's code: ``dim=0`` when row-wise, else
``dim=-1``, i.e. the slices above; its documentation's "row vectors instead of column vectors"
names them the other way round, we follow the code). mergekit uses task vectors whenever a
``base_model`` is given; here that is ``task_vectors: true`` with ``base:``. mergekit's colinear
test is ``sin(theta) < 1e-8``; ours is slerp's ``dot_threshold`` (per slice in the slice variants).

Reference: mergekit's ``nuslerp`` (Arcee AI); Shoemake 1985.
"""

from __future__ import annotations

import torch

from wsa_cli.merge.methods.slerp import slerp
from wsa_cli.merge.registry import MergeMethod, Param


def nuslerp_t(weights: list[float]) -> float:
    """``t = w_2 / (w_1 + w_2)``, 0.5 when the weights (nearly) cancel.

    Example:
        >>> nuslerp_t([1.0, 3.0]), nuslerp_t([1.0, -1.0])
        (0.75, 0.5)
    """
    total = weights[0] + weights[1]
    return 0.5 if abs(total) < 1e-6 else weights[1] / total


def slerp_slices(v0: torch.Tensor, v1: torch.Tensor, t: float, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Slerp of each row of ``(R, D)`` ``v0, v1`` with its own angle: :func:`slerp_coefficients` per row, vectorised.

    Norms, dot products and angles in float64; rows that are (anti-)parallel or zero are linearly
    interpolated. Returns ``(R, D)`` in ``v0``'s dtype.

    Example:
        >>> slerp_slices(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]]), 0.5)
        tensor([[0.7071, 0.7071],
                [1.5000, 0.0000]])
    """
    a, b = v0.to(torch.float64), v1.to(torch.float64)
    n0, n1 = torch.linalg.vector_norm(a, dim=1), torch.linalg.vector_norm(b, dim=1)  # (R,)
    dot = (a * b).sum(dim=1)
    denom = n0 * n1
    cos = torch.where(denom > 0, dot / torch.where(denom > 0, denom, 1.0), 1.0).clamp(-1.0, 1.0)
    linear = (denom == 0) | (cos.abs() > dot_threshold)
    omega = torch.acos(torch.where(linear, 0.0, cos))
    sin_omega = torch.where(linear, 1.0, torch.sin(omega))
    c0 = torch.where(linear, 1.0 - t, torch.sin((1.0 - t) * omega) / sin_omega)  # (R,)
    c1 = torch.where(linear, t, torch.sin(t * omega) / sin_omega)
    return (c0[:, None] * a + c1[:, None] * b).to(v0.dtype)


def nuslerp(x0: torch.Tensor, x1: torch.Tensor, t: float, *, flatten: bool = True, row_wise: bool = False,
            dot_threshold: float = 0.9995) -> torch.Tensor:  # fmt: skip
    """NuSLERP of two same-shape tensors (see the module for the variants).

    Example:
        >>> w0, w1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 2.0]])
        >>> nuslerp(w0, w1, 0.5, flatten=False)  # row 0: a quarter turn; row 1: parallel, linear
        tensor([[0.7071, 0.7071],
                [0.0000, 1.5000]])
    """
    if flatten or x0.dim() <= 1:
        return slerp(x0, x1, t, dot_threshold)
    if row_wise:  # slices along dim 0: move it last
        a, b = x0.movedim(0, -1), x1.movedim(0, -1)
    else:
        a, b = x0, x1
    shape = a.shape
    out = slerp_slices(a.reshape(-1, shape[-1]), b.reshape(-1, shape[-1]), t, dot_threshold).reshape(shape)
    return out.movedim(-1, 0).contiguous() if row_wise else out


def _nuslerp(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202 - MergeFn signature
    t = nuslerp_t(list(weights))
    opts = {"flatten": params["flatten"], "row_wise": params["row_wise"], "dot_threshold": params["dot_threshold"]}
    if params["task_vectors"]:
        return nuslerp(tensors[0] - base, tensors[1] - base, t, **opts).add_(base)
    return nuslerp(tensors[0], tensors[1], t, **opts)


NUSLERP = MergeMethod(
    name="nuslerp",
    fn=_nuslerp,
    summary="NuSLERP: slerp of two models at t = w_2 / (w_1 + w_2), whole tensor or per row/column, optionally on task vectors.",
    reference="mergekit nuslerp (Arcee AI); Shoemake 1985",
    params=(
        Param("flatten", bool, True, "slerp the whole flattened tensor (false: per slice, see row_wise)"),
        Param("row_wise", bool, False, "with flatten false: slices along the first dimension (W[:, c]) instead of the last (W[r, :])"),
        Param("task_vectors", bool, False, "slerp the task vectors x_i - base and add the base back (needs base:)"),
        Param("dot_threshold", float, 0.9995, "above this |cos| fall back to linear interpolation", lo=0.0, hi=1.0),
    ),
    base_rule=lambda params: bool(params["task_vectors"]),
    min_models=2,
    max_models=2,
)

METHODS = (NUSLERP,)
