"""``wsa merge RECIPE`` or ``wsa merge A B ... -o OUT``: merge checkpoints (see docs/merge.md, docs/recipes.md)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import (
    ColumnsOpt, DeviceOpt, ForceOpt, FormatOpt, JsonOpt, QuietOpt, ThreadsOpt, WideOpt, finish, flags, progress, resolve_format,
)  # fmt: skip

FLAGS = {"param": "--param", "weights": "--weights", "save_recipe": "--save-recipe", "max_memory": "--max-memory", "part": "--part",
         "parts": "--parts", "executor": "--executor"}  # fmt: skip


def command(
    inputs: Annotated[list[str], typer.Argument(metavar="RECIPE | CHECKPOINT...", help="A recipe (YAML; paths in it are relative to its folder), or the checkpoints to merge with -o.")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output of a merge given on the command line: a .safetensors file or a folder.")] = None,
    method: Annotated[str, typer.Option("--method", help="Merge method (see wsa methods); command-line merges only.")] = "linear",
    base: Annotated[Optional[str], typer.Option("--base", help="Base model of the methods that use one (wsa methods lists them).")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", metavar="NAME=VALUE", help="A method parameter, e.g. density=0.5 (repeatable).")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Model weights, e.g. 1,3 (default equal).")] = None,
    align: Annotated[Optional[bool], typer.Option("--align/--no-align", help="Weight Scope Alignment before the method (default on; off for a mergekit config unless --align).")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Output dtype: float32, float16, bfloat16 (default: the inputs').")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the seeded methods (dare_*, della*).")] = None,
    save_recipe: Annotated[Optional[str], typer.Option("--save-recipe", help="Also write the recipe of a command-line merge to this .yaml file.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate everything and print the plan; write no model (--save-recipe still writes the recipe).")] = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", metavar="SIZE", help="Memory ceiling, e.g. 8GB: the plan fits under it (fewer buffers) or refuses with the figure it needs (exit 2). See docs/distributed.md.")] = None,
    part: Annotated[Optional[str], typer.Option("--part", metavar="I/N", help="Compute only part I of N (whole output shards, balanced by bytes) with a manifest; resumable. Recipes only.")] = None,
    parts: Annotated[Optional[int], typer.Option("--parts", metavar="N", help="Run the merge as N resumable parts here (or on Ray), then assemble.")] = None,
    assemble: Annotated[bool, typer.Option("--assemble", help="Check every part's manifest and write the output, index, report and model card.")] = False,
    executor: Annotated[str, typer.Option("--executor", help="Where parts run: local or ray (extra wsa[ray]; one task per part).")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster: auto or ray://HOST:PORT (default: the running cluster, else a local one).")] = None,
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
    split = None
    if part is not None or parts is not None or assemble or executor != "local" or address is not None:
        from wsa_cli.merge.parts import Split, parse_part

        with flags(FLAGS):
            split = Split(part=parse_part(part) if part is not None else None, parts=parts, assemble=assemble, executor=executor,
                          address=address)  # fmt: skip

    def announce(cost) -> None:  # noqa: ANN001 - a MergeCost
        if not quiet and sys.stderr.isatty():  # like the progress bar: people see it, logs and pipes get it in the JSON
            typer.echo(cost.line(), err=True)

    with flags(FLAGS), progress(None, "merge", quiet=quiet or dry_run) as advance:
        given = {"--method": method != "linear", "--base": base is not None, "--param": bool(param), "--weights": weights is not None,
                 "--dtype": dtype is not None, "--seed": seed is not None, "--save-recipe": save_recipe is not None}  # fmt: skip
        mergekit = _mergekit_recipe(inputs, out, align, [flag for flag, on in given.items() if on])
        quick = None if mergekit is not None else command_line_merge(
            inputs, out=out, method=method, base=base, param=param, weights=weights, align=align is not False, dtype=dtype, seed=seed,
            save_recipe=save_recipe)  # fmt: skip
        if quick is None:  # a recipe file, or a mergekit config translated into one
            from wsa_cli.merge.executor import merge_recipe

            result = merge_recipe(mergekit if mergekit is not None else inputs[0], device=device, force=force, dry_run=dry_run,
                                  progress=advance, threads=threads, max_memory=max_memory, on_cost=announce, split=split)  # fmt: skip
        else:
            if split is not None or max_memory is not None:
                from wsa_cli.errors import UsageError

                raise UsageError("--max-memory, --part, --parts, --assemble and --executor need a RECIPE (write one with --save-recipe)")
            from wsa_cli.merge.quick import merge_command_line

            result = merge_command_line(quick, device=device, force=force, dry_run=dry_run, save_recipe=save_recipe, progress=advance,
                                        threads=threads)
    finish(result, out_fmt, quiet=quiet, wide=wide, columns=columns.split(",") if columns else None)


def _mergekit_recipe(inputs: list[str], out: Optional[str], align: Optional[bool], extra: list[str]):  # noqa: ANN202 - a Recipe or None
    """``wsa merge mergekit.yml -o OUT``: the mergekit config as a wsa recipe (see docs/mergekit.md); None for anything else."""
    if len(inputs) != 1 or not inputs[0].lower().endswith((".yaml", ".yml")):
        return None
    from wsa_cli.recipe.mergekit import is_mergekit_config, load_mergekit

    if not is_mergekit_config(inputs[0]):
        return None
    from wsa_cli.errors import UsageError

    if out is None:
        raise UsageError(f"{inputs[0]} is a mergekit config, which names no output: give -o OUT (mergekit-yaml's OUTPUT_PATH)")
    if extra:
        raise UsageError(f"{extra[0]} is for a merge of checkpoints given on the command line; the mergekit config {inputs[0]} says its own")
    return load_mergekit(inputs[0], out=out, align=bool(align))
