"""``karcher``: the weighted Riemannian (Karcher / Frechet) mean of the models on the unit sphere.

Per tensor, with ``x_i`` the flattened tensors (or the task vectors ``x_i - b``), ``n_i = |x_i|``,
``u_i = x_i / n_i`` and ``p_i = w_i / sum_j w_j``:

1. start at the normalised weighted Euclidean mean ``m = sum_i p_i u_i / |sum_i p_i u_i|``;
2. repeat at most ``max_iter`` times (Buss and Fillmore's fixed-point iteration, step 1):
   ``v = sum_i p_i log_m(u_i)`` with ``log_m(u) = theta / sin(theta) * (u - cos(theta) m)``,
   ``cos(theta) = <u, m>``; stop when ``|v| < tol``; else ``m <- cos|v| m + sin|v| v / |v|``
   (the exponential map), renormalised;
3. return ``(sum_i p_i n_i) * m``: the mean direction, rescaled to the weighted mean norm.

Every point stays in the span of the ``u_i``, so the iteration runs on the K x K Gram matrix in
float64 (one pass over the inputs) and the result is one linear combination ``sum_i c_i x_i``
(a second pass, the linear kernel). With two models it is ``slerp`` of the unit vectors at
``t = w_2 / (w_1 + w_2)`` times ``(1 - t) n_1 + t n_2`` (both points lie on one great circle,
where the weighted angular mean is the slerp point): ``slerp`` itself when the norms are equal.
(``slerp`` of tensors with unequal norms is not norm-rescaled, so it differs from this.)

Degenerate cases (finite results, never NaN): zero tensors have no direction; they are left out
of the mean direction (the weights renormalised over the others) but count with norm 0 in the
rescaling; when every tensor is zero the result is zero. When the weighted mean of the unit
vectors vanishes (``x`` and ``-x`` with equal weights: no base point), the result is the weighted
linear mean ``sum_i p_i x_i``, slerp's fallback. A unit vector antipodal to the current mean has
no log map and contributes nothing to ``v`` (it still counts in the rescaling).

The same functions give ``multislerp`` (one step of the iteration; see
:mod:`wsa_cli.merge.methods.multislerp`). Differences from mergekit's ``karcher`` (read, not run):
mergekit uses equal weights whatever the models' weights are (ours: the recipe's weights,
default 1, so equal unless given), and runs on the tensors' dtype instead of float64.

Reference: Karcher, "Riemannian center of mass and mollifier smoothing", CPAM 1977; Buss and
Fillmore, "Spherical averages and applications to spherical splines and interpolation", ACM TOG 2001.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from wsa_cli.buffers import Scratch
from wsa_cli.errors import InvalidValueError
from wsa_cli.merge.kernel import AlignedInput, block_ranges, block_size, combine_linear
from wsa_cli.merge.registry import BlockInputs, MergeMethod, MethodContext, Param

#: below this norm of the weighted mean of the unit vectors there is no base point (antipodal inputs)
MEAN_EPS = 1e-12
#: below this sin(theta) a log map is taken as 0 (theta ~ 0: the point is the mean; theta ~ pi: undefined)
SIN_EPS = 1e-12


def _theta_over_sin(cos: float) -> float:
    """``theta / sin(theta)`` for ``theta = acos(cos)``; 1 at theta = 0, 0 where undefined (theta ~ pi)."""
    theta = math.acos(cos)
    s = math.sin(theta)
    if s < SIN_EPS:
        return 1.0 if theta < 1.0 else 0.0
    return theta / s


def sphere_mean_coefficients(gram: Sequence[Sequence[float]], weights: Sequence[float], max_iter: int, tol: float) -> list[float]:
    """``c`` with ``sum_i c_i x_i`` the weighted spherical mean of the ``x_i`` rescaled to their mean norm.

    ``gram[i][j] = <x_i, x_j>`` (float64). ``max_iter`` steps of the fixed-point iteration from the
    normalised Euclidean mean (``max_iter=1, tol=0``: multislerp's single step); see the module.

    Example:
        >>> [round(c, 4) for c in sphere_mean_coefficients([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0], 10, 1e-5)]
        [0.7071, 0.7071]
        >>> sphere_mean_coefficients([[1.0, -1.0], [-1.0, 1.0]], [1.0, 1.0], 10, 1e-5)  # antipodal: linear mean
        [0.5, 0.5]
    """
    k = len(weights)
    total = math.fsum(weights)
    if total == 0.0:
        raise InvalidValueError("spherical mean: the model weights sum to zero")
    p = [w / total for w in weights]
    norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(k)]
    valid = [i for i in range(k) if norms[i] > 0.0]
    if not valid:
        return [0.0] * k
    scale = math.fsum(p[i] * norms[i] for i in range(k))
    q_total = math.fsum(p[i] for i in valid)
    if q_total == 0.0:  # only zero-weight models have a direction
        return [0.0] * k
    q = [p[i] / q_total for i in valid]
    cmat = [[gram[i][j] / (norms[i] * norms[j]) for j in valid] for i in valid]  # cosines of the unit vectors
    r = len(valid)

    def quad(c: Sequence[float]) -> float:  # |sum_j c_j u_j|^2
        return max(math.fsum(c[i] * cmat[i][j] * c[j] for i in range(r) for j in range(r)), 0.0)

    a = list(q)  # the mean in the basis u_j
    mean_norm = math.sqrt(quad(a))
    if mean_norm < MEAN_EPS:
        return list(p)  # no base point: the weighted linear mean
    a = [v / mean_norm for v in a]
    for _ in range(max_iter):
        cos = [min(1.0, max(-1.0, math.fsum(cmat[i][j] * a[j] for j in range(r)))) for i in range(r)]
        f = [q[i] * _theta_over_sin(cos[i]) for i in range(r)]
        along = math.fsum(f[i] * cos[i] for i in range(r))
        v = [f[i] - along * a[i] for i in range(r)]  # sum_i q_i log_m(u_i) in the basis u_j
        vn = math.sqrt(quad(v))
        if vn < tol:
            break
        sinc = math.sin(vn) / vn if vn > 0.0 else 1.0
        a = [math.cos(vn) * a[i] + sinc * v[i] for i in range(r)]
        an = math.sqrt(quad(a))
        if an < MEAN_EPS:  # cannot happen for |v| < pi; kept finite regardless
            break
        a = [x / an for x in a]
    out = [0.0] * k
    for j, i in enumerate(valid):
        out[i] = scale * a[j] / norms[i]
    return out


def gram_matrix(inputs: Sequence[AlignedInput], base: AlignedInput | None, ctx: MethodContext, wide: torch.dtype) -> list[list[float]]:
    """``<y_i, y_j>`` in float64 with ``y_i`` the aligned inputs (minus the aligned base when given), block by block."""
    k = len(inputs)
    n, dev = inputs[0].flat.numel(), inputs[0].flat.device
    pool = ctx.scratch if ctx.scratch is not None else Scratch()
    blk = min(block_size(dev), max(n, 1))
    buf = pool.get((blk,), wide, dev, "sphere.in")
    rows = pool.get((k, blk), torch.float64, dev, "sphere.rows")
    base64 = pool.get((blk,), torch.float64, dev, "sphere.base") if base is not None else None
    g = torch.zeros((k, k), dtype=torch.float64, device=dev)
    for start, stop in block_ranges(n, dev):
        m = stop - start
        y = rows[:, :m]  # (K, block) float64
        for i, x in enumerate(inputs):
            y[i].copy_(x.values(start, stop, buf))
        if base is not None:
            b = base64[:m].copy_(base.values(start, stop, buf))
            y.sub_(b)
        g.addmm_(y, y.T)
    return g.cpu().tolist()


def sphere_mean_into(job: BlockInputs, task_vectors: bool, max_iter: int, tol: float) -> None:
    """Write the rescaled spherical mean of the aligned inputs (or of their task vectors, then plus the base) into ``job.out``."""
    base = job.base if task_vectors else None
    if task_vectors and base is None:
        raise InvalidValueError("spherical mean on task vectors needs a base model")
    gram = gram_matrix(job.inputs, base, job.ctx, job.wide)
    c = sphere_mean_coefficients(gram, job.weights, max_iter, tol)
    xs = [x.flat for x in job.inputs]
    mult = [ci * x.a for ci, x in zip(c, job.inputs, strict=True)]
    shift = math.fsum(ci * x.b for ci, x in zip(c, job.inputs, strict=True))
    if base is not None:  # b + sum_i c_i (x_i - b)
        cb = 1.0 - math.fsum(c)
        xs.append(base.flat)
        mult.append(cb * base.a)
        shift += cb * base.b
    combine_linear(xs, mult, shift, job.out.view(-1), wide=job.wide, measure=False, pool=job.ctx.scratch)


def run_into(into, tensors, base, weights, params, ctx):  # noqa: ANN001, ANN201 - a MergeFn through a block form
    """Call block form ``into`` on whole tensors (the ``fn`` of a method that has one)."""
    out = torch.empty(tensors[0].shape, dtype=tensors[0].dtype, device=tensors[0].device)
    job = BlockInputs(out, [AlignedInput(x) for x in tensors], None if base is None else AlignedInput(base), list(weights), params,
                      ctx, tensors[0].dtype)  # fmt: skip
    into(job)
    return out


def _karcher_into(job: BlockInputs) -> None:
    sphere_mean_into(job, job.params["task_vectors"], job.params["max_iter"], job.params["tol"])


def _karcher(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202 - MergeFn signature
    return run_into(_karcher_into, tensors, base, weights, params, ctx)


KARCHER = MergeMethod(
    name="karcher",
    fn=_karcher,
    into=_karcher_into,
    summary="Weighted Karcher mean of the models on the unit sphere (fixed-point iteration), rescaled to their weighted mean norm.",
    reference="Karcher 1977 (CPAM); Buss & Fillmore 2001, Spherical averages (ACM TOG)",
    params=(
        Param("max_iter", int, 10, "most fixed-point iterations (log map, weighted tangent mean, exp map)", lo=1, hi=1000),
        Param("tol", float, 1e-5, "stop when the tangent mean's norm (an angle, radians) is below this", lo=0.0),
        Param("task_vectors", bool, False, "average the task vectors x_i - base and add the base back (needs base:)"),
    ),
    base_rule=lambda params: bool(params["task_vectors"]),
    min_models=2,
)

METHODS = (KARCHER,)
