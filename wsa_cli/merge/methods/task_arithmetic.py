"""``task_arithmetic``: ``theta = theta_base + lambda * sum_i w_i (theta_i - theta_base)``.

Reference: Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023. Weights default to
1 (the paper's sum of task vectors); ``normalize: true`` divides by their sum (an average).
"""

from __future__ import annotations

from wsa_cli.merge.registry import MergeMethod, Param
from wsa_cli.merge.task_vectors import combine_task_vectors


def _task_arithmetic(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202
    return combine_task_vectors(tensors, base, weights, ctx, scale=params["scale"], normalize=params["normalize"])


def _linear_form(weights, params, has_base):  # noqa: ANN001, ANN202
    # base + s * sum_i w_i (x_i - base) = sum_i (s w_i) x_i + (1 - s sum_i w_i) base
    div = float(sum(weights)) if params["normalize"] else 1.0
    coeffs = [params["scale"] * float(w) / div for w in weights]
    return coeffs, 1.0 - sum(coeffs)


TASK_ARITHMETIC = MergeMethod(
    name="task_arithmetic",
    fn=_task_arithmetic,
    summary="base + scale * sum_i w_i (theta_i - base): add task vectors to a base model.",
    reference="Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR)",
    params=(
        Param("scale", float, 1.0, "lambda, scaling of the summed task vectors"),
        Param("normalize", bool, False, "divide the weighted sum by the sum of the weights"),
    ),
    needs_base=True,
    linear_form=_linear_form,
)

METHODS = (TASK_ARITHMETIC,)
