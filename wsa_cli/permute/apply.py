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
from wsa_cli.permute.spec import AxisEntry, AxisGroup, PermutationSpec, Segment


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


def segment_sizes(segments: tuple[Segment, ...], sizes: Mapping[str, int]) -> list[list[int]]:
    """Each segment's factor sizes (a group's size, or the number itself)."""
    return [[f if isinstance(f, int) else int(sizes[f]) for f in seg] for seg in segments]


def permute_entry(t: torch.Tensor, axis: int, entry: AxisEntry, perms: Mapping[str, torch.Tensor], *,
                  skip: tuple[int, int] | None = None) -> torch.Tensor:  # fmt: skip
    """Reorder ``axis`` of ``t`` as ``entry`` says: each segment reshaped into its factors, each group factor permuted.

    ``skip=(seg, pos)`` leaves that one factor in its order (matching builds a group's cost that way).

    Example:
        >>> from wsa_cli.permute.spec import AxisLayout
        >>> permute_entry(torch.arange(6), 0, AxisLayout(((2, "P"),)), {"P": torch.tensor([2, 0, 1])})
        tensor([2, 0, 1, 5, 3, 4])
    """
    if entry is None:
        return t
    if isinstance(entry, AxisGroup):
        return t if skip is not None else permute_axis(t, axis, perms[entry.group], entry.inner)
    sizes = {f: int(perms[f].numel()) for seg in entry.segments for f in seg if isinstance(f, str)}
    parts, start = [], 0
    for si, (seg, dims) in enumerate(zip(entry.segments, segment_sizes(entry.segments, sizes), strict=True)):
        n = 1
        for d in dims:
            n *= d
        piece = t.narrow(axis, start, n)
        start += n
        split = piece.reshape(*piece.shape[:axis], *dims, *piece.shape[axis + 1 :])
        for pos, f in enumerate(seg):
            if isinstance(f, str) and skip != (si, pos):
                split = split.index_select(axis + pos, perms[f].to(t.device))
        parts.append(split.reshape(piece.shape))
    if start != t.shape[axis]:
        raise ConfigError(f"axis {axis} has {t.shape[axis]} entries but its layout {entry.to_yaml()!r} covers {start}")
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=axis)


def permute_tensor(spec: PermutationSpec, key: str, t: torch.Tensor, perms: Mapping[str, torch.Tensor], *, skip_axis: int | None = None,
                   skip: tuple[int, int, int] | None = None) -> torch.Tensor:  # fmt: skip
    """Apply every group permutation listed for ``key`` to ``t``, except on ``skip_axis`` or the one factor ``skip=(axis, seg, pos)``."""
    for axis, e in enumerate(spec.axes.get(key, ())):
        if e is None or axis == skip_axis:
            continue
        t = permute_entry(t, axis, e, perms, skip=skip[1:] if skip is not None and skip[0] == axis else None)
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
