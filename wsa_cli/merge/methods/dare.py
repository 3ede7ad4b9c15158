"""``dare_linear`` and ``dare_ties``: DARE (drop and rescale) sparsification of task vectors.

Each task-vector entry is dropped with probability ``p`` and survivors are rescaled by
``1 / (1 - p)`` (expectation preserved). ``dare_linear`` then adds the weighted task vectors
(task arithmetic); ``dare_ties`` uses TIES sign election and disjoint mean. The mask is seeded by
the recipe ``seed``, the tensor key and the model index, so a run is reproducible and the CPU and
CUDA paths drop the same entries.

Reference: Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous
Models as a Free Lunch", ICML 2024.
"""

from __future__ import annotations

from wsa_cli.merge.registry import MergeMethod, Param
from wsa_cli.merge.task_vectors import task_vector_forms

_PARAMS = (
    Param("drop_rate", float, 0.9, "p, probability of dropping each task-vector entry", lo=0.0, hi=1.0, hi_open=True),
    Param("scale", float, 1.0, "lambda, scaling of the merged task vector"),
)


def _dare_options(params, consensus: bool) -> dict:  # noqa: ANN001
    extra = {"consensus": True} if consensus else {"normalize": params["normalize"]}
    return {"scale": params["scale"], "sparsify": "random", "drop_rate": params["drop_rate"], **extra}


_dare_linear, _dare_linear_into = task_vector_forms(lambda p: _dare_options(p, consensus=False))
_dare_ties, _dare_ties_into = task_vector_forms(lambda p: _dare_options(p, consensus=True))

REFERENCE = "Yu et al. 2024, Language Models are Super Mario (DARE, ICML)"

DARE_LINEAR = MergeMethod(
    name="dare_linear",
    fn=_dare_linear,
    into=_dare_linear_into,
    summary="DARE: drop task-vector entries with prob. p, rescale by 1/(1-p), add (task arithmetic).",
    reference=REFERENCE,
    params=(*_PARAMS, Param("normalize", bool, False, "divide the weighted sum by the sum of the weights")),
    needs_base=True,
)

DARE_TIES = MergeMethod(
    name="dare_ties",
    fn=_dare_ties,
    into=_dare_ties_into,
    summary="DARE drop-and-rescale, then TIES sign election and disjoint mean.",
    reference=REFERENCE + " with Yadav et al. 2023 (TIES)",
    params=_PARAMS,
    needs_base=True,
)

METHODS = (DARE_LINEAR, DARE_TIES)
