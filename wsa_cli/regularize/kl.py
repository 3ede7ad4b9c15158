"""Differentiable per-layer scope and its KL divergence to a target scope.

A layer's scope is ``N(mu_l, s_l^2)`` with ``mu_l`` the mean and ``s_l`` the *population* std of
its weights (the convention of the whole tool). The penalty for one layer, in the default
``forward`` direction, is (our reading of Xu et al. 2024)::

    KL(N(mu_l, s_l^2) || N(mu_t, s_t^2)) = ln(s_t/s_l) + (s_l^2 + (mu_l - mu_t)^2) / (2 s_t^2) - 1/2

``reverse`` swaps the two Gaussians: ``KL(N(mu_t, s_t^2) || N(mu_l, s_l^2))``.
Both are computed by :func:`wsa_cli.scope.gaussian_kl`, so inspect, merge and training share one
formula. Gradients flow into the weights through ``mu_l`` and ``s_l``:
``d mu_l / d w_i = 1/n`` and ``d s_l / d w_i = (w_i - mu_l) / (n s_l)``.
"""

from __future__ import annotations

import torch

from wsa_cli.errors import InvalidValueError
from wsa_cli.scope.gaussian import Scope, gaussian_kl

KL_DIRECTIONS = ("forward", "reverse")


def differentiable_scope(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, population std)`` of all of ``w``'s values as 0-d tensors that carry gradients.

    Computed in float32, or float64 when ``w`` is float64 (bf16/fp16 weights are promoted).

    Example:
        >>> mu, s = differentiable_scope(torch.tensor([1.0, 3.0]))
        >>> float(mu), float(s)
        (2.0, 1.0)
    """
    x = w if w.dtype in (torch.float32, torch.float64) else w.float()
    x = x.reshape(-1)  # (n,)
    mu = x.mean()
    var = (x - mu).pow(2).mean()  # population variance, correction=0
    return mu, var.sqrt()


def layer_kl(w: torch.Tensor, target: Scope, direction: str = "forward") -> torch.Tensor:
    """KL between the scope of ``w`` and ``target`` (0-d tensor, differentiable w.r.t. ``w``).

    Example:
        >>> round(float(layer_kl(torch.tensor([-1.0, 1.0]), Scope(0.0, 1.0))), 6)
        0.0
    """
    mu, s = differentiable_scope(w)
    mu_t = torch.tensor(target.mean, dtype=mu.dtype, device=mu.device)
    s_t = torch.tensor(target.std, dtype=mu.dtype, device=mu.device)
    if direction == "forward":
        return gaussian_kl(mu, s, mu_t, s_t)
    if direction == "reverse":
        return gaussian_kl(mu_t, s_t, mu, s)
    raise InvalidValueError(f"unknown KL direction {direction!r}; choose from {', '.join(KL_DIRECTIONS)}")
