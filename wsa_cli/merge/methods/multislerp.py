"""``multislerp``: the weighted barycentre of K models on the hypersphere, one tangent-space step.

Per tensor, with ``x_i`` flattened (or the task vectors ``x_i - b`` with ``task_vectors: true``,
the base added back at the end), ``n_i = |x_i|``, ``u_i = x_i / n_i``, ``p_i = w_i / sum_j w_j``:

* base point: the normalised weighted Euclidean mean ``m = sum_i p_i u_i / |sum_i p_i u_i|``
  (as mergekit's multislerp);
* tangent mean: ``v = sum_i p_i log_m(u_i)``, ``log_m(u) = theta / sin(theta) (u - cos(theta) m)``;
* back on the sphere by the exponential map ``cos|v| m + sin|v| v / |v|``, rescaled to the
  weighted mean norm ``sum_i p_i n_i``.

This is one step of the Karcher-mean iteration (:mod:`wsa_cli.merge.methods.karcher`, whose
degenerate cases it shares: zero tensors, antipodal inputs). With two models and weights
``(1 - t, t)`` it is ``slerp(u_1, u_2, t) * ((1 - t) n_1 + t n_2)``: on one great circle a single
log/exp step lands on the weighted angular mean. For tensors of equal norm that is ``slerp`` at
``t`` itself (slerp of unequal norms is not norm-rescaled; near-parallel tensors, where slerp
falls back to linear interpolation above ``dot_threshold``, differ by O(angle^2)).

Our reading of mergekit's multislerp (its source read, not run): it projects each ``u_i`` onto
the tangent plane orthogonally (``u_i - <u_i, m> m``) instead of taking the log map. Since ``m``
is parallel to ``sum_i p_i u_i``, that projected mean is exactly zero, and mergekit's result is
the normalised Euclidean mean ``m`` itself (times the mean norm), which is not slerp for unequal
weights. We use the log map, which makes the two-model case slerp. mergekit subtracts the base
whenever one is given (here: ``task_vectors: true``) and has ``normalize_weights`` (default true;
ours always normalises).

Reference: Buss and Fillmore, "Spherical averages and applications to spherical splines and
interpolation", ACM TOG 2001; mergekit's ``multislerp`` (Goddard, "Multi-SLERP").
"""

from __future__ import annotations

from wsa_cli.merge.methods.karcher import run_into, sphere_mean_into
from wsa_cli.merge.registry import BlockInputs, MergeMethod, Param


def _multislerp_into(job: BlockInputs) -> None:
    sphere_mean_into(job, job.params["task_vectors"], max_iter=1, tol=0.0)


def _multislerp(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202 - MergeFn signature
    return run_into(_multislerp_into, tensors, base, weights, params, ctx)


MULTISLERP = MergeMethod(
    name="multislerp",
    fn=_multislerp,
    into=_multislerp_into,
    summary="Weighted barycentre on the hypersphere: tangent mean at the normalised Euclidean mean, exp map, mean norm.",
    reference="Buss & Fillmore 2001, Spherical averages (ACM TOG); mergekit multislerp",
    params=(Param("task_vectors", bool, False, "interpolate the task vectors x_i - base and add the base back (needs base:)"),),
    base_rule=lambda params: bool(params["task_vectors"]),
    min_models=2,
)

METHODS = (MULTISLERP,)
