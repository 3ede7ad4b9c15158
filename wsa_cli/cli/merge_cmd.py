"""``wsa merge RECIPE``: merge checkpoints as a YAML recipe says (see docs/merge.md, docs/recipes.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsa_cli.cli.common import (
    DeviceOpt,
    ForceOpt,
    FormatOpt,
    JsonOpt,
    OutputFormat,
    QuietOpt,
    note,
    print_table,
    progress,
    resolve_format,
    to_csv,
    to_json,
    write_stdout,
)

PLAN_COLUMNS = ("stage", "key", "shape", "dtype", "out_dtype", "action", "method", "layer", "align", "rescale", "override", "reason")
RUN_COLUMNS = ("name", "output", "method", "tensors", "merged", "copied", "aligned", "constant_not_rescaled", "report")


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
    from wsa_cli.device import resolve_device
    from wsa_cli.merge.executor import run_plans
    from wsa_cli.merge.plan import plan_recipe
    from wsa_cli.recipe import load_recipe

    out_fmt = resolve_format(fmt, as_json)
    parsed = load_recipe(recipe)
    plans = plan_recipe(parsed, force=force)
    dev = resolve_device(device)
    result = {"recipe": str(parsed.path), "recipe_sha256": parsed.sha256, "dry_run": dry_run, "device": str(dev)}
    for plan in plans:
        for warning in plan.warnings:
            note(f"warning: {warning}", quiet=quiet)
    if dry_run:
        result["stages"] = [p.to_dict() for p in plans]
        _emit_plan(result, out_fmt)
        return
    total = sum(len(p.tensors) for p in plans)
    with progress(total, "merge", quiet=quiet) as advance:
        result["stages"] = run_plans(parsed, plans, device=dev, force=force, progress=advance)
    final = result["stages"][-1]
    note(f"wrote {final['output']} ({final['tensors']} tensors)" + (f"; report {final['report']}" if final["report"] else ""), quiet=quiet)
    _emit_run(result, out_fmt)


def _emit_plan(result: dict, out_fmt: OutputFormat) -> None:
    rows = [{"stage": s["name"], **t} for s in result["stages"] for t in s["tensors"]]
    if out_fmt is OutputFormat.json:
        write_stdout(to_json(result))
    elif out_fmt is OutputFormat.csv:
        write_stdout(to_csv(rows, PLAN_COLUMNS))
    else:
        for s in result["stages"]:
            models = ", ".join(f"{m['input']} (w={m['weight']:g})" for m in s["models"])
            base = f"; base {s['base']['input']}" if s["base"] else ""
            params = ", ".join(f"{k}={v}" for k, v in s["parameters"].items())
            caption = (f"models: {models}{base}\nmethod {s['method']}({params}); scope align={s['scope']['align']} "
                       f"fusion={s['scope']['fusion']} target={s['scope']['target']} rescale={s['scope']['rescale']}\n"
                       f"output: {s['output']}" + (" (temporary)" if s["temporary"] else ""))  # fmt: skip
            cols = ("key", "shape", "dtype", "out_dtype", "action", "method", "align", "override", "reason")
            print_table(f"plan of stage {s['name']!r} (dry run)", cols, [[t[c] for c in cols] for t in s["tensors"]], caption=caption)


def _emit_run(result: dict, out_fmt: OutputFormat) -> None:
    rows = [{**s, "constant_not_rescaled": len(s["constant_not_rescaled"])} for s in result["stages"]]
    if out_fmt is OutputFormat.json:
        write_stdout(to_json(result))
    elif out_fmt is OutputFormat.csv:
        write_stdout(to_csv(rows, RUN_COLUMNS))
    else:
        print_table("merge", RUN_COLUMNS, [[r[c] for c in RUN_COLUMNS] for r in rows])
