"""``wsa merge RECIPE``: merge checkpoints as a YAML recipe says (see docs/merge.md, docs/recipes.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsa_cli.cli.common import DeviceOpt, ForceOpt, FormatOpt, JsonOpt, QuietOpt, finish, flags, progress, resolve_format


def command(
    recipe: Annotated[Path, typer.Argument(help="The recipe (YAML). Paths inside it are relative to its folder.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate everything and print the plan; write nothing.")] = False,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Merge checkpoints following a YAML recipe, with Weight Scope Alignment before any method.

    Everything is validated before a tensor is read (recipe keys and types, files, keys, shapes
    and dtypes of the models, the base model, the output). Tensors stream one at a time; the
    output is written atomically with a JSON merge report next to it. --dry-run prints the plan.
    See docs/merge.md and docs/recipes.md.
    """
    from wsa_cli.merge.executor import merge_recipe

    out_fmt = resolve_format(fmt, as_json)
    with flags(), progress(None, "merge", quiet=quiet or dry_run) as advance:
        result = merge_recipe(recipe, device=device, force=force, dry_run=dry_run, progress=advance)
    finish(result, out_fmt, quiet=quiet)
