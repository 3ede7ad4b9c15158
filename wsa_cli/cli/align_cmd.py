"""``wsa align``: permute models into a reference's unit order (Git Re-Basin weight matching)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import (
    DeviceOpt, ForceOpt, FormatOpt, JsonOpt, KeyOpt, QuietOpt, StripPrefixOpt, finish, flags, progress, resolve_format,
)  # fmt: skip

FLAGS = {"out": "-o", "perms_out": "--perms-out", "input_shape": "--input-shape", "model": "--model", "spec": "--spec"}


def command(
    checkpoints: Annotated[list[str], typer.Argument(help="REFERENCE then the models to align to it (A B [C ...]).")],
    spec: Annotated[str, typer.Option("--spec", "-s", help="Permutation spec YAML, or a built-in template (digits-mlp, digits-cnn, mlp, vgg, resnet).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Aligned checkpoint (one model) or a new folder (several models).")],
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="Model factory package.module:factory (or a task name) to verify the aligned models compute the same outputs."),
    ] = None,
    input_shape: Annotated[
        Optional[str],
        typer.Option("--input-shape", help="Input shape for --model without the batch axis, e.g. 3,32,32."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random group order in each sweep.")] = 0,
    max_sweeps: Annotated[int, typer.Option("--max-sweeps", min=1, help="Stop after this many sweeps even if still improving.")] = 100,
    perms_out: Annotated[
        Optional[str],
        typer.Option("--perms-out", help="Where to write the permutations JSON (default: OUT.perms.json, or OUT/perms.json for a folder)."),
    ] = None,
    perms: Annotated[
        Optional[str],
        typer.Option("--perms", help="Reuse permutations from an earlier run's JSON instead of matching."),
    ] = None,
    key: KeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    force: ForceOpt = False,
    device: DeviceOpt = "auto",
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Align models to the first one by permuting hidden units (weight matching, Ainsworth et al. 2023).

    Each model after the reference is permuted into the reference's unit order, group by group as
    the spec says; the objective (sum of inner products with the reference) is reported per sweep.
    The permutations are written to a JSON file so a run can be reused with --perms. With --model,
    each aligned model must compute what the original computed (max abs difference reported).
    """
    from wsa_cli.device import resolve_device
    from wsa_cli.errors import UsageError
    from wsa_cli.permute.align import AlignOptions, run_align
    from wsa_cli.permute.factory import parse_input_shape

    out_fmt = resolve_format(fmt, as_json)
    if len(checkpoints) < 2:
        raise UsageError("give a reference and at least one model to align: wsa align A B [C ...] --spec S -o OUT")
    with flags(FLAGS):
        opts = AlignOptions(
            reference=checkpoints[0], others=checkpoints[1:], spec=spec, out=out, seed=seed, max_sweeps=max_sweeps,
            device=resolve_device(device), perms_in=perms, perms_out=perms_out, model=model,
            input_shape=parse_input_shape(input_shape), force=force, container_key=key, strip_prefix=strip_prefix,
        )  # fmt: skip
        with progress(max_sweeps * (len(checkpoints) - 1), "align", quiet=quiet) as advance:
            report = run_align(opts, progress=advance)
    finish(report, out_fmt, quiet=quiet)
