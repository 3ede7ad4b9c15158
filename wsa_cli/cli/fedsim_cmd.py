"""``wsa fedsim``: simulate federated rounds (FedAvg, optionally + WSA) and report accuracy per round."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import (
    DeviceOpt,
    ForceOpt,
    FormatOpt,
    JsonOpt,
    OutputFormat,
    QuietOpt,
    note,
    print_table,
    progress,
    resolve_format,
    to_csv,
    to_json,
    write_stdout,
)
from wsa_cli.errors import UsageError

CSV_COLUMNS = ("wsa_coef", "round", "test_accuracy", "test_loss", "client_scope_kl", "global_scope_kl",
               "mean_client_accuracy", "seconds")  # fmt: skip


def command(
    task: Annotated[str, typer.Argument(help="Built-in task: digits-mlp or digits-cnn.")] = "digits-mlp",
    clients: Annotated[int, typer.Option("--clients", min=1, help="Number of clients (all take part every round).")] = 5,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Communication rounds.")] = 10,
    local_epochs: Annotated[int, typer.Option("--local-epochs", min=1, help="Local epochs per round.")] = 1,
    split: Annotated[str, typer.Option("--split", help="iid or dirichlet (label-skewed shards).")] = "dirichlet",
    dirichlet_alpha: Annotated[float, typer.Option("--dirichlet-alpha", help="Label skew; smaller = more skewed.")] = 0.3,
    wsa_coef: Annotated[
        Optional[list[float]],  # noqa: UP007
        typer.Option("--wsa-coef", help="WSA coefficient; repeat to compare runs (0 = plain FedAvg). Default: 0."),
    ] = None,
    wsa_reduction: Annotated[str, typer.Option("--wsa-reduction", help="sum or mean over layers.")] = "sum",
    wsa_direction: Annotated[str, typer.Option("--wsa-direction", help="forward = KL(layer||target), reverse.")] = "forward",
    fusion: Annotated[str, typer.Option("--fusion", help="Server scope fusion: moments, precision, stats-mean.")] = "moments",
    align: Annotated[bool, typer.Option("--align/--no-align", help="Rescale clients onto the fused scope before averaging.")] = False,
    optimizer: Annotated[str, typer.Option("--optimizer", help="Local optimizer: sgd or adam.")] = "sgd",
    lr: Annotated[Optional[float], typer.Option("--lr", help="Local learning rate (task default).")] = None,  # noqa: UP007
    width: Annotated[Optional[int], typer.Option("--width", min=1, help="Model width (task default).")] = None,  # noqa: UP007
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Local mini-batch size.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial model, the batch order and the split.")] = 0,
    out_dir: Annotated[
        Optional[Path],  # noqa: UP007
        typer.Option("--out-dir", help="Also write each run's final global model and fused scope file here."),
    ] = None,
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
    from dataclasses import replace

    from wsa_cli.device import resolve_device
    from wsa_cli.fed import FedConfig, run_fedsim
    from wsa_cli.io.writer import atomic_write_text, check_output, save_safetensors

    out_fmt = resolve_format(fmt, as_json)
    coefs = list(wsa_coef) if wsa_coef else [0.0]
    if len(set(coefs)) != len(coefs):
        raise UsageError(f"--wsa-coef values repeat: {coefs}")
    dev = resolve_device(device)
    base = FedConfig(
        task=task, clients=clients, rounds=rounds, local_epochs=local_epochs, split=split,
        dirichlet_alpha=dirichlet_alpha, wsa_reduction=wsa_reduction, wsa_direction=wsa_direction,
        fusion=fusion, align_before_average=align, optimizer=optimizer, lr=lr, width=width,
        batch_size=batch_size, seed=seed, device=str(dev),
    )  # fmt: skip
    outputs: list[tuple[Path, Path]] = []
    if out_dir is not None:
        if not out_dir.is_dir():
            raise UsageError(f"--out-dir {out_dir}: not an existing folder")
        for c in coefs:
            pair = (out_dir / f"global-wsa{c:g}.safetensors", out_dir / f"scopes-wsa{c:g}.json")
            for p in pair:
                check_output(p, force=force)
            outputs.append(pair)
    results = []
    with progress(len(coefs) * rounds * clients, f"fedsim {task}", quiet=quiet) as advance:
        for c in coefs:
            results.append(run_fedsim(replace(base, wsa_coef=c), progress=advance))
    for res, (ckpt, scopes) in zip(results, outputs):
        save_safetensors(res.final_state, ckpt, metadata={"wsa.task": task, "wsa.fedsim_wsa_coef": f"{res.config.wsa_coef:g}"}, force=force)
        atomic_write_text(scopes, res.final_scopes.to_json())
        note(f"wrote {ckpt} and {scopes}", quiet=quiet)
    first = results[0]
    note(f"client sizes {first.client_sizes}; split {split}" + (f" alpha={dirichlet_alpha:g}" if split == "dirichlet" else ""), quiet=quiet)

    if out_fmt is OutputFormat.json:
        write_stdout(to_json({"runs": [r.to_dict() for r in results]}))
    elif out_fmt is OutputFormat.csv:
        rows = [{"wsa_coef": r.config.wsa_coef, **rr.to_dict()} for r in results for rr in r.rounds]
        write_stdout(to_csv(rows, CSV_COLUMNS))
    else:
        cols = ["round"] + [("FedAvg" if r.config.wsa_coef == 0 else f"+WSA {r.config.wsa_coef:g}") + " acc" for r in results]
        rows = [[0] + [r.initial_accuracy for r in results]]
        rows += [[i + 1] + [r.rounds[i].test_accuracy for r in results] for i in range(rounds)]
        print_table(
            f"wsa fedsim {task}: {clients} clients, {split}", cols, rows,
            caption="global test accuracy after each round (round 0 = initial model)",
        )  # fmt: skip
