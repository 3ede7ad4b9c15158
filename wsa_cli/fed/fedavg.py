"""Server-side steps of a federated round: weighted averaging of states and fusion of scopes.

FedAvg (McMahan et al. 2017): the new global model is ``sum_k p_k * state_k`` with ``p_k``
proportional to client ``k``'s number of training examples. Floating tensors (weights and
BatchNorm running statistics) are averaged in float64 and cast back; integer buffers
(``num_batches_tracked``) take the weighted mean rounded to an integer.

Scope fusion (the WSA server step): each layer's client scopes are fused with the same data-size
weights (:func:`wsa_cli.fusion.fuse_scopes`, ``moments`` by default) into the target that the
regularizer pulls every client towards in the next round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from wsa_cli.errors import MismatchError
from wsa_cli.fusion.fuse import fuse_scopes, normalize_weights
from wsa_cli.scope.gaussian import Scope
from wsa_cli.fusion.rescale import rescale_tensor
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.scope.stats import tensor_scope


def fedavg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted average of K state dicts with identical keys and shapes.

    Example:
        >>> fedavg([{"w": torch.zeros(2)}, {"w": torch.ones(2)}], [1, 3])["w"]
        tensor([0.7500, 0.7500])
    """
    p = normalize_weights(weights, len(states))
    keys = list(states[0])
    for i, s in enumerate(states[1:], start=1):
        if list(s) != keys:
            raise MismatchError(f"client {i} has different tensors than client 0")
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        ref = states[0][k]
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for pi, s in zip(p, states, strict=True):
            if tuple(s[k].shape) != tuple(ref.shape):
                raise MismatchError(f"shape {tuple(s[k].shape)} differs from {tuple(ref.shape)}", key=k)
            acc += pi * s[k].detach().to("cpu", torch.float64)
        out[k] = acc.to(ref.dtype) if ref.dtype.is_floating_point else acc.round().to(ref.dtype)
    return out


def fuse_client_scopes(
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | None = None,
    *,
    method: str = "moments",
    selector: LayerSelector | None = None,
) -> tuple[dict[str, Scope], dict[str, list[Scope]]]:
    """Per layer: the fused scope of the clients (weights = data sizes) and each client's scope.

    Example:
        >>> a, b = {"w": torch.tensor([[0.0, 2.0]])}, {"w": torch.tensor([[4.0, 8.0]])}
        >>> fuse_client_scopes([a, b])[0]["w"].mean
        3.5
    """
    sel = selector or LayerSelector()
    fused: dict[str, Scope] = {}
    per_client: dict[str, list[Scope]] = {}
    for k, ref in states[0].items():
        if not sel.selects(k, tuple(ref.shape), ref.dtype):
            continue
        scopes = [tensor_scope(s[k]) for s in states]
        per_client[k] = scopes
        fused[k] = fuse_scopes(scopes, weights, method)
    return fused, per_client


def align_states(
    states: Sequence[Mapping[str, torch.Tensor]], targets: Mapping[str, Scope], mode: str = "affine"
) -> list[dict[str, torch.Tensor]]:
    """Rescale every client's layers onto the fused scopes (WSA alignment before averaging)."""
    out = []
    for s in states:
        aligned = dict(s)
        for k, t in targets.items():
            w = s[k]
            new, _ = rescale_tensor(w, tensor_scope(w), t, mode)
            aligned[k] = new.to(w.dtype)
        out.append(aligned)
    return out
