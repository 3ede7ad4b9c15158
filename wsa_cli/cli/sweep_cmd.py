"""``wsa sweep RECIPE --grid PATH=VALUES --eval EVALUATOR``: merge every grid point in memory, score it, keep the front."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import ColumnsOpt, DeviceOpt, ForceOpt, FormatOpt, JsonOpt, QuietOpt, WideOpt, finish, flags, progress, resolve_format

FLAGS = {"grid": "--grid", "evaluator": "--eval", "direction": "--direction", "directions": "--direction", "front": "--front",
         "surrogate": "--surrogate", "limit": "--limit", "eval_model": "--eval-model", "write": "--write", "plot": "--plot",
         "state": "--state", "recipe": "RECIPE"}  # fmt: skip


def command(
    recipe: Annotated[str, typer.Argument(help="A single-stage merge recipe (its optional sweep: block sets the options below).")],
    grid: Annotated[Optional[list[str]], typer.Option("--grid", metavar="PATH=VALUES",
                    help="A swept recipe key and its values: models[1].weight=0:1:11, density=0.2,0.5,0.8 (repeatable).")] = None,
    evaluator: Annotated[Optional[list[str]], typer.Option("--eval", help="digits-mlp, digits-cnn, hf-perplexity:FILE, hf-similarity:FILE, "
                         "hf-classify:FILE or a plug-in package.module:function (docs/evaluators.md); repeatable: metrics become "
                         "LABEL.METRIC (LABEL=SPEC names one).")] = None,
    direction: Annotated[Optional[list[str]], typer.Option("--direction", metavar="METRIC=min|max",
                         help="Which way a metric is better (default: min for loss/perplexity/error..., max otherwise).")] = None,
    front: Annotated[Optional[str], typer.Option("--front", metavar="A,B,...", help="The metrics of the Pareto front (default: all).")] = None,
    surrogate: Annotated[Optional[int], typer.Option("--surrogate", metavar="N",
                         help="Evaluate N points, fit a quadratic of each metric, then evaluate only the predicted front.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", metavar="N", help="hf-* evaluators: use the first N examples.")] = None,
    eval_model: Annotated[Optional[Path], typer.Option("--eval-model", metavar="DIR",
                          help="hf-* evaluators: the folder with config and tokenizer (default: the base model's, else the first model's).")] = None,
    write: Annotated[Optional[list[str]], typer.Option("--write", metavar="best:METRIC|front|INDEX",
                     help="Also merge these points to files through the wsa merge path (repeatable).")] = None,
    state: Annotated[Optional[Path], typer.Option("--state", metavar="FILE",
                     help="Save each finished point here; a rerun with the same file resumes.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw the front to this .png/.svg/.pdf (extra wsa[plot]).")] = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sweep a recipe's parameters: every grid point is merged in memory and evaluated; prints every point, the best
    point per metric and the Pareto front (see docs/sweep.md). Ctrl-C prints the points done so far (exit 130)."""
    from wsa_cli.sweep import prepare_sweep, run_sweep
    from wsa_cli.sweep.write import parse_selection, write_points

    out_fmt = resolve_format(fmt, as_json)
    with flags(FLAGS):
        setup = prepare_sweep(recipe, grid=grid or (), evaluator=evaluator or None, directions=direction or (), front=front,
                              surrogate=surrogate, limit=limit, eval_model=eval_model)  # fmt: skip
        parse_selection(write or ())  # a bad --write fails before the sweep
        if plot is not None:
            from wsa_cli.sweep.plot import check_plot_output, require_matplotlib

            require_matplotlib()
            check_plot_output(plot, [recipe], force=force)
        with progress(None, "sweep", quiet=quiet) as advance:
            result = run_sweep(setup, device=device, progress=advance, state=state,
                               interrupt_state=Path(f"{Path(recipe).stem}.sweep-state.json"))  # fmt: skip
        if write and not result.interrupted:
            write_points(setup, result, write, device=device, force=force)
    if plot is not None and result.points:
        from wsa_cli.sweep.plot import plot_sweep

        plot_sweep(result, plot)
        result.notes.append(f"wrote {plot}")
    finish(result, out_fmt, quiet=quiet, wide=wide, columns=columns.split(",") if columns else None)
    if result.stop is not None:
        raise result.stop
