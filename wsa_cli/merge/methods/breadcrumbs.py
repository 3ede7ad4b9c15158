"""``breadcrumbs`` and ``breadcrumbs_ties``: Model Breadcrumbs -- sparse masks without the outliers.

Per task vector ``tau_i = theta_i - theta_base`` (per tensor, as the paper does per layer):

1. remove the ``gamma`` fraction of entries with the largest magnitude (the outliers),
2. then the smallest ones, so that a ``density`` fraction of the entries is kept;
3. ``breadcrumbs``: task arithmetic ``theta = base + scale * sum_i w_i tau_i_hat``;
   ``breadcrumbs_ties``: TIES sign election and disjoint mean, ``theta = base + scale * tau_m``.

With ``n`` entries, ``t = floor(gamma * n)`` and ``k = floor(density * n)``, the kept entries are
those with ``|tau|`` below the ``t``-th largest and at or above the ``(t + k)``-th largest
magnitude: entries tied at the upper threshold are removed, entries tied at the lower one are
kept (as TIES keeps them), so ties can make slightly fewer or more than ``k`` survive.
``density + gamma`` must be at most 1.

Reference: Davari and Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
Masks", ECCV 2024 (arXiv 2023).
"""

from __future__ import annotations

from wsa_cli.errors import InvalidValueError
from wsa_cli.merge.registry import MergeMethod, Param
from wsa_cli.merge.task_vectors import task_vector_forms

_PARAMS = (
    Param("density", float, 0.9, "fraction of each task vector kept (after the outliers are removed)", lo=0.0, hi=1.0),
    Param("gamma", float, 0.01, "fraction of each task vector removed as the largest-magnitude outliers", lo=0.0, hi=1.0),
    Param("scale", float, 1.0, "lambda, scaling of the merged task vector"),
)


def _check(params, k: int, has_base: bool) -> None:  # noqa: ANN001 - ParamCheck signature
    if params["density"] + params["gamma"] > 1.0 + 1e-12:
        raise InvalidValueError(f"density + gamma must be at most 1, got {params['density']:g} + {params['gamma']:g}")


def _options(params, consensus: bool) -> dict:  # noqa: ANN001
    return {"scale": params["scale"], "sparsify": "outliers", "density": params["density"], "gamma": params["gamma"], "consensus": consensus}


_breadcrumbs, _breadcrumbs_into = task_vector_forms(lambda p: _options(p, consensus=False))
_breadcrumbs_ties, _breadcrumbs_ties_into = task_vector_forms(lambda p: _options(p, consensus=True))

REFERENCE = "Davari & Belilovsky 2024, Model Breadcrumbs (ECCV)"

BREADCRUMBS = MergeMethod(
    name="breadcrumbs",
    fn=_breadcrumbs,
    into=_breadcrumbs_into,
    summary="Model Breadcrumbs: drop each task vector's top-gamma outliers and its smallest entries (keep density), add.",
    reference=REFERENCE,
    params=_PARAMS,
    needs_base=True,
    param_check=_check,
)

BREADCRUMBS_TIES = MergeMethod(
    name="breadcrumbs_ties",
    fn=_breadcrumbs_ties,
    into=_breadcrumbs_ties_into,
    summary="Model Breadcrumbs masks, then TIES sign election and disjoint mean.",
    reference=REFERENCE + " with Yadav et al. 2023 (TIES)",
    params=_PARAMS,
    needs_base=True,
    param_check=_check,
)

METHODS = (BREADCRUMBS, BREADCRUMBS_TIES)
