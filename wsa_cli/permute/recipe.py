"""The one entry point recipes use for their ``permutation:`` block.

A recipe stage may say::

    permutation:
      spec: mlp-spec.yaml        # a spec file (next to the recipe) or a built-in template name
      reference: 0               # index of the model the others are aligned to
      seed: 0                    # seed of weight matching's group order

and ``wsa merge`` calls :func:`permute_inputs` with the stage's models (in memory) before it
measures scopes and merges, so fusion and merging see the models in one unit order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from wsa_cli.errors import ConfigError
from wsa_cli.permute.align import align_states, check_same_shapes
from wsa_cli.permute.spec import shapes_of
from wsa_cli.permute.specfile import load_spec


def permute_inputs(
    states: Sequence[Mapping[str, torch.Tensor]],
    spec_path: str | Path,
    reference: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[dict[str, torch.Tensor]]:
    """Align every state dict to ``states[reference]``; returns them in the same order.

    The reference itself is returned unchanged. Each other model is weight-matched with seed
    ``seed + i`` (``i`` its index), exactly as ``wsa align`` does with the same seed.

    Example:
        >>> a, b = permute_inputs([sd_a, sd_b], "digits-mlp")  # doctest: +SKIP
    """
    if not states:
        return []
    if not 0 <= reference < len(states):
        raise ConfigError(f"permutation.reference {reference} is out of range: the stage has {len(states)} models")
    ref = states[reference]
    shapes = shapes_of(ref)
    spec = load_spec(str(spec_path), shapes=shapes)
    others = [s for i, s in enumerate(states) if i != reference]
    for i, s in enumerate(others):
        check_same_shapes(shapes, s, f"model {i + (i >= reference)}")
    aligned = iter(align_states(spec, ref, others, seed=seed, device=device))
    return [dict(ref) if i == reference else next(aligned)[0] for i in range(len(states))]


def fp_rescale_inputs(
    states: Sequence[Mapping[str, torch.Tensor]],
    spec_path: str | Path,
    options: object,
    device: torch.device | str = "cpu",
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, str]]]:
    """Function-preserving rescale of every model toward the models' fused layer scopes.

    The hook a merge pipeline needs for a ``rescale: fp`` mode: ``options`` is the stage's
    :class:`~wsa_cli.fusion.pipeline.ScopeOptions` (fusion method, target, weights, layer
    selection); the target scopes are computed from ``states`` exactly as for ``affine``/``std``,
    then each model is moved toward them only by the scales the spec's ``scaling:`` rules allow,
    so every model still computes what it computed. The merge then runs with per-tensor rescaling
    off. Returns the new states and, per model, the report ``key -> what happened``.

    Example:
        >>> states, reports = fp_rescale_inputs([sd_a, sd_b], "digits-mlp", ScopeOptions())  # doctest: +SKIP
        >>> reports[0]["fc3.weight"]  # doctest: +SKIP
        'not possible: output layer: nothing downstream absorbs a scale'
    """
    from wsa_cli.fusion.pipeline import ScopeOptions, compute_target_scopes
    from wsa_cli.permute.rescale import function_preserving_rescale

    if not isinstance(options, ScopeOptions):
        raise TypeError("options must be a ScopeOptions")
    if not states:
        return [], []
    spec = load_spec(str(spec_path), shapes=shapes_of(states[0]))
    table = compute_target_scopes(list(states), options, device)
    targets = {k: target for k, (_scopes, target) in table.items()}
    out, reports = [], []
    for s in states:
        new, report = function_preserving_rescale(spec, s, targets, device=device)
        out.append(new)
        reports.append(report)
    return out, reports
