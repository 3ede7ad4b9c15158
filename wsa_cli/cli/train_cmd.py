"""``wsa train``: train a built-in task model (optionally with the WSA regularizer) into a checkpoint."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import DeviceOpt, ForceOpt, FormatOpt, JsonOpt, QuietOpt, finish, flags, progress, resolve_format

FLAGS = {
    "task": "TASK", "optimizer": "--optimizer", "epochs": "--epochs", "width": "--width", "lr": "--lr", "wsa_coef": "--wsa-coef",
    "target": "--wsa-target", "wsa_reduction": "--wsa-reduction", "wsa_direction": "--wsa-direction", "split": "--split",
    "dirichlet_alpha": "--dirichlet-alpha", "clients": "--clients", "client_index": "--client-index",
    "seeds": "--seeds", "optimizers": "--optimizers", "lrs": "--lrs", "refuse_every": "--refuse-every", "out": "--out",
}  # fmt: skip


def _ints(text: str, option: str) -> list[int]:
    from wsa_cli.errors import InvalidValueError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidValueError("expected comma-separated integers", option=option, value=text) from None


def _lrs(text: str | None) -> list[float | None]:
    from wsa_cli.errors import InvalidValueError

    if text is None:
        return [None]
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidValueError("expected comma-separated numbers", option="lrs", value=text) from None


def command(
    task: Annotated[str, typer.Argument(help="Built-in task: digits-mlp, digits-cnn, mnist1d-mlp or mnist1d-cnn.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output checkpoint (.safetensors file, or a folder).")],
    seed: Annotated[int, typer.Option("--seed", help="Initialisation and batch-order seed.")] = 0,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd (momentum 0.9) or adam.")] = "sgd",
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=0, help="Epochs (default: 20 MLP, 10 CNN).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", min=1, help="MLP hidden size / CNN first-layer channels (default 64 / 16).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default 0.05 for sgd, 0.003 for adam).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Mini-batch size.")] = 64,
    wsa_coef: Annotated[float, typer.Option("--wsa-coef", min=0.0, help="WSA regularizer coefficient (0 = off).")] = 0.0,
    wsa_target: Annotated[
        str,
        typer.Option("--wsa-target", help="Regularizer target: init (scopes of the seed-0 initialisation), MEAN,STD, "
                     "a scope file from `wsa scope fuse`, or a checkpoint."),
    ] = "init",
    wsa_reduction: Annotated[str, typer.Option("--wsa-reduction", help="Combine per-layer KL by sum or mean.")] = "sum",
    wsa_direction: Annotated[str, typer.Option("--wsa-direction", help="forward = KL(layer||target), reverse = KL(target||layer).")] = "forward",
    split: Annotated[str, typer.Option("--split", help="How training data is divided among --clients: iid or dirichlet.")] = "iid",
    dirichlet_alpha: Annotated[float, typer.Option("--dirichlet-alpha", help="Label skew of --split dirichlet (smaller = more skewed).")] = 0.5,
    clients: Annotated[int, typer.Option("--clients", min=1, help="Number of shards the training data is split into.")] = 1,
    client_index: Annotated[int, typer.Option("--client-index", min=0, help="Which shard to train on.")] = 0,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the data split (independent of --seed).")] = 0,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Train K models together, one per seed (e.g. 0,1): OUT is a folder "
                     "of model-<i>.safetensors; --wsa-target fused re-fuses their live scopes every --refuse-every steps.")] = None,
    optimizers: Annotated[Optional[str], typer.Option("--optimizers", help="With --seeds: one optimizer, or one per seed (sgd,adam).")] = None,
    lrs: Annotated[Optional[str], typer.Option("--lrs", help="With --seeds: one learning rate, or one per seed.")] = None,
    refuse_every: Annotated[int, typer.Option("--refuse-every", min=1, help="With --seeds and --wsa-target fused: steps between re-fusions.")] = 10,
    shared_init: Annotated[Optional[int], typer.Option("--shared-init", help="With --seeds: start every model from the initialisation of this seed.")] = None,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a small built-in classifier (digits or MNIST-1D) offline and write it as a safetensors checkpoint.

    Writes OUT and its metrics (OUT with .metrics.json, or metrics.json in a folder output);
    prints a summary (table on a terminal, JSON when piped). The checkpoint carries wsa.* metadata
    (task, width, seed) and works with every other command, e.g. `wsa interpolate --eval digits-mlp`.
    """
    from wsa_cli.device import resolve_device
    from wsa_cli.fusion import parse_target
    from wsa_cli.tasks.checkpoint import JointTrainConfig, TrainConfig, train_checkpoint, train_joint_checkpoints

    out_fmt = resolve_format(fmt, as_json)
    if seeds is not None:
        with flags(FLAGS):
            target = parse_target(wsa_target, accept=("init", "fused", "fixed", "file", "checkpoint")) if wsa_coef > 0 else None
            jcfg = JointTrainConfig(
                task=task, seeds=_ints(seeds, "seeds"), optimizers=(optimizers or optimizer).split(","), lrs=_lrs(lrs) if lrs else [lr],
                epochs=epochs, width=width, batch_size=batch_size, wsa_coef=wsa_coef, wsa_target=target, refuse_every=refuse_every,
                shared_init=shared_init, device=str(resolve_device(device)),
            )  # fmt: skip
            with progress(None, f"train {task} x{len(jcfg.seeds)}", quiet=quiet) as advance:
                joint = train_joint_checkpoints(jcfg, out, force=force, progress=advance)
        finish(joint, out_fmt, quiet=quiet)
        return
    with flags(FLAGS):
        target = parse_target(wsa_target, accept=("init", "fixed", "file", "checkpoint")) if wsa_coef > 0 else None
        cfg = TrainConfig(
            task=task, seed=seed, optimizer=optimizer, epochs=epochs, width=width, lr=lr, batch_size=batch_size,
            wsa_coef=wsa_coef, wsa_target=target, wsa_reduction=wsa_reduction, wsa_direction=wsa_direction,
            split=split, dirichlet_alpha=dirichlet_alpha, clients=clients, client_index=client_index,
            split_seed=split_seed, device=str(resolve_device(device)),
        )  # fmt: skip
        with progress(None, f"train {task}", quiet=quiet) as advance:
            result = train_checkpoint(cfg, out, force=force, progress=advance)
    finish(result, out_fmt, quiet=quiet)
