"""The scope options of an interpolation: from a merge recipe, each overridden by an explicit option.

``wsa interpolate --recipe R`` parses the recipe with :func:`wsa_cli.recipe.load_recipe` (so
errors point at its lines), and
the scope block of its *last* stage (the one that writes the output) becomes the ``wsa`` mode's
options: ``align``, ``fusion``, ``target``, ``rescale``, ``include``/``exclude``. Fusion weights:
``scope.weights`` when given, else the stage's model weights when it lists exactly two models,
else equal. A ``permutation:`` block supplies the permutation spec and seed for permutation modes.
The recipe's models and output are not used: the two checkpoints come from the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wsa_cli.errors import ConfigError
from wsa_cli.fusion.pipeline import ScopeOptions
from wsa_cli.fusion.rescale import MODEL_RESCALE_MODES
from wsa_cli.scope.selection import LayerSelector


@dataclass(frozen=True)
class RecipeScope:
    """What an interpolation takes from a merge recipe."""

    scope: ScopeOptions
    spec: Path | None = None
    seed: int | None = None
    stage: str = ""


def options_from_recipe(path: str | Path, *, rescale: str | None = None) -> RecipeScope:
    """Load a merge recipe and return its last stage's scope options.

    ``rescale``: the command line's ``--rescale``, which wins over the recipe's. A recipe's
    whole-model ``rescale: fp`` has no per-tensor meaning here (interpolation offers it as the
    mode ``permuted+fp``), so it needs that override.

    Example:
        >>> options_from_recipe("recipes/wsa.yaml").scope.fusion  # doctest: +SKIP
        'moments'
    """
    from wsa_cli.recipe import load_recipe

    recipe = load_recipe(path)
    stage = recipe.stages[-1]
    s = stage.scope
    weights = s.weights
    if weights is None and len(stage.models) == 2:
        weights = [m.weight for m in stage.models]
    if weights is not None and len(weights) != 2:
        raise ConfigError(f"scope.weights has {len(weights)} entries; interpolation fuses 2 checkpoints",
                          path=path, line=s.lines.get("weights"))  # fmt: skip
    if isinstance(s.target, int) and not -2 <= s.target < 2:
        raise ConfigError(f"scope.target model {s.target} is out of range for 2 checkpoints (use 0 or 1)",
                          path=path, line=s.lines.get("target"))  # fmt: skip
    if rescale is None and s.rescale in MODEL_RESCALE_MODES:
        raise ConfigError(f"scope.rescale: {s.rescale} rescales whole models; in wsa interpolate it is the mode "
                          "permuted+fp (--modes ...,permuted+fp); pass --rescale affine|std|none for the wsa mode",
                          path=path, line=s.lines.get("rescale"))  # fmt: skip
    scope = ScopeOptions(align=s.align, fusion=s.fusion, target=s.target, rescale=rescale or s.rescale, weights=weights,
                         selector=s.selector())  # fmt: skip
    perm = stage.permutation
    return RecipeScope(scope=scope, spec=perm.spec if perm else None, seed=perm.seed if perm else None, stage=stage.name)


def scope_options(
    recipe: RecipeScope | None = None,
    *,
    fusion: str | None = None,
    target: str | None = None,
    rescale: str | None = None,
    weights: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> ScopeOptions:
    """The scope options of an interpolation: the recipe's (if any), each overridden by a given value.

    ``target`` and ``weights`` are text as a user writes them (``fused``, ``0``, ``0,0.05``, a scope
    file; ``1,3``), parsed by the parsers every command shares.

    Example:
        >>> scope_options(fusion="precision", weights="1,3").weights
        [1.0, 3.0]
    """
    from wsa_cli.fusion import parse_target, parse_weights

    base = recipe.scope if recipe is not None else ScopeOptions()
    sel = base.selector
    if include or exclude:
        sel = LayerSelector(include=tuple(include or sel.include), exclude=tuple(exclude or sel.exclude), min_ndim=sel.min_ndim)
    return ScopeOptions(
        align=base.align,
        fusion=fusion if fusion is not None else base.fusion,
        target=base.target if target is None else parse_target(target, accept=("fused", "model", "fixed", "file")),
        rescale=rescale if rescale is not None else base.rescale,
        weights=parse_weights(weights, 2) if weights is not None else base.weights,
        selector=sel,
    )
