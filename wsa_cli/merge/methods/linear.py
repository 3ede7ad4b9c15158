"""``linear``: weighted average of the models (FedAvg when the weights are client data sizes).

``theta = sum_i w_i theta_i / sum_i w_i`` (``normalize: false`` drops the division).
Reference: McMahan et al., 2017 (FedAvg); Wortsman et al., 2022 (model soups).
"""

from __future__ import annotations

from wsa_cli.merge.registry import MergeMethod, Param, weighted_sum


def _linear(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202 - MergeFn signature
    out = weighted_sum(tensors, weights)
    if params["normalize"]:
        out /= float(sum(weights))
    return out


def _linear_form(weights, params, has_base):  # noqa: ANN001, ANN202
    total = float(sum(weights)) if params["normalize"] else 1.0
    return [float(w) / total for w in weights], 0.0


LINEAR = MergeMethod(
    name="linear",
    fn=_linear,
    summary="Weighted average sum(w_i theta_i) / sum(w_i); FedAvg-style weights.",
    reference="McMahan et al. 2017 (FedAvg); Wortsman et al. 2022 (model soups)",
    params=(Param("normalize", bool, True, "divide by the sum of the weights"),),
    linear_form=_linear_form,
)

METHODS = (LINEAR,)
