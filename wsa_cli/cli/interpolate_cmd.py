"""``wsa interpolate``: loss/accuracy along the straight line between two checkpoints, and its barrier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from wsa_cli.cli.common import (
    DeviceOpt,
    ExcludeOpt,
    FailAboveOpt,
    ForceOpt,
    FormatOpt,
    IncludeOpt,
    JsonOpt,
    OutputFormat,
    QuietOpt,
    check_gates,
    note,
    parse_gates,
    print_table,
    progress,
    resolve_format,
    to_csv,
    to_json,
    write_stdout,
)
from wsa_cli.errors import GateFailed, UsageError

DEFAULT_ALPHAS = "0:1:11"
DEFAULT_MODES = "naive,wsa"


def command(
    a: Annotated[str, typer.Argument(help="First checkpoint (alpha = 0).")],
    b: Annotated[str, typer.Argument(help="Second checkpoint (alpha = 1).")],
    alphas: Annotated[str, typer.Option("--alphas", help="START:STOP:COUNT (both ends included) or a list a,b,c; must contain 0 and 1.")] = DEFAULT_ALPHAS,
    evaluator: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--eval", help="Built-in task (digits-mlp, digits-cnn) or plug-in package.module:function. "
                     "Without it: data-free weight diagnostics."),
    ] = None,
    modes: Annotated[str, typer.Option("--modes", help="Comma-separated modes run side by side: naive, wsa (+ permutation modes).")] = DEFAULT_MODES,
    recipe: Annotated[
        Optional[Path],  # noqa: UP007
        typer.Option("--recipe", help="Take fusion/target/rescale/layer options from this merge recipe."),
    ] = None,
    fusion: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--fusion", help="How the pair's scopes are fused (wsa mode): moments (default), precision, stats-mean."),
    ] = None,
    target: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--target", help="Target scope: fused (default), a model index 0/1, MEAN,STD, or a scope file."),
    ] = None,
    rescale: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--rescale", help="How layers are mapped onto the target: affine (default), std, none."),
    ] = None,
    weights: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--weights", help="Fusion weights of A and B, e.g. 1,3 (default equal)."),
    ] = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    spec: Annotated[
        Optional[Path],  # noqa: UP007
        typer.Option("--spec", help="Permutation spec for the permutation modes."),
    ] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for modes with randomness (default 0).")] = None,  # noqa: UP007
    recalibrate_bn: Annotated[
        bool, typer.Option("--recalibrate-bn", help="Re-estimate BatchNorm running statistics at every alpha (needs --eval).")
    ] = False,
    low_memory: Annotated[
        bool, typer.Option("--low-memory", help="Re-read the endpoints at every alpha instead of holding them (peak ~1 model, not ~3).")
    ] = False,
    split: Annotated[str, typer.Option("--split", help="Data split of a built-in task evaluator: test or train.")] = "test",
    plot: Annotated[
        Optional[Path],  # noqa: UP007
        typer.Option("--plot", help="Also draw the curves to this PNG (needs matplotlib)."),
    ] = None,
    force: ForceOpt = False,
    fail_above: FailAboveOpt = None,
    key: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--key", help="Entry holding the state dict inside a pickled checkpoint (e.g. state_dict)."),
    ] = None,
    strip_prefix: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--strip-prefix", help="Remove this prefix from every key (module. is always removed)."),
    ] = None,
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
    from wsa_cli.device import resolve_device
    from wsa_cli.interpolate import ModeOptions, parse_alphas, parse_modes, resolve_evaluator, run_interpolation
    from wsa_cli.interpolate.plot import require_matplotlib
    from wsa_cli.interpolate.recipe_options import options_from_recipe
    from wsa_cli.interpolate.run import count_steps

    out_fmt = resolve_format(fmt, as_json)
    grid = parse_alphas(alphas)
    mode_list = parse_modes(modes)
    gates = _parse_gates(fail_above, [m.name for m in mode_list], with_evaluator=evaluator is not None)
    if recalibrate_bn and evaluator is None:
        raise UsageError("--recalibrate-bn needs --eval (running statistics are re-estimated on the evaluator's data)")
    if split not in ("test", "train"):
        raise UsageError(f"--split {split!r}: choose test or train")
    if plot is not None:
        require_matplotlib()  # fail before the (long) run, not after it
        _check_plot_path(plot, [a, b], force)
    dev = resolve_device(device)
    if spec is not None:  # a missing or broken --spec fails now, even when no mode ends up using it
        from wsa_cli.permute.specfile import load_spec
        from wsa_cli.permute.templates import BUILTIN_TEMPLATES

        if str(spec) not in BUILTIN_TEMPLATES or Path(spec).exists():
            load_spec(spec)
    from_recipe = options_from_recipe(recipe, rescale=rescale) if recipe is not None else None
    scope = _scope_options(from_recipe, fusion, target, rescale, weights, include, exclude)
    ev = resolve_evaluator(evaluator, recalibrate_bn=recalibrate_bn, split=split) if evaluator is not None else None
    if from_recipe is not None:  # the recipe's permutation block, unless given on the command line
        spec = spec if spec is not None else from_recipe.spec
        seed = seed if seed is not None else from_recipe.seed
    opts = ModeOptions(scope=scope, spec=spec, seed=seed if seed is not None else 0, device=dev)

    total = count_steps(a, modes=mode_list, n_alphas=len(grid), with_evaluator=ev is not None, container_key=key, strip_prefix=strip_prefix)
    with progress(total, "interpolate", quiet=quiet) as advance:
        result = run_interpolation(
            a, b, alphas=grid, modes=mode_list, options=opts, evaluator=ev, progress=advance,
            container_key=key, strip_prefix=strip_prefix, low_memory=low_memory,
        )  # fmt: skip
    for warning in result.warnings:
        note(f"warning: {warning}", quiet=quiet)
    if ev is None:
        note("note: no --eval given: showing DATA-FREE DIAGNOSTICS (weight statistics), not loss or accuracy", quiet=quiet)

    if plot is not None:  # before stdout: a plot that cannot be written fails the run, data or not
        from wsa_cli.interpolate.plot import plot_result

        plot_result(result, plot)
        note(f"wrote {plot}", quiet=quiet)
    _emit(result, out_fmt)
    _check(gates, result)


def _parse_gates(specs: list[str] | None, mode_names: list[str], *, with_evaluator: bool) -> list[Any]:
    from wsa_cli.interpolate.barrier import BARRIER_METRICS as _BARRIER_METRICS
    from wsa_cli.interpolate.diagnostics import DIAGNOSTIC_METRICS as _DIAGNOSTIC_METRICS

    base = (*_BARRIER_METRICS, *_DIAGNOSTIC_METRICS)
    known = [*base, *(f"{m}.{k}" for m in mode_names for k in base)]
    gates = parse_gates(specs, known)
    for gate in gates:
        metric = gate.metric.rpartition(".")[2]
        if metric in _BARRIER_METRICS and not with_evaluator:
            raise UsageError(f"--fail-above {gate.metric}: barrier metrics need --eval (data-free gates: {', '.join(_DIAGNOSTIC_METRICS)})")
        if metric in _DIAGNOSTIC_METRICS and with_evaluator:
            raise UsageError(f"--fail-above {gate.metric}: a data-free diagnostic, not computed with --eval (gates: {', '.join(_BARRIER_METRICS)})")
    return gates


def _check(gates: list[Any], result: Any) -> None:
    """Every gate against every mode it names (plain METRIC: all modes); one error listing all failures."""
    from wsa_cli.cli.common import Gate

    failures: list[str] = []
    values = result.gate_values()
    for mode, mode_values in values.items():
        mine = [Gate(g.metric.rpartition(".")[2], g.limit) for g in gates if "." not in g.metric or g.metric.startswith(f"{mode}.")]
        try:
            check_gates(mine, mode_values, where=f"mode {mode}")
        except GateFailed as exc:
            failures.append(exc.message)
    if failures:
        raise GateFailed("; ".join(failures))


def _check_plot_path(plot: Path, inputs: list[str], force: bool) -> None:
    from wsa_cli.io import check_output

    if plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--plot {plot}: use a .png, .svg or .pdf file name")
    check_output(plot, inputs, force=force)


def _scope_options(
    recipe: Any,
    fusion: str | None,
    target: str | None,
    rescale: str | None,
    weights: str | None,
    include: list[str] | None,
    exclude: list[str] | None,
) -> Any:
    """Scope options from the recipe (if any), each overridden by an explicit command-line option."""
    from wsa_cli.fusion.pipeline import ScopeOptions
    from wsa_cli.scope.selection import LayerSelector

    base = recipe.scope if recipe is not None else ScopeOptions()
    parsed_target: Any = base.target if target is None else _parse_target(target)
    sel = base.selector
    if include or exclude:
        sel = LayerSelector(include=tuple(include or sel.include), exclude=tuple(exclude or sel.exclude), min_ndim=sel.min_ndim)
    return ScopeOptions(
        align=base.align,
        fusion=fusion if fusion is not None else base.fusion,
        target=parsed_target,
        rescale=rescale if rescale is not None else base.rescale,
        weights=_parse_weights(weights) if weights is not None else base.weights,
        selector=sel,
    )


def _parse_target(text: str) -> Any:
    """``fused``, a model index, ``MEAN,STD`` or a scope file (kept as a path so the report names it)."""
    from wsa_cli.fusion.scopefile import load_scope_file, parse_target

    t = text.strip()
    if t == "fused":
        return "fused"
    if t.lstrip("-").isdigit():
        index = int(t)
        if index not in (0, 1, -1, -2):
            raise UsageError(f"--target {text!r}: model index must be 0 (A) or 1 (B)")
        return index
    if Path(t).is_file():
        load_scope_file(t)  # validate before any tensor is read
        return Path(t)
    return parse_target(t)


def _parse_weights(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--weights {text!r}: expected two comma-separated numbers, e.g. 1,3") from None
    if len(values) != 2:
        raise UsageError(f"--weights {text!r}: interpolation has 2 checkpoints, got {len(values)} weights")
    return values


def _emit(result: Any, out_fmt: OutputFormat) -> None:
    from wsa_cli.interpolate.report import csv_columns, csv_rows, curve_table, summary_table

    if out_fmt is OutputFormat.json:
        write_stdout(to_json(result.to_dict()))
        return
    if out_fmt is OutputFormat.csv:
        write_stdout(to_csv(csv_rows(result), csv_columns(result)))
        return
    data_free = result.kind != "evaluation"
    label = "DATA-FREE DIAGNOSTICS (no --eval; weight statistics, not loss)" if data_free else f"evaluator {result.evaluator}"
    cols, rows = curve_table(result)
    print_table(f"{Path(result.a).name} -> {Path(result.b).name}: {label}", cols, rows)
    cols, rows = summary_table(result)
    caption = (
        "std shrinkage = 1 - min std(W_alpha) / line between endpoint stds; scope KL to the pair's target scope"
        if data_free
        else "barrier = max(loss - line between endpoint losses); vs mean = max loss - mean endpoint loss; "
        "mid = at alpha 0.5; vs inputs = against the input checkpoints' losses"
    )
    print_table("summary", cols, rows, caption=caption)
