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

from wsa_cli.buffers import Scratch
from wsa_cli.merge.kernel import AlignedInput, block_ranges, block_size, combine_linear
from wsa_cli.merge.registry import BlockInputs, MergeMethod, MethodContext, Param


def slerp_coefficients(n0: float, n1: float, dot: float, t: float, dot_threshold: float = 0.9995) -> tuple[float, float]:
    """``(c0, c1)`` with ``slerp(t) = c0 p0 + c1 p1``, from the norms and the dot product of ``p0, p1``.

    Example:
        >>> [round(c, 4) for c in slerp_coefficients(1.0, 1.0, 0.0, 0.5)]
        [0.7071, 0.7071]
    """
    if n0 == 0.0 or n1 == 0.0:
        return 1.0 - t, t
    cos = max(-1.0, min(1.0, dot / (n0 * n1)))
    if abs(cos) > dot_threshold:
        return 1.0 - t, t
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return math.sin((1.0 - t) * omega) / sin_omega, math.sin(t * omega) / sin_omega


def slerp(p0: torch.Tensor, p1: torch.Tensor, t: float, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Shoemake's slerp of two same-shape tensors (treated as flat vectors), in their dtype.

    Example:
        >>> slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.5)
        tensor([0.7071, 0.7071])
    """
    out = torch.empty(p0.shape, dtype=p0.dtype, device=p0.device)
    slerp_into(out, [AlignedInput(p0), AlignedInput(p1)], t, dot_threshold, MethodContext("slerp", device=p0.device), p0.dtype)
    return out


def slerp_into(out: torch.Tensor, inputs: list[AlignedInput], t: float, dot_threshold: float, ctx: MethodContext,
               wide: torch.dtype) -> None:  # fmt: skip
    """:func:`slerp` of two aligned inputs into ``out``: one pass for ``|p0|^2, |p1|^2, <p0, p1>``
    (float64 products and sums), then the linear kernel with the two coefficients."""
    p0, p1 = inputs
    n, dev = out.numel(), out.device
    pool = ctx.scratch if ctx.scratch is not None else Scratch()
    blk = min(block_size(dev), max(n, 1))
    a_buf, b_buf = pool.get((blk,), wide, dev, "slerp.a"), pool.get((blk,), wide, dev, "slerp.b")
    a64, b64 = pool.get((blk,), torch.float64, dev, "slerp.a64"), pool.get((blk,), torch.float64, dev, "slerp.b64")
    s00 = s11 = s01 = 0.0
    for start, stop in block_ranges(n, dev):
        a = a64[: stop - start].copy_(p0.values(start, stop, a_buf))  # (block,) aligned p0 in float64
        b = b64[: stop - start].copy_(p1.values(start, stop, b_buf))
        s00 += float(torch.dot(a, a))
        s11 += float(torch.dot(b, b))
        s01 += float(torch.dot(a, b))
    c0, c1 = slerp_coefficients(math.sqrt(s00), math.sqrt(s11), s01, t, dot_threshold)
    combine_linear([p0.flat, p1.flat], [c0 * p0.a, c1 * p1.a], c0 * p0.b + c1 * p1.b, out.view(-1), wide=wide, measure=False,
                   pool=pool)  # fmt: skip


def _slerp(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202
    return slerp(tensors[0], tensors[1], params["t"], params["dot_threshold"])


def _slerp_into(job: BlockInputs) -> None:
    slerp_into(job.out, list(job.inputs), job.params["t"], job.params["dot_threshold"], job.ctx, job.wide)


SLERP = MergeMethod(
    name="slerp",
    fn=_slerp,
    into=_slerp_into,
    summary="Spherical interpolation between two models (t=0: first, t=1: second); weights unused.",
    reference="Shoemake 1985, Animating Rotation with Quaternion Curves (SIGGRAPH)",
    params=(
        Param("t", float, 0.5, "interpolation factor: 0 gives the first model, 1 the second", lo=0.0, hi=1.0),
        Param("dot_threshold", float, 0.9995, "above this |cos| fall back to linear interpolation", lo=0.0, hi=1.0),
    ),
    min_models=2,
    max_models=2,
)

METHODS = (SLERP,)
