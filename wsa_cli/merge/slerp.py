"""``slerp``: spherical linear interpolation between exactly two models, per tensor.

With ``p0, p1`` the flattened tensors and ``cos(Omega) = <p0, p1> / (|p0| |p1|)``:
``slerp(t) = sin((1 - t) Omega) / sin(Omega) * p0 + sin(t Omega) / sin(Omega) * p1``.
When the tensors are (anti-)parallel (``|cos Omega| > dot_threshold``) or one is zero, the
formula is ill-conditioned and we fall back to linear interpolation ``(1 - t) p0 + t p1``.
The angle is computed in float64.

Reference: Shoemake, "Animating Rotation with Quaternion Curves", SIGGRAPH 1985.
"""

from __future__ import annotations

import math

import torch

from wsa_cli.merge.registry import MergeMethod, Param, register_method


def slerp(p0: torch.Tensor, p1: torch.Tensor, t: float, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Shoemake's slerp of two same-shape tensors (treated as flat vectors).

    Example:
        >>> slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5)
        tensor([0.7071, 0.7071])
    """
    n0 = float(torch.linalg.vector_norm(p0.reshape(-1), dtype=torch.float64))
    n1 = float(torch.linalg.vector_norm(p1.reshape(-1), dtype=torch.float64))
    if n0 == 0.0 or n1 == 0.0:
        return (1.0 - t) * p0 + t * p1
    dot = float(torch.sum(p0.reshape(-1).to(torch.float64) * p1.reshape(-1).to(torch.float64)))
    cos = max(-1.0, min(1.0, dot / (n0 * n1)))
    if abs(cos) > dot_threshold:
        return (1.0 - t) * p0 + t * p1
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return (math.sin((1.0 - t) * omega) / sin_omega) * p0 + (math.sin(t * omega) / sin_omega) * p1


def _slerp(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202
    return slerp(tensors[0], tensors[1], params["t"], params["dot_threshold"])


SLERP = register_method(
    MergeMethod(
        name="slerp",
        fn=_slerp,
        summary="Spherical interpolation between two models (t=0: first, t=1: second); weights unused.",
        reference="Shoemake 1985, Animating Rotation with Quaternion Curves (SIGGRAPH)",
        params=(
            Param("t", float, 0.5, "interpolation factor: 0 gives the first model, 1 the second", lo=0.0, hi=1.0),
            Param("dot_threshold", float, 0.9995, "above this |cos| fall back to linear interpolation", lo=0.0, hi=1.0),
        ),
        min_models=2,
        max_models=2,
    )
)
