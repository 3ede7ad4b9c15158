"""Which kind of ``wsa merge`` a command line is: a recipe file, or checkpoints with ``-o``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsa_cli.errors import InputNotFoundError, UsageError


def command_line_merge(inputs: Sequence[str], *, out: str | None, method: str, base: str | None, param: Sequence[str] | None,
                       weights: str | None, align: bool, dtype: str | None, seed: int | None,
                       save_recipe: str | None) -> Any:  # fmt: skip
    """None for ``wsa merge RECIPE``; the :class:`~wsa_cli.recipe.quick.QuickMerge` for ``wsa merge A B -o OUT``.

    Options that only a command-line merge takes are refused with a recipe (the recipe says them).
    """
    from wsa_cli.fusion import parse_weights
    from wsa_cli.recipe.quick import QuickMerge

    one_yaml = len(inputs) == 1 and inputs[0].lower().endswith((".yaml", ".yml"))  # no checkpoint format is YAML
    if one_yaml and out is not None:  # not a mergekit config (that was translated before): a missing file or a recipe
        if not Path(inputs[0]).exists():
            raise InputNotFoundError("recipe or mergekit config not found", path=inputs[0])
        raise UsageError(f"{inputs[0]}: a wsa recipe names its own output; drop -o (only a mergekit config takes one)")
    is_recipe = one_yaml and out is None
    given = {"--method": method != "linear", "--base": base is not None, "--param": bool(param), "--weights": weights is not None,
             "--no-align": not align, "--dtype": dtype is not None, "--seed": seed is not None,
             "--save-recipe": save_recipe is not None}  # fmt: skip
    if is_recipe:
        extra = [flag for flag, on in given.items() if on]
        if extra:
            raise UsageError(f"{extra[0]} is for a merge of checkpoints given on the command line (with -o); the recipe {inputs[0]} says its own")
        return None
    if out is None:
        raise UsageError("give a recipe (wsa merge RECIPE.yaml) or the checkpoints and an output (wsa merge A B -o OUT)")
    w = parse_weights(weights, len(inputs)) if weights is not None else None  # flags() names --weights
    return QuickMerge(models=list(inputs), output=out, method=method, base=base, params=list(param or ()), weights=w,
                      align=align, dtype=dtype, seed=seed)  # fmt: skip
