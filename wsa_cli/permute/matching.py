"""Weight matching (Git Re-Basin, Ainsworth, Hayase & Srinivasa 2023, Algorithm 1 as we read it).

Find permutations ``P_g`` (one per group) that maximise ``sum_keys <W_ref[key], P(W_other[key])>``,
the inner product between the reference's weights and the other model's permuted weights. The
joint problem is hard; the coordinate ascent below fixes every group but one, which leaves a
linear assignment problem for that group:

    C[i, j] = sum_{(key, axis) in group} < ref[key] row i along axis , other'[key] row j along axis >
    P_g = argmax_P sum_i C[i, P(i)]        (scipy.optimize.linear_sum_assignment)

where ``other'`` has every *other* axis already permuted. Groups are visited in a seeded random
order each sweep; the loop stops when a whole sweep improves no group (or after ``max_sweeps``).
The objective after each sweep is recorded so a run can be inspected.

Before the sweeps, a *forward pass* (our addition, on by default) visits the groups once in spec
order (input to output) and matches each using only the tensors whose other permuted axes are
already matched: in a chain, layer 1's rows alone, then layer 2's rows with layer 1's order
known, and so on. This exactly recovers a permutation of a chain with distinct rows, where
starting from the identity can stall in a local optimum on narrow layers; it is kept only if it
beats the identity, and coordinate ascent then continues from it.

Factored axes (transformer heads, :class:`~wsa_cli.permute.spec.AxisLayout`): a group's units on
such an axis are one factor of it, e.g. the heads of ``"H*QK"``; the cost above sums over every
site (every factor of every axis) where the group acts, the other factors already permuted, so
the residual group ``R`` gets its cost from every tensor it touches. In the forward pass a group
with another group inside its units (a head group: the dimensions inside a head are matched
after it) is matched on *per-head block costs* that do not depend on the order inside the head,
``C[u, v] = sum over outer blocks o of ||A[o, u] B[o, v]^T||_F^2`` (``A[o, u]``: the rows of
head ``u``, one per dimension inside it), then the inner groups by the plain cost with the heads
known. Sweeps use the plain cost (exact coordinate ascent of the objective); each sweep shuffles
the groups with the seed and then orders them, stably, by nesting depth: the residual stream,
MLP units and head groups first, then the groups inside heads (a K/V-head group before the
query heads inside it, before a head's dimensions).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from wsa_cli.errors import MismatchError
from wsa_cli.permute.apply import identity_perms, permute_tensor, segment_sizes
from wsa_cli.permute.spec import PermutationSpec, Site, entry_groups, segments_of
from wsa_cli.progress import ProgressFn
from wsa_cli.scope.kinds import is_bn_running_stat

#: keys that are permuted but do not count in the objective
#: relative gain below which a group's new assignment does not count as progress
REL_TOL = 1e-9


@dataclass
class MatchResult:
    """Permutations per group and the objective: ``objective[0]`` before any sweep, then one per sweep.

    Example:
        >>> MatchResult({}, [1.0, 2.0]).sweeps
        1
    """

    perms: dict[str, torch.Tensor]
    objective: list[float] = field(default_factory=list)

    @property
    def sweeps(self) -> int:
        return max(len(self.objective) - 1, 0)

    def to_dict(self) -> dict[str, object]:
        return {"sweeps": self.sweeps, "objective": list(self.objective), "perms": {g: p.tolist() for g, p in self.perms.items()}}


def _factors(spec: PermutationSpec, site: Site) -> tuple[str | int, ...]:
    entry = spec.axes[site.key][site.axis]
    assert entry is not None
    return segments_of(entry)[site.seg]


def _site_units(spec: PermutationSpec, t: torch.Tensor, site: Site, sizes: Mapping[str, int]) -> torch.Tensor:
    """``t`` seen from one site: ``(outer, n, inner, rest)``, the group's ``n`` units on axis 1.

    ``outer``/``inner`` are the factors before/after the group in its segment; ``rest`` every other axis.
    """
    entry = spec.axes[site.key][site.axis]
    assert entry is not None
    dims = segment_sizes(segments_of(entry), sizes)
    start = sum(math.prod(d) for d in dims[: site.seg])
    seg = dims[site.seg]
    piece = t.narrow(site.axis, start, math.prod(seg)).movedim(site.axis, 0)
    return piece.reshape(math.prod(seg[: site.pos]), seg[site.pos], math.prod(seg[site.pos + 1 :]), -1)


def _nested(spec: PermutationSpec, site: Site) -> bool:
    """Whether a permuted group sits inside this site's units (a head's dimensions)."""
    return any(isinstance(f, str) and spec.sizes.get(f, 1) > 1 for f in _factors(spec, site)[site.pos + 1 :])


def _depth(spec: PermutationSpec, site: Site) -> int:
    """How many groups enclose this site's units on its axis (0 for a plain axis or a head group)."""
    return sum(isinstance(f, str) for f in _factors(spec, site)[: site.pos])


def _ready(spec: PermutationSpec, site: Site, done: set[str]) -> bool:
    """Every group on the key's other axes, and every enclosing group on this axis, is matched already."""
    for axis, e in enumerate(spec.axes[site.key]):
        if axis != site.axis and any(g not in done for g in entry_groups(e)):
            return False
    return all(f in done for f in _factors(spec, site)[: site.pos] if isinstance(f, str))


