"""``ties``: TIES-Merging -- trim, elect sign, disjoint merge.

1. trim: keep the top ``density`` fraction of each task vector by magnitude (per tensor);
2. elect: ``gamma = sgn(sum_i w_i tau_i_hat)``;
3. disjoint mean over the task vectors that agree with ``gamma``; ``theta = base + scale * tau_m``.

Reference: Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023
(k = 20% and lambda = 1 are the paper's usual values; the paper trims over the whole model).
"""

from __future__ import annotations

from wsa_cli.merge.registry import MergeMethod, Param
from wsa_cli.merge.task_vectors import task_vector_forms

#: which entries tied with TIES's trim threshold are kept (see ``tie_rule``)
TIE_RULES = ("threshold", "exact")


def _ties_options(p) -> dict:  # noqa: ANN001
    return {"scale": p["scale"], "sparsify": "magnitude", "density": p["density"], "consensus": True, "tie_rule": p["tie_rule"]}


_ties, _ties_into = task_vector_forms(_ties_options)

TIES = MergeMethod(
    name="ties",
    fn=_ties,
    into=_ties_into,
    summary="TIES: trim task vectors to top-k% magnitude, elect sign, disjoint mean.",
    reference="Yadav et al. 2023, TIES-Merging (NeurIPS)",
    params=(
        Param("density", float, 0.2, "fraction k of each task vector kept by magnitude", lo=0.0, hi=1.0),
        Param("scale", float, 1.0, "lambda, scaling of the merged task vector"),
        Param("tie_rule", str, "threshold", "entries tied at the trim threshold: `threshold` keeps them all (the paper's "
              "code), `exact` keeps exactly floor(density n), lowest flat index first (mergekit)", choices=TIE_RULES),
    ),
    needs_base=True,
)

METHODS = (TIES,)
