"""``model_stock``: Model Stock -- interpolate the fine-tunes' average towards the base by their angle.

For ``N >= 2`` fine-tuned models ``theta_i`` of one pre-trained ``theta_0``, per layer (here: per
tensor), with task vectors ``tau_i = theta_i - theta_0``:

* ``cos(theta)`` = the mean cosine of the pairwise angles between the task vectors;
* ``t = N cos(theta) / (1 + (N - 1) cos(theta))``;
* ``theta_H = t * mean_i(theta_i) + (1 - t) * theta_0``.

The more the fine-tunes agree (``cos -> 1``), the closer the merge stays to their average; the
more orthogonal they are (``cos -> 0``), the closer it moves to the base. Our choices where the
paper is silent: ``cos`` is clamped at 0 (the paper assumes angles below 90 degrees; a negative
``t`` would extrapolate away from the fine-tunes), pairs with a zero task vector are left out of
the mean, and with no pair left ``t = 1``. The average is the plain mean (the paper's), so the
recipe's model weights are not used.

Reference: Jang, Yun and Han, "Model Stock: All we need is just a few fine-tuned models", ECCV 2024.
"""

from __future__ import annotations

import itertools
import math

import torch

from wsa_cli.merge.registry import MergeMethod


def model_stock_ratio(taus: list[torch.Tensor]) -> float:
    """``t = N cos / (1 + (N - 1) cos)`` from the mean pairwise cosine of the task vectors (float64 sums).

    Example:
        >>> model_stock_ratio([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])  # orthogonal: the base
        0.0
        >>> round(model_stock_ratio([torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])]), 12)  # parallel: the average
        1.0
    """
    flat = [t.reshape(-1).to(torch.float64) for t in taus]
    norms = [float(torch.linalg.vector_norm(f)) for f in flat]
    cosines = [float(torch.dot(flat[i], flat[j])) / (norms[i] * norms[j])
               for i, j in itertools.combinations(range(len(flat)), 2) if norms[i] > 0 and norms[j] > 0]  # fmt: skip
    if not cosines:
        return 1.0
    cos = min(max(math.fsum(cosines) / len(cosines), 0.0), 1.0)
    n = len(taus)
    return n * cos / (1.0 + (n - 1) * cos)


def _model_stock(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202 - MergeFn signature
    taus = [x - base for x in tensors]
    t = model_stock_ratio(taus)
    mean = torch.stack(list(tensors)).mean(dim=0)
    return mean.mul_(t).add_(base, alpha=1.0 - t)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    fn=_model_stock,
    summary="Model Stock: t * mean(fine-tunes) + (1 - t) * base, t from the fine-tunes' mean pairwise angle.",
    reference="Jang et al. 2024, Model Stock (ECCV)",
    needs_base=True,
    min_models=2,
)

METHODS = (MODEL_STOCK,)
