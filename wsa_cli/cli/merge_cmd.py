"""``wsa merge RECIPE`` or ``wsa merge A B ... -o OUT``: merge checkpoints (see docs/merge.md, docs/recipes.md)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import (
    ColumnsOpt, DeviceOpt, ForceOpt, FormatOpt, JsonOpt, QuietOpt, WideOpt, finish, flags, progress, resolve_format,
)  # fmt: skip

FLAGS = {"param": "--param", "weights": "--weights", "save_recipe": "--save-recipe"}


def command(
    inputs: Annotated[list[str], typer.Argument(metavar="RECIPE | CHECKPOINT...", help="A recipe (YAML; paths in it are relative to its folder), or the checkpoints to merge with -o.")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output of a merge given on the command line: a .safetensors file or a folder.")] = None,
    method: Annotated[str, typer.Option("--method", help="Merge method (see wsa methods); command-line merges only.")] = "linear",
    base: Annotated[Optional[str], typer.Option("--base", help="Base model of the methods that use one (wsa methods lists them).")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", metavar="NAME=VALUE", help="A method parameter, e.g. density=0.5 (repeatable).")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Model weights, e.g. 1,3 (default equal).")] = None,
    align: Annotated[bool, typer.Option("--align/--no-align", help="Weight Scope Alignment before the method (default on).")] = True,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Output dtype: float32, float16, bfloat16 (default: the inputs').")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the seeded methods (dare_*, della*).")] = None,
    save_recipe: Annotated[Optional[str], typer.Option("--save-recipe", help="Also write the recipe of a command-line merge to this .yaml file.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate everything and print the plan; write no model (--save-recipe still writes the recipe).")] = False,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Merge checkpoints following a YAML recipe, or the checkpoints and options given here; Weight Scope Alignment first.

    Everything is validated before a tensor is read (recipe keys and types, files, keys, shapes
    and dtypes of the models, the base model, the output). Tensors stream one at a time; the
    output is written atomically with a JSON merge report next to it. --dry-run prints the plan
    (and the recipe a command line stands for). See docs/merge.md and docs/recipes.md.
    """
    from wsa_cli.cli.quick_args import command_line_merge

    out_fmt = resolve_format(fmt, as_json)
    with flags(FLAGS), progress(None, "merge", quiet=quiet or dry_run) as advance:
        quick = command_line_merge(inputs, out=out, method=method, base=base, param=param, weights=weights, align=align,
                                   dtype=dtype, seed=seed, save_recipe=save_recipe)  # fmt: skip
        if quick is None:
            from wsa_cli.merge.executor import merge_recipe

            result = merge_recipe(inputs[0], device=device, force=force, dry_run=dry_run, progress=advance)
        else:
            from wsa_cli.merge.quick import merge_command_line

            result = merge_command_line(quick, device=device, force=force, dry_run=dry_run, save_recipe=save_recipe, progress=advance)
    finish(result, out_fmt, quiet=quiet, wide=wide, columns=columns.split(",") if columns else None)
