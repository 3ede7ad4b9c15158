"""``della`` and ``della_linear``: DELLA-Merging -- magnitude-ranked random drop (MagPrune).

Per task vector ``tau_i = theta_i - theta_base`` and per row (a tensor of 2+ dims is ranked within
each ``tau[j]``, i.e. per output unit as the paper ranks per node; a vector as one row):

1. rank the ``m`` entries of the row by magnitude, ``r = 0`` the smallest (a stable sort: equal
   magnitudes are ranked by position);
2. keep probability ``p_r = (density - epsilon) + 2 epsilon r / (m - 1)``: linearly spaced in
   ``[density - epsilon, density + epsilon]``, larger magnitudes kept more often, mean ``density``
   (a row of one entry: ``density``);
3. keep an entry when its uniform draw ``u >= 1 - p_r``; ``u`` is DARE's draw (seeded by the recipe
   ``seed``, the key and the model index, on the CPU), so ``epsilon = 0`` drops what DARE with
   ``drop_rate = 1 - density`` drops; survivors are rescaled by ``1 / p_r``;
4. ``della``: TIES sign election and disjoint mean; ``della_linear``: the weighted sum;
   ``theta = base + scale * merged``.

``density +- epsilon`` must lie in ``(0, 1]``.

Reference: Deep, Bhardwaj and Poria, "DELLA-Merging: Reducing Interference in Model Merging through
Magnitude-Based Sampling", 2024 (arXiv 2406.11617).
"""

from __future__ import annotations

from wsa_cli.errors import InvalidValueError
from wsa_cli.merge.registry import MergeMethod, Param
from wsa_cli.merge.task_vectors import task_vector_forms

_PARAMS = (
    Param("density", float, 0.7, "mean keep probability of each task-vector entry", lo=0.0, hi=1.0, lo_open=True),
    Param("epsilon", float, 0.15, "half-width of the keep probabilities, density +- epsilon by magnitude rank", lo=0.0, hi=0.5, hi_open=True),
    Param("scale", float, 1.0, "lambda, scaling of the merged task vector"),
)


def _check(params, k: int, has_base: bool) -> None:  # noqa: ANN001 - ParamCheck signature
    d, e = params["density"], params["epsilon"]
    if d - e <= 0.0 or d + e > 1.0 + 1e-12:
        raise InvalidValueError(f"density +- epsilon must stay in (0, 1], got {d:g} +- {e:g}")


def _options(params, consensus: bool) -> dict:  # noqa: ANN001
    return {"scale": params["scale"], "sparsify": "magprune", "density": params["density"], "epsilon": params["epsilon"], "consensus": consensus}


_della, _della_into = task_vector_forms(lambda p: _options(p, consensus=True))
_della_linear, _della_linear_into = task_vector_forms(lambda p: _options(p, consensus=False))

REFERENCE = "Deep et al. 2024, DELLA-Merging (MagPrune)"

DELLA = MergeMethod(
    name="della",
    fn=_della,
    into=_della_into,
    summary="DELLA: drop task-vector entries with magnitude-ranked probabilities, rescale by 1/p, elect sign, disjoint mean.",
    reference=REFERENCE + " with Yadav et al. 2023 (TIES)",
    params=_PARAMS,
    needs_base=True,
    param_check=_check,
)

DELLA_LINEAR = MergeMethod(
    name="della_linear",
    fn=_della_linear,
    into=_della_linear_into,
    summary="DELLA MagPrune drop-and-rescale, then the weighted sum of the task vectors.",
    reference=REFERENCE,
    params=_PARAMS,
    needs_base=True,
    param_check=_check,
)

METHODS = (DELLA, DELLA_LINEAR)
