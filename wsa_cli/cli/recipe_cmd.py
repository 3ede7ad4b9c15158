"""``wsa recipe from-mergekit CONFIG``: the wsa recipe of a mergekit config (see docs/mergekit.md)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import ForceOpt, FormatOpt, JsonOpt, QuietOpt, finish, flags, resolve_format

app = typer.Typer(no_args_is_help=True, help="Recipes: translate a mergekit config into a wsa recipe.")
FLAGS = {"write": "--write", "output": "--output"}


@app.command("from-mergekit")
def from_mergekit(
    config: Annotated[str, typer.Argument(help="A mergekit config (merge_method:, models: or slices:, base_model:, parameters:).")],
    output: Annotated[str, typer.Option("--output", "-o", help="The merge's output the recipe names (relative to the recipe's folder).")] = "merged",
    write: Annotated[Optional[str], typer.Option("--write", help="Write the recipe to this .yaml file (default: print it).")] = None,
    align: Annotated[bool, typer.Option("--align/--no-align", help="Turn Weight Scope Alignment on in the recipe (default off: mergekit's result).")] = False,
    force: ForceOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Print (or --write) the wsa recipe that computes the same merge as a mergekit config; it is loaded and checked first."""
    from wsa_cli.recipe.mergekit import from_mergekit as translate

    with flags(FLAGS):
        result = translate(config, output=output, write=write, align=align, force=force)
    finish(result, resolve_format(fmt, as_json), quiet=quiet)
