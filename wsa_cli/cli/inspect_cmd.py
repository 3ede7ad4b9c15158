"""``wsa inspect``: per-layer scope table of one checkpoint, or several side by side."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import (
    ColumnsOpt, DeviceOpt, ExcludeOpt, FailAboveOpt, FormatOpt, IncludeOpt, JsonOpt, KeyOpt, QuietOpt, StripPrefixOpt, ThreadsOpt,
    WideOpt, finish, flags, parse_gates, progress, resolve_format,
)  # fmt: skip
from wsa_cli.errors import UsageError


def command(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint files or folders (.safetensors, index.json, .pt/.bin/.ckpt).")],
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    all_tensors: Annotated[bool, typer.Option("--all", help="Measure every tensor, not only layers.")] = False,
    target: Annotated[
        Optional[str],
        typer.Option("--target", help="Target scope MEAN,STD (e.g. 0,0.05) or a scope file; adds KL to it."),
    ] = None,
    fusion: Annotated[str, typer.Option("--fusion", help="How scopes are fused for comparison: moments, precision, stats-mean.")] = "moments",
    weights: Annotated[
        Optional[str],
        typer.Option("--weights", help="Comma-separated model weights for fusion (default equal)."),
    ] = None,
    histogram: Annotated[
        Optional[str],
        typer.Option("--histogram", metavar="LAYER", help="Show LAYER's weight histogram with its fitted Gaussian."),
    ] = None,
    bins: Annotated[int, typer.Option("--bins", min=2, max=1000, help="Histogram bins.")] = 30,
    clip: Annotated[float, typer.Option("--clip", min=0.0, max=49.0, metavar="PERCENT", help="Histogram bins cover the PERCENT-th to (100-PERCENT)-th percentile; values outside are counted (0: min..max).")] = 0.1,
    sort: Annotated[
        Optional[str],
        typer.Option("--sort", help="Sort rows by this column (numbers descending). Default: file order for one "
                     "checkpoint, max_kl for several."),
    ] = None,
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="Show only the first N rows after sorting.")] = None,
    key: KeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    fail_above: FailAboveOpt = None,
    wide: WideOpt = False,
    columns: ColumnsOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Show each layer's weight scope (mean, std, shape of the distribution) and compare checkpoints.

    One checkpoint: the scope table and a model summary. Several: scopes side by side, ranked by
    how much they disagree (KL to the fused scope, std ratio, mean shift), and any keys or shapes
    that do not line up. --fail-above METRIC=VALUE exits 1 when a metric exceeds VALUE; metrics:
    nonfinite, constant_layers, kl_to_target (one or more checkpoints); kl_to_fused, std_ratio,
    mean_shift, mismatches (several).
    """
    from wsa_cli.inputs import check_input

    for path in checkpoints:  # a path that is missing (or a FIFO, a device) is refused before torch is imported
        check_input(path)
    from wsa_cli.device import resolve_device
    from wsa_cli.fusion import parse_target, parse_weights
    from wsa_cli.inspection.inspect import InspectOptions, gate_metrics, inspect_histograms, inspect_models
    from wsa_cli.scope.selection import LayerSelector

    out_fmt = resolve_format(fmt, as_json)
    gates = parse_gates(fail_above, gate_metrics(len(checkpoints)))
    if target is None and any(g.metric == "kl_to_target" for g in gates):
        raise UsageError("--fail-above kl_to_target=... needs --target")
    with flags({"sort": "--sort", "histogram": "--histogram"}):
        dev = resolve_device(device)
        opts = InspectOptions(
            selector=LayerSelector(include=tuple(include or ()), exclude=tuple(exclude or ())), all_tensors=all_tensors,
            target=parse_target(target) if target else None, fusion=fusion,
            weights=parse_weights(weights, len(checkpoints)) if weights is not None else None, sort=sort, top=top,
            container_key=key, strip_prefix=strip_prefix,
        )  # fmt: skip
        if histogram is not None:
            result = inspect_histograms(checkpoints, histogram, bins=bins, clip_percent=clip, device=dev, container_key=key,
                                        strip_prefix=strip_prefix)  # fmt: skip
            return finish(result, out_fmt, quiet=quiet)
        with progress(None, "inspect", quiet=quiet) as advance:
            result = inspect_models(checkpoints, opts, device=dev, progress=advance, threads=threads)
    finish(result, out_fmt, gates, quiet=quiet, wide=wide, columns=columns.split(",") if columns else None)