def matching_objective(spec: PermutationSpec, ref: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], perms: Mapping[str, torch.Tensor], device: torch.device) -> float:
    """``sum_key <ref[key], permuted other[key]>`` over every key the spec permutes (float64)."""
    total = 0.0
    for key in spec.axes:
        if key not in ref or is_bn_running_stat(key):
            continue
        a = ref[key]
        if not a.dtype.is_floating_point:
            continue
        b = permute_tensor(spec, key, other[key].to(device, torch.float32), perms)
        total += float((a.to(device, torch.float32) * b).sum(dtype=torch.float64))  # float64 accumulation
    return total


def weight_matching(
    spec: PermutationSpec,
    ref_state: Mapping[str, torch.Tensor],
    other_state: Mapping[str, torch.Tensor],
    *,
    seed: int = 0,
    max_sweeps: int = 100,
    device: torch.device | str = "cpu",
    init: Mapping[str, torch.Tensor] | None = None,
    forward_init: bool = True,
    progress: ProgressFn | None = None,
) -> MatchResult:
    """Permutations that put ``other_state``'s units into ``ref_state``'s order.

    ``spec`` must be resolved (sizes known); both states must hold every key of ``spec.axes``
    with equal shapes. Returns perms on the CPU. ``objective[0]`` is the identity's; with
    ``forward_init`` (and no ``init``) ``objective[1]`` is after the forward pass, then one entry
    per sweep of coordinate ascent.

    Example:
        >>> res = weight_matching(spec, a, b, seed=0)  # doctest: +SKIP
        >>> b_aligned = apply_permutation(spec, b, res.perms)  # doctest: +SKIP
    """
    from scipy.optimize import linear_sum_assignment

    device = torch.device(device)
    for key in spec.axes:
        if key not in ref_state or key not in other_state:
            raise MismatchError("key is missing from one of the models", key=key)
        if tuple(ref_state[key].shape) != tuple(other_state[key].shape):
            raise MismatchError(f"shapes differ: {tuple(ref_state[key].shape)} vs {tuple(other_state[key].shape)}", key=key)
    sites = spec.sites()
    sizes = spec.sizes
    # float32 copies on the device; matching statistics are accumulated in float64 below
    # BatchNorm running statistics are permuted with their channels but are not weights: they do
    # not take part in the matching objective (as in Ainsworth et al., whose params exclude batch stats)
    ref = {
        k: ref_state[k].to(device, torch.float32)
        for k in spec.axes
        if ref_state[k].dtype.is_floating_point and not is_bn_running_stat(k)
    }
    oth = {k: other_state[k].to(device, torch.float32) for k in ref}
    perms = {g: p.to(device) for g, p in (init or identity_perms(spec)).items()}
    rng = random.Random(seed)
    objective = [matching_objective(spec, ref, oth, perms, device)]
    groups = [g for g in spec.group_names() if sites.get(g)]

    def cost_of(g: str, terms: list[Site], *, blocks: bool = False) -> Any:
        n = sizes[g]
        cost = torch.zeros(n, n, dtype=torch.float64, device=device)  # (n_ref, n_other)
        for site in terms:
            if site.key not in ref:
                continue
            b = permute_tensor(spec, site.key, oth[site.key], perms, skip=(site.axis, site.seg, site.pos))
            xa, xb = _site_units(spec, ref[site.key], site, sizes), _site_units(spec, b, site, sizes)
            if blocks and _nested(spec, site):
                # per-unit block cost, blind to the order inside the block (its inner groups are not
                # matched yet): sum over outer blocks o of ||A[o, u] B[o, v]^T||_F^2
                for o in range(xa.shape[0]):
                    cost += torch.einsum("uic,vjc->uvij", xa[o], xb[o]).double().pow(2).sum((2, 3))
            else:
                cost += (xa.transpose(0, 1).reshape(n, -1) @ xb.transpose(0, 1).reshape(n, -1).T).double()
        return cost.cpu().numpy()

    if init is None and forward_init and groups:
        # Forward pass (input to output, spec order; an attention head group comes before the
        # groups inside its heads): each group counts only the tensors whose other permuted axes
        # (and the outer factors of its own axis) are already matched, so an early group is not
        # swamped by the noise of not-yet-aligned neighbours. A group with matched-later groups
        # inside its units (heads) is matched on per-head block costs blind to the order inside.
        # Kept only if it beats the identity start.
        done: set[str] = set()
        for g in groups:
            terms = [site for site in sites[g] if _ready(spec, site, done)] or sites[g]
            _, cols = linear_sum_assignment(cost_of(g, terms, blocks=True), maximize=True)
            perms[g] = torch.as_tensor(cols, dtype=torch.long, device=device)
            done.add(g)
        forward = matching_objective(spec, ref, oth, perms, device)
        if forward < objective[0]:
            perms = {g: p.to(device) for g, p in identity_perms(spec).items()}
            forward = objective[0]
        objective.append(forward)
    depth = {g: max((_depth(spec, site) for site in sites[g]), default=0) for g in groups}
    for sweep in range(max_sweeps):
        order = list(groups)
        rng.shuffle(order)
        order.sort(key=depth.__getitem__)  # stable: heads (outer factors) before the groups inside them
        improved = False
        for g in order:
            n = sizes[g]
            c = cost_of(g, sites[g])
            rows, cols = linear_sum_assignment(c, maximize=True)
            old = float(c[range(n), perms[g].cpu().numpy()].sum())
            new = float(c[rows, cols].sum())
            if new > old + REL_TOL * max(abs(old), 1.0):
                perms[g] = torch.as_tensor(cols, dtype=torch.long, device=device)
                improved = True
        objective.append(matching_objective(spec, ref, oth, perms, device))
        if progress is not None:
            progress(1, f"sweep {sweep + 1}: objective {objective[-1]:.6g}")
        if not improved:
            break
    return MatchResult({g: p.cpu() for g, p in perms.items()}, objective)
