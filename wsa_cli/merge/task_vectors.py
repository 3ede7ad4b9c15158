"""Task-vector building blocks shared by task arithmetic, TIES and DARE.

A *task vector* is ``tau_i = theta_i - theta_base`` (Ilharco et al., 2023). The published methods
differ in how they sparsify the task vectors and whether they resolve sign conflicts:

========================  ==================  =====================================
method                    sparsify            combine
========================  ==================  =====================================
task_arithmetic           none                ``lambda * sum_i w_i tau_i``
ties                      top-k magnitude     sign election + disjoint mean
dare_linear               random drop p       ``lambda * sum_i w_i tau_i``
dare_ties                 random drop p       sign election + disjoint mean
========================  ==================  =====================================

All four are configured calls of :func:`combine_task_vectors`. Everything works on one tensor
(one key) at a time, in float32 or better.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wsa_cli.merge.registry import MethodContext, weighted_sum


def trim_top_k(tau: torch.Tensor, density: float) -> torch.Tensor:
    """TIES *trim*: keep the ``k = floor(density * n)`` largest-magnitude entries, zero the rest.

    Entries tied with the k-th largest magnitude are kept too (as in the paper's code). The trim
    is per tensor (per key), because the merge streams one tensor at a time; Yadav et al. trim
    over the whole flattened model -- a documented difference.

    Example:
        >>> trim_top_k(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5)
        tensor([ 0., -3.,  2.,  0.])
    """
    n = tau.numel()
    k = int(density * n)
    if k >= n:
        return tau.clone()
    if k <= 0:
        return torch.zeros_like(tau)
    mag = tau.abs()  # (shape,)
    flat = mag.reshape(-1)  # (n,)
    if flat.device.type == "cpu":  # introselect: several times faster than torch.kthvalue on the CPU
        threshold = torch.as_tensor(np.partition(flat.numpy(), n - k)[n - k], dtype=tau.dtype)
    else:
        threshold = torch.kthvalue(flat, n - k + 1).values  # k-th largest magnitude
    return tau.masked_fill(mag < threshold, 0.0)


def dare_mask(shape: Sequence[int], drop_rate: float, seed: int) -> torch.Tensor:
    """DARE's Bernoulli keep-mask (True = keep, with probability ``1 - drop_rate``), seeded.

    Drawn on the CPU with its own generator so that CPU and CUDA runs drop the same entries.

    Example:
        >>> dare_mask((4,), 0.0, seed=1).all().item()
        True
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(tuple(shape), generator=gen, dtype=torch.float32) >= drop_rate


def dare_drop(tau: torch.Tensor, drop_rate: float, seed: int) -> torch.Tensor:
    """DARE (Yu et al., 2024): drop each entry with probability p, rescale survivors by 1/(1-p).

    Example:
        >>> dare_drop(torch.ones(3), 0.0, seed=0)
        tensor([1., 1., 1.])
    """
    if drop_rate <= 0.0:
        return tau.clone()
    keep = dare_mask(tau.shape, drop_rate, seed).to(tau.device)
    return (tau / (1.0 - drop_rate)).masked_fill_(~keep, 0.0)


def elect_sign(taus: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """TIES *elect*: ``gamma = sgn(sum_i w_i tau_i)`` per entry (w = 1 in the paper).

    Example:
        >>> elect_sign([torch.tensor([1.0, -2.0]), torch.tensor([-3.0, 1.0])], [1, 1])
        tensor([-1., -1.])
    """
    return torch.sign(weighted_sum(taus, weights))


def disjoint_mean(taus: Sequence[torch.Tensor], weights: Sequence[float], sign: torch.Tensor) -> torch.Tensor:
    """TIES *disjoint merge*: weighted mean over the task vectors whose entry agrees with the elected sign.

    Entries where no task vector agrees (or the elected sign is 0) become 0.

    Example:
        >>> disjoint_mean([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])], [1, 1], torch.tensor([1.0, -1.0]))
        tensor([ 2., -2.])
    """
    num = torch.zeros_like(taus[0])
    den = torch.zeros_like(taus[0])
    for w, tau in zip(weights, taus):
        agree = (tau * sign > 0).to(tau.dtype)  # (shape,) 1 where tau has the elected (non-zero) sign
        num.addcmul_(tau, agree, value=float(w))
        den.add_(agree, alpha=float(w))
    # where nothing agrees num is exactly 0, so dividing by the clamped den gives 0 there
    return num.div_(den.clamp_min_(torch.finfo(den.dtype).tiny))


def combine_task_vectors(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    weights: Sequence[float],
    ctx: MethodContext,
    *,
    scale: float = 1.0,
    sparsify: str = "none",
    density: float = 1.0,
    drop_rate: float = 0.0,
    consensus: bool = False,
    normalize: bool = False,
) -> torch.Tensor:
    """``base + scale * merged(task vectors)``: the one function behind TA, TIES and DARE.

    ``sparsify``: ``none`` | ``magnitude`` (TIES trim to ``density``) | ``random`` (DARE, drop
    ``drop_rate``, seeded per key and model by ``ctx``). ``consensus``: TIES sign election and
    disjoint mean; otherwise a weighted sum (divided by ``sum w`` when ``normalize``).

    Example:
        >>> b = torch.zeros(2)
        >>> combine_task_vectors([torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])], b, [1, 1], MethodContext("k"))
        tensor([4., 0.])
    """
    taus = []
    for i, t in enumerate(tensors):
        tau = t - base  # (shape,) task vector of model i
        if sparsify == "magnitude":
            tau = trim_top_k(tau, density)
        elif sparsify == "random":
            tau = dare_drop(tau, drop_rate, ctx.generator_seed(i))
        taus.append(tau)
    if consensus:
        merged = disjoint_mean(taus, weights, elect_sign(taus, weights))
    else:
        merged = weighted_sum(taus, weights)
        if normalize:
            merged /= float(sum(weights))
    return base + scale * merged
