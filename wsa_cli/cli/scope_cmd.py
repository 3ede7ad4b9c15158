"""``wsa scope fuse``: write the unified per-layer scope of several checkpoints to a scope file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import (
    DeviceOpt, ExcludeOpt, ForceOpt, FormatOpt, IncludeOpt, JsonOpt, KeyOpt, QuietOpt, StripPrefixOpt, finish, flags, progress,
    resolve_format,
)  # fmt: skip

app = typer.Typer(help="Layer scopes: fuse several models' scopes into one scope file.", no_args_is_help=True)


@app.command("fuse")
def fuse(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint files or folders whose layer scopes are fused.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Scope file to write (JSON, format wsa-scopes v1).")],
    weights: Annotated[
        Optional[str],
        typer.Option("--weights", help="Comma-separated model weights, e.g. client data sizes (default equal)."),
    ] = None,
    fusion: Annotated[str, typer.Option("--fusion", help="moments (default), precision or stats-mean.")] = "moments",
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    key: KeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
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
    from wsa_cli.fusion import parse_weights
    from wsa_cli.fusion.fuse_files import fuse_checkpoints
    from wsa_cli.fusion.pipeline import ScopeOptions
    from wsa_cli.scope.selection import LayerSelector

    out_fmt = resolve_format(fmt, as_json)
    with flags({"out": "--out"}):
        dev = resolve_device(device)
        selector = LayerSelector(include=tuple(include or ()), exclude=tuple(exclude or ()))
        w = parse_weights(weights, len(checkpoints)) if weights is not None else None
        options = ScopeOptions(fusion=fusion, weights=w, selector=selector)
        with progress(None, "scope fuse", quiet=quiet) as advance:
            result = fuse_checkpoints(checkpoints, out, options, device=dev, force=force, container_key=key,
                                      strip_prefix=strip_prefix, progress=advance)  # fmt: skip
    finish(result, out_fmt, quiet=quiet)
