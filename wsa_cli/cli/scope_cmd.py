"""``wsa scope fuse``: write the unified per-layer scope of several checkpoints to a scope file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import (
    DeviceOpt,
    ExcludeOpt,
    ForceOpt,
    FormatOpt,
    IncludeOpt,
    JsonOpt,
    OutputFormat,
    QuietOpt,
    note,
    parse_weights,
    print_table,
    progress,
    resolve_format,
    to_csv,
    to_json,
    write_stdout,
)
from wsa_cli.errors import UsageError

app = typer.Typer(help="Layer scopes: fuse several models' scopes into one scope file.", no_args_is_help=True)


@app.command("fuse")
def fuse(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint files or folders whose layer scopes are fused.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Scope file to write (JSON, format wsa-scopes v1).")],
    weights: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--weights", help="Comma-separated model weights, e.g. client data sizes (default equal)."),
    ] = None,
    fusion: Annotated[str, typer.Option("--fusion", help="moments (default), precision or stats-mean.")] = "moments",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fuse the per-layer scopes N(mean, std^2) of CHECKPOINTS into one unified scope per layer.

    The scope file is a training target (wsa train --wsa-target), an inspect --target, and a
    recipe scope.target. Reads one tensor at a time. See docs/scope.md.
    """
    from wsa_cli.device import resolve_device
    from wsa_cli.fusion.pipeline import ScopeOptions, fused_scope_table
    from wsa_cli.io import atomic_write_text, check_output, open_checkpoint
    from wsa_cli.scope.selection import LayerSelector

    out_fmt = resolve_format(fmt, as_json)
    dev = resolve_device(device)
    selector = LayerSelector(include=tuple(include or ()), exclude=tuple(exclude or ()))
    options = ScopeOptions(fusion=fusion, weights=parse_weights(weights, len(checkpoints)), selector=selector)
    if out.suffix != ".json":
        raise UsageError(f"--out {out}: a scope file ends in .json")
    readers = [open_checkpoint(p) for p in checkpoints]
    try:
        check_output(out, [f for r in readers for f in r.files()], force=force)
        total = sum(1 for k in readers[0].keys() if selector.selects(k, readers[0].info(k).shape, readers[0].info(k).dtype))
        with progress(total, "scope fuse", quiet=quiet) as advance:
            table = fused_scope_table(readers, options, dev, names=list(checkpoints), progress=advance)
    finally:
        for r in readers:
            r.close()
    if not table.layers:
        raise UsageError("no tensor is a layer (floating, ndim >= 2); use --include to select some", path=checkpoints[0])
    atomic_write_text(out, table.to_json())
    note(f"wrote {out} ({len(table.layers)} layers)", quiet=quiet)
    rows = [{"key": k, "mean": s.mean, "std": s.std, "numel": table.numel.get(k)} for k, s in table.layers.items()]
    if out_fmt is OutputFormat.json:
        write_stdout(to_json({"output": str(out), "fusion": table.fusion, "weights": table.weights, "sources": table.sources,
                              "layers": rows}))  # fmt: skip
    elif out_fmt is OutputFormat.csv:
        write_stdout(to_csv(rows, ("key", "mean", "std", "numel")))
    else:
        print_table(f"fused scopes ({table.fusion}) -> {out}", ("key", "mean", "std", "numel"), [[r["key"], r["mean"], r["std"], r["numel"]] for r in rows])
