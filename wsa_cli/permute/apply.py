"""Apply permutations to a state dict, and draw random ones (for checks and tests).

Convention: ``perms[g]`` is a LongTensor ``p`` of the group's size; a permuted tensor takes
``t'[..., i, ...] = t[..., p[i], ...]`` on every axis of the group, i.e. ``index_select(axis, p)``.
Weight matching returns ``p`` such that unit ``i`` of the reference matches unit ``p[i]`` of the
other model, so ``apply_permutation(spec, other, p)`` lists the other model's units in the
reference's order.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from wsa_cli.errors import ConfigError
from wsa_cli.permute.spec import PermutationSpec


def permute_axis(t: torch.Tensor, axis: int, perm: torch.Tensor, inner: int = 1) -> torch.Tensor:
    """Reorder ``t`` along ``axis`` by ``perm``; with ``inner > 1`` the axis is ``(len(perm), inner)``.

    Example:
        >>> permute_axis(torch.arange(6), 0, torch.tensor([2, 0, 1]), inner=2)
        tensor([4, 5, 0, 1, 2, 3])
    """
    perm = perm.to(t.device)
    if inner == 1:
        return t.index_select(axis, perm)
    shape = t.shape
    # (..., n*inner, ...) -> (..., n, inner, ...): the group indexes the outer part
    split = t.reshape(*shape[:axis], perm.numel(), inner, *shape[axis + 1 :])
    return split.index_select(axis, perm).reshape(shape)


def permute_tensor(spec: PermutationSpec, key: str, t: torch.Tensor, perms: Mapping[str, torch.Tensor], *, skip_axis: int | None = None) -> torch.Tensor:
    """Apply every group permutation listed for ``key`` (except ``skip_axis``) to ``t``."""
    for axis, e in enumerate(spec.axes.get(key, ())):
        if e is None or axis == skip_axis:
            continue
        t = permute_axis(t, axis, perms[e.group], e.inner)
    return t


def check_perms(spec: PermutationSpec, perms: Mapping[str, torch.Tensor], *, path: str | None = None) -> None:
    """Every group of the spec has a valid permutation of its size (ConfigError otherwise)."""
    for g in spec.group_names():
        if g not in perms:
            raise ConfigError(f"no permutation for group {g!r}", path=path)
        p = perms[g]
        n = spec.sizes.get(g, p.numel())
        if p.ndim != 1 or p.numel() != n or not torch.equal(torch.sort(p.cpu()).values, torch.arange(n)):
            raise ConfigError(f"group {g!r}: not a permutation of range({n})", path=path)


def apply_permutation(spec: PermutationSpec, state: Mapping[str, torch.Tensor], perms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a new state dict with every group's permutation applied (inputs are not modified).

    Keys the spec leaves unpermuted (``num_batches_tracked``...) are copied as they are.

    Example:
        >>> from wsa_cli.permute.spec import AxisGroup
        >>> spec = PermutationSpec({"a": (AxisGroup("P"),), "b": (None, AxisGroup("P"))}, sizes={"P": 2})
        >>> apply_permutation(spec, {"a": torch.tensor([1., 2.]), "b": torch.eye(2)}, {"P": torch.tensor([1, 0])})["a"]
        tensor([2., 1.])
    """
    return {k: permute_tensor(spec, k, v, perms) if k in spec.axes else v for k, v in state.items()}


def invert_perm(p: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: ``p[invert_perm(p)] == arange``."""
    inv = torch.empty_like(p)
    inv[p] = torch.arange(p.numel(), device=p.device, dtype=p.dtype)
    return inv


def random_perms(spec: PermutationSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random permutation for every group (used by ``wsa spec check`` and tests).

    Example:
        >>> from wsa_cli.permute.spec import AxisGroup
        >>> random_perms(PermutationSpec({"a": (AxisGroup("P"),)}, sizes={"P": 3}), seed=1)["P"].sort().values
        tensor([0, 1, 2])
    """
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(spec.sizes[g], generator=gen) for g in spec.group_names()}


def identity_perms(spec: PermutationSpec) -> dict[str, torch.Tensor]:
    return {g: torch.arange(spec.sizes[g]) for g in spec.group_names()}
