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

from wsa_cli.buffers import Scratch
from wsa_cli.merge.kernel import block_ranges, block_size, combine_linear
from wsa_cli.merge.registry import BlockInputs, MergeMethod


def ratio_from_gram(gram: list[list[float]]) -> float:
    """``t = N cos / (1 + (N - 1) cos)`` from the task vectors' Gram matrix ``<tau_i, tau_j>``.

    Example:
        >>> ratio_from_gram([[1.0, 0.0], [0.0, 1.0]])
        0.0
    """
    n = len(gram)
    norms = [math.sqrt(max(gram[i][i], 0.0)) for i in range(n)]
    cosines = [gram[i][j] / (norms[i] * norms[j])
               for i, j in itertools.combinations(range(n), 2) if norms[i] > 0 and norms[j] > 0]  # fmt: skip
    if not cosines:
        return 1.0
    cos = min(max(math.fsum(cosines) / len(cosines), 0.0), 1.0)
    return n * cos / (1.0 + (n - 1) * cos)


def model_stock_ratio(taus: list[torch.Tensor]) -> float:
    """``t = N cos / (1 + (N - 1) cos)`` from the mean pairwise cosine of the task vectors (float64 sums).

    Example:
        >>> model_stock_ratio([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])  # orthogonal: the base
        0.0
        >>> round(model_stock_ratio([torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])]), 12)  # parallel: the average
        1.0
    """
    flat = [t.reshape(-1).to(torch.float64) for t in taus]
    return ratio_from_gram([[float(torch.dot(a, b)) for b in flat] for a in flat])


def _model_stock(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202 - MergeFn signature
    taus = [x - base for x in tensors]
    t = model_stock_ratio(taus)
    mean = torch.stack(list(tensors)).mean(dim=0)
    return mean.mul_(t).add_(base, alpha=1.0 - t)


def _model_stock_into(job: BlockInputs) -> None:
    """The block form: one pass for the task vectors' Gram matrix (float64 products and sums), then
    ``t / N * sum_i theta_i + (1 - t) theta_0`` through the linear kernel (no full-size copies)."""
    inputs, base = list(job.inputs), job.base
    assert base is not None  # needs_base
    n, dev, k = job.out.numel(), job.out.device, len(inputs)
    pool = job.ctx.scratch if job.ctx.scratch is not None else Scratch()
    blk = min(block_size(dev), max(n, 1))
    base_buf, tmp = pool.get((blk,), job.wide, dev, "stock.base"), pool.get((blk,), job.wide, dev, "stock.tmp")
    taus = [pool.get((blk,), torch.float64, dev, f"stock.tau{i}") for i in range(k)]
    gram = [[0.0] * k for _ in range(k)]
    for start, stop in block_ranges(n, dev):
        b = base.values(start, stop, base_buf)  # read only
        ts = [taus[i][: stop - start].copy_(torch.sub(x.values(start, stop, tmp), b, out=tmp[: stop - start])) for i, x in enumerate(inputs)]
        for i in range(k):
            for j in range(i, k):
                gram[i][j] += float(torch.dot(ts[i], ts[j]))
    gram = [[gram[min(i, j)][max(i, j)] for j in range(k)] for i in range(k)]
    t = ratio_from_gram(gram)
    mult = [t / k * x.a for x in inputs] + [(1.0 - t) * base.a]
    shift = sum(t / k * x.b for x in inputs) + (1.0 - t) * base.b
    combine_linear([x.flat for x in inputs] + [base.flat], mult, shift, job.out.view(-1), wide=job.wide, measure=False, pool=pool)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    fn=_model_stock,
    into=_model_stock_into,
    summary="Model Stock: t * mean(fine-tunes) + (1 - t) * base, t from the fine-tunes' mean pairwise angle.",
    reference="Jang et al. 2024, Model Stock (ECCV)",
    needs_base=True,
    min_models=2,
)

METHODS = (MODEL_STOCK,)
