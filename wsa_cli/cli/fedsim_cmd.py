"""``wsa fedsim``: simulate federated rounds (FedAvg, optionally + WSA) and report accuracy per round."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import DeviceOpt, ForceOpt, FormatOpt, JsonOpt, QuietOpt, finish, flags, progress, resolve_format

FLAGS = {"wsa_coef": "--wsa-coef", "out_dir": "--out-dir", "rounds": "--rounds", "local_epochs": "--local-epochs",
         "clients": "--clients", "split": "--split", "dirichlet_alpha": "--dirichlet-alpha", "task": "TASK",
         "optimizer": "--optimizer", "width": "--width", "lr": "--lr", "wsa_reduction": "--wsa-reduction",
         "wsa_direction": "--wsa-direction", "local_steps": "--local-steps", "participation": "--participation",
         "target": "--target", "engine": "--engine"}  # fmt: skip


def command(
    task: Annotated[str, typer.Argument(help="Built-in task: digits-mlp or digits-cnn.")] = "digits-mlp",
    clients: Annotated[int, typer.Option("--clients", min=1, help="Number of clients.")] = 5,
    participation: Annotated[
        float, typer.Option("--participation", help="Fraction of clients sampled each round (at least one; 1 = all).")
    ] = 1.0,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Communication rounds.")] = 10,
    local_epochs: Annotated[int, typer.Option("--local-epochs", min=1, help="Local epochs per round.")] = 1,
    local_steps: Annotated[
        Optional[int], typer.Option("--local-steps", min=1, help="Exact local mini-batch steps per round (instead of --local-epochs).")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="iid or dirichlet (label-skewed shards).")] = "dirichlet",
    dirichlet_alpha: Annotated[float, typer.Option("--dirichlet-alpha", help="Label skew; smaller = more skewed.")] = 0.3,
    wsa_coef: Annotated[
        Optional[list[float]],
        typer.Option("--wsa-coef", help="WSA coefficient; repeat to compare runs (0 = plain FedAvg). Default: 0."),
    ] = None,
    wsa_reduction: Annotated[str, typer.Option("--wsa-reduction", help="sum or mean over layers.")] = "sum",
    wsa_direction: Annotated[str, typer.Option("--wsa-direction", help="forward = KL(layer||target), reverse.")] = "forward",
    target: Annotated[
        str, typer.Option("--target", help="Regularizer target: fused (server's, each round), or fixed: init, MEAN,STD, a scope file.")
    ] = "fused",
    fusion: Annotated[str, typer.Option("--fusion", help="Server scope fusion: moments, precision, stats-mean.")] = "moments",
    align: Annotated[bool, typer.Option("--align/--no-align", help="Rescale clients onto the fused scope before averaging.")] = False,
    optimizer: Annotated[str, typer.Option("--optimizer", help="Local optimizer: sgd or adam.")] = "sgd",
    lr: Annotated[Optional[float], typer.Option("--lr", help="Local learning rate (task default).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", min=1, help="Model width (task default).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Local mini-batch size.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial model, the batch order and the split.")] = 0,
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out-dir", help="Also write each run's final global model and fused scope file here."),
    ] = None,
    engine: Annotated[
        str, typer.Option("--engine", help="builtin (in-process) or flower (Flower's Ray simulation engine; needs wsa[flower]).")
    ] = "builtin",
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Simulate federated learning on non-IID shards: FedAvg, and FedAvg + WSA scope regularization.

    Every round each client trains locally from the global model (with the KL pull towards the
    server's fused scopes when --wsa-coef > 0); the server averages the models with data-size
    weights and fuses the client scopes into the next round's target. Prints global test accuracy
    per round; repeat --wsa-coef (e.g. --wsa-coef 0 --wsa-coef 0.1) to compare runs side by side.
    """
    from wsa_cli.device import resolve_device
    from wsa_cli.fed import FedConfig, run_comparison

    out_fmt = resolve_format(fmt, as_json)
    with flags(FLAGS):
        base = FedConfig(
            task=task, clients=clients, rounds=rounds, local_epochs=local_epochs, local_steps=local_steps,
            participation=participation, target=target, split=split,
            dirichlet_alpha=dirichlet_alpha, wsa_reduction=wsa_reduction, wsa_direction=wsa_direction,
            fusion=fusion, align_before_average=align, optimizer=optimizer, lr=lr, width=width,
            batch_size=batch_size, seed=seed, device=str(resolve_device(device)),
        )  # fmt: skip
        with progress(None, f"fedsim {task}", quiet=quiet) as advance:
            result = run_comparison(base, wsa_coef or [0.0], out_dir=out_dir, force=force, progress=advance, engine=engine)
    finish(result, out_fmt, quiet=quiet)
