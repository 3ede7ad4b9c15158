"""``wsa spec check``: structural checks of a spec against a checkpoint, and optionally a functional one.

Structural (always): every checkpoint key is covered, every listed key exists with as many axis
entries as the tensor has axes, every group has one size, scaling rules name existing tensors.

Functional (with a model factory): load the checkpoint into the model, draw a seeded random
permutation for every group, permute the weights and confirm the outputs on random inputs do not
change (to ``rtol`` of the output's magnitude); then apply random function-preserving scales
(every scaling rule, ``c`` drawn in [0.5, 2]) and confirm again. When a check fails, each group
(or rule) is tried alone so the error names the culprit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from wsa_cli.errors import ConfigError
from wsa_cli.scope.gaussian import Scope
from wsa_cli.permute.apply import apply_permutation, identity_perms, random_perms
from wsa_cli.permute.factory import ModelSource
from wsa_cli.permute.rescale import function_preserving_rescale
from wsa_cli.permute.spec import PermutationSpec
from wsa_cli.scope.stats import tensor_scope

#: outputs may differ by this fraction of their largest magnitude (float32 re-association);
#: BatchNorm's eps makes function-preserving scaling exact only to about 1e-5 relative.
PERM_RTOL = 1e-4
SCALE_RTOL = 1e-3


@dataclass
class CheckReport:
    """What ``wsa spec check`` found (JSON-ready via :meth:`to_dict`)."""

    groups: dict[str, int]
    keys: int
    permuted_keys: int
    unpermuted_keys: list[str]
    scaling_possible: list[str]
    scaling_not_possible: dict[str, str]
    functional: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "keys": self.keys,
            "permuted_keys": self.permuted_keys,
            "unpermuted_keys": self.unpermuted_keys,
            "scaling_possible": self.scaling_possible,
            "scaling_not_possible": self.scaling_not_possible,
            "functional": self.functional,
        }


def structural_report(spec: PermutationSpec, shapes: Mapping[str, Any]) -> CheckReport:
    """Summary of a resolved spec for a checkpoint (``spec.resolve`` already did the checks)."""
    permuted = [k for k, v in spec.axes.items() if any(e is not None for e in v)]
    return CheckReport(
        groups=dict(spec.sizes),
        keys=len(shapes),
        permuted_keys=len(permuted),
        unpermuted_keys=[k for k in shapes if k not in permuted],
        scaling_possible=[k for k, r in spec.scaling.items() if r.none is None],
        scaling_not_possible={k: r.none for k, r in spec.scaling.items() if r.none is not None},
    )


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(x)
    if isinstance(y, (tuple, list)):
        y = y[0]
    if isinstance(y, Mapping):
        y = next(iter(y.values()))
    return y.detach().double()


def max_output_diff(source: ModelSource, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], x: torch.Tensor,
                    perms: Mapping[str, torch.Tensor] | None = None) -> tuple[float, float]:  # fmt: skip
    """``(max |f_a(x) - f_b(x)|, max |f_a(x)|)`` for the factory's model loaded with each state.

    When the model's output is a permuted stream (``source.output_group``, a headless
    transformer's residual stream), ``f_a``'s last axis is put in ``perms``' order of that group first.
    """
    ya = _outputs(source.build(state_a), x)
    yb = _outputs(source.build(state_b), x)
    if source.output_group is not None and perms is not None and source.output_group in perms:
        ya = ya.index_select(-1, perms[source.output_group].to(ya.device))
    return float((ya - yb).abs().max()), float(ya.abs().max())


def functional_check(spec: PermutationSpec, state: Mapping[str, torch.Tensor], source: ModelSource, *, seed: int = 0) -> dict[str, Any]:
    """Permute every group at random (then scale every rule at random); outputs must not change.

    Raises ConfigError naming the group or scaling rule that changes the outputs.
    """
    x = source.example(seed)
    perms = random_perms(spec, seed)
    diff, scale = max_output_diff(source, state, apply_permutation(spec, state, perms), x, perms)
    tol = PERM_RTOL * max(scale, 1e-6)
    if diff > tol:
        for g in spec.group_names():
            single = identity_perms(spec)
            single[g] = perms[g]
            d, _ = max_output_diff(source, state, apply_permutation(spec, state, single), x, single)
            if d > tol:
                raise ConfigError(
                    f"permuting group {g!r} changes the model's outputs (max abs diff {d:.3g}, outputs up to {scale:.3g}): "
                    "the spec does not describe this model",
                    path=spec.path,
                )
        raise ConfigError(f"permuting all groups together changes the outputs (max abs diff {diff:.3g})", path=spec.path)
    result: dict[str, Any] = {"permutation_max_abs_diff": diff, "output_max_abs": scale, "rtol": PERM_RTOL, "ok": True}
    rules = [r for r in spec.scaling.values() if r.none is None]
    if rules:
        gen = torch.Generator().manual_seed(seed + 1)
        targets = {}
        for r in rules:
            s = tensor_scope(state[r.key])
            c = float(torch.empty(1).uniform_(0.5, 2.0, generator=gen))
            targets[r.key] = Scope(s.mean * c, s.std * c)
        scaled, _ = function_preserving_rescale(spec, state, targets)
        d, _ = max_output_diff(source, state, scaled, x)
        stol = SCALE_RTOL * max(scale, 1e-6)
        if d > stol:
            for r in rules:
                one, _ = function_preserving_rescale(spec, state, {r.key: targets[r.key]})
                d1, _ = max_output_diff(source, state, one, x)
                if d1 > stol:
                    raise ConfigError(
                        f"the scaling rule for {r.key!r} changes the model's outputs (max abs diff {d1:.3g}): "
                        "the layer is not followed by what the rule says",
                        path=spec.path,
                        line=spec.lines.get(f"scaling:{r.key}"),
                    )
            raise ConfigError(f"the scaling rules together change the outputs (max abs diff {d:.3g})", path=spec.path)
        result["rescale_max_abs_diff"] = d
        result["rescale_rtol"] = SCALE_RTOL
    return result
