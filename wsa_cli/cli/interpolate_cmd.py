"""``wsa interpolate``: loss/accuracy along the straight line between two checkpoints, and its barrier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import (
    ColumnsOpt, DeviceOpt, ExcludeOpt, FailAboveOpt, ForceOpt, FormatOpt, IncludeOpt, JsonOpt, KeyOpt, QuietOpt, StripPrefixOpt,
    WideOpt, finish, flags, progress, resolve_format,
)  # fmt: skip

DEFAULT_ALPHAS = "0:1:11"
DEFAULT_MODES = "naive,wsa"
#: library parameter -> flag, for this command's own options
FLAGS = {"alphas": "--alphas", "modes": "--modes", "spec": "--spec", "evaluator": "--eval", "split": "--split", "plot": "--plot",
         "recalibrate_bn": "--recalibrate-bn", "limit": "--limit"}  # fmt: skip


def command(
    a: Annotated[str, typer.Argument(help="First checkpoint (alpha = 0).")],
    b: Annotated[str, typer.Argument(help="Second checkpoint (alpha = 1).")],
    alphas: Annotated[str, typer.Option("--alphas", help="START:STOP:COUNT (both ends included) or a list a,b,c; must contain 0 and 1.")] = DEFAULT_ALPHAS,
    evaluator: Annotated[
        Optional[str],
        typer.Option("--eval", help="Built-in task (digits-mlp, digits-cnn), hf-perplexity:FILE, hf-similarity:FILE, hf-classify:FILE "
                     "(docs/evaluators.md) or plug-in package.module:function. "
                     "Without it: data-free weight diagnostics."),
    ] = None,
    modes: Annotated[str, typer.Option("--modes", help="Comma-separated modes run side by side: naive, wsa (+ permutation modes).")] = DEFAULT_MODES,
    recipe: Annotated[
        Optional[Path],
        typer.Option("--recipe", help="Take fusion/target/rescale/layer options from this merge recipe."),
    ] = None,
    fusion: Annotated[
        Optional[str],
        typer.Option("--fusion", help="How the pair's scopes are fused (wsa mode): moments (default), precision, stats-mean."),
    ] = None,
    target: Annotated[
        Optional[str],
        typer.Option("--target", help="Target scope: fused (default), a model index 0/1, MEAN,STD, or a scope file."),
    ] = None,
    rescale: Annotated[
        Optional[str],
        typer.Option("--rescale", help="How layers are mapped onto the target: affine (default), std, none."),
    ] = None,
    weights: Annotated[
        Optional[str],
        typer.Option("--weights", help="Fusion weights of A and B, e.g. 1,3 (default equal)."),
    ] = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    spec: Annotated[
        Optional[Path],
        typer.Option("--spec", help="Permutation spec for the permutation modes."),
    ] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for modes with randomness (default 0).")] = None,
    recalibrate_bn: Annotated[
        bool, typer.Option("--recalibrate-bn", help="Re-estimate BatchNorm running statistics at every alpha (needs --eval).")
    ] = False,
    low_memory: Annotated[
        bool, typer.Option("--low-memory", help="Re-read the endpoints at every alpha instead of holding them (peak ~1 model, not ~3).")
    ] = False,
    split: Annotated[str, typer.Option("--split", help="Data split of a built-in task evaluator: test or train.")] = "test",
    limit: Annotated[Optional[int], typer.Option("--limit", metavar="N", help="hf-* evaluators: use the first N examples (the model folder is A's).")] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Also draw the curves to this .png, .svg or .pdf (needs the plot extra: pip install 'wsa[plot]')."),
    ] = None,
    force: ForceOpt = False,
    fail_above: FailAboveOpt = None,
    key: KeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Walk the straight line (1 - alpha) * A + alpha * B and report loss, accuracy and the barrier.

    Modes run side by side (naive vs wsa: both endpoints rescaled onto their fused scope first).
    Barriers: loss_barrier (vs the line between endpoint losses), loss_barrier_mean (vs their
    mean), loss_barrier_mid (at alpha 0.5), acc_barrier (largest accuracy drop below the line),
    loss_barrier_inputs (vs the input checkpoints' losses). Without --eval, data-free diagnostics:
    std shrinkage, scope KL, distance, cosine. --fail-above METRIC=VALUE (or MODE.METRIC=VALUE)
    exits 1 when a metric exceeds VALUE.
    """
    from wsa_cli.interpolate import run_interpolation
    from wsa_cli.interpolate.plot import check_plot_output, plot_result, require_matplotlib
    from wsa_cli.interpolate.setup import prepare_interpolation

    out_fmt = resolve_format(fmt, as_json)
    with flags(FLAGS):
        setup = prepare_interpolation(
            alphas=alphas, modes=modes, evaluator=evaluator, recipe=recipe, fusion=fusion, target=target, rescale=rescale,
            weights=weights, include=include or (), exclude=exclude or (), spec=spec, seed=seed, recalibrate_bn=recalibrate_bn,
            split=split, fail_above=fail_above or (), device=device, model_folder=a, limit=limit,
        )  # fmt: skip
        if plot is not None:  # fail before the (long) run, not after it
            require_matplotlib()
            check_plot_output(plot, [a, b], force=force)
        with progress(None, "interpolate", quiet=quiet) as advance:
            result = run_interpolation(a, b, alphas=setup.alphas, modes=setup.modes, options=setup.options, evaluator=setup.evaluator,
                                       progress=advance, container_key=key, strip_prefix=strip_prefix, low_memory=low_memory)  # fmt: skip
    if setup.evaluator is None:
        result.notes.append("note: no --eval given: showing DATA-FREE DIAGNOSTICS (weight statistics), not loss or accuracy")
    if plot is not None:  # before stdout: a plot that cannot be written fails the run, data or not
        plot_result(result, plot)
        result.notes.append(f"wrote {plot}")
    finish(result, out_fmt, setup.gates, quiet=quiet, wide=wide, columns=columns.split(",") if columns else None)
