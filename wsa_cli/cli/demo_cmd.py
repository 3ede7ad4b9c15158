"""``wsa demo``: train, inspect, merge and interpolate small digits models; explain the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import DeviceOpt, ForceOpt, FormatOpt, JsonOpt, OutputFormat, QuietOpt, finish, flags, note, resolve_format
from wsa_cli.errors import UsageError


def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder that receives everything the demo writes.")] = Path("wsa-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Same steps with fewer epochs, a narrower model and fewer alphas.")] = False,
    task: Annotated[str, typer.Option("--task", help="digits-mlp (seconds) or mnist1d-mlp (a task where SGD and Adam from one init have a barrier).")] = "digits-mlp",
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs per model (default: the task's, 20 digits / 60 MNIST-1D; quick 4).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", min=2, help="Hidden width (default: the task's, 64 / 128; quick 32).")] = None,
    wsa_coef: Annotated[Optional[float], typer.Option("--wsa-coef", min=0.0, help="Regularizer coefficient of the WSA-trained models (default 0.1 digits, 0.01 MNIST-1D).")] = None,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the Weight Scope Alignment story end to end in a few minutes on a CPU.

    Trains five small digits MLPs (SGD vs Adam from one initialisation, another seed, and the
    SGD/Adam pair with the WSA regularizer), compares their layer scopes (wsa inspect), merges
    pairs with recipes built from recipes/ (wsa merge), measures the interpolation barrier with and
    without alignment (wsa interpolate), and says what the numbers mean. Everything goes into
    --out (default ./wsa-demo), which must be new or empty unless --force. Prints the report
    (report.md); --json prints summary.json instead. Progress goes to stderr.
    """
    from wsa_cli.demo import DemoConfig, run_demo, total_steps
    from wsa_cli.demo.runner import check_out_dir
    from wsa_cli.device import resolve_device

    out_fmt = resolve_format(fmt, as_json) if (fmt is not None or as_json) else OutputFormat.table
    if out_fmt is OutputFormat.csv:
        raise UsageError("wsa demo prints a report (table) or JSON; csv is not available")
    steps, count = total_steps(), {"n": 0}

    def advance(n: int, label: str) -> None:
        count["n"] += n
        note(f"[{count['n']}/{steps}] {label}", quiet=quiet)

    with flags({"alphas": "--alphas", "task": "--task"}):
        resolve_device(device)  # refuse before announcing the run or creating the folder:
        check_out_dir(out, force)  # an error stays the only stderr line and leaves nothing behind
        cfg = DemoConfig(out_dir=out, quick=quick, task=task, epochs=epochs, width=width, wsa_coef=wsa_coef, device=device, force=force)
        cfg.resolved()  # a bad --task fails here, before anything is announced or written
        note(f"wsa demo: writing into {out}/ ({'quick' if quick else 'full'} run)", quiet=quiet)
        result = run_demo(cfg, progress=advance)
    result.notes.append(f"wrote {len(result.files)} files into {out}/ (report: {out / 'report.md'})")
    finish(result, out_fmt, quiet=quiet)
