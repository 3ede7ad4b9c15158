"""Train a task model and write it as a checkpoint that every other wsa command reads.

Output: ``OUT.safetensors`` (tensors in the model's ``state_dict`` order, with ``wsa.*`` metadata
naming the task, width, seed and optimizer) plus ``OUT.metrics.json`` next to it; or, when ``OUT``
is a folder path, ``OUT/model.safetensors`` and ``OUT/metrics.json``. Both are written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import InvalidValueError
from wsa_cli.io.writer import check_output
from wsa_cli.jsontext import to_json
from wsa_cli.progress import ProgressFn, announce_total
from wsa_cli.regularize.targets import TargetLike
from wsa_cli.results import Result, Table, View
from wsa_cli.tasks.registry import get_task
from wsa_cli.tasks.splits import label_histogram, make_split
from wsa_cli.tasks.train import train_model


@dataclass
class TrainConfig:
    """Everything ``wsa train`` can set; ``None`` means the task's default."""

    task: str
    seed: int = 0
    optimizer: str = "sgd"
    epochs: int | None = None
    width: int | None = None
    lr: float | None = None
    batch_size: int = 64
    wsa_coef: float = 0.0
    wsa_target: TargetLike | None = None  # None = "init"
    wsa_reduction: str = "sum"
    wsa_direction: str = "forward"
    split: str = "iid"  # how the training data is divided among clients
    dirichlet_alpha: float = 0.5
    clients: int = 1
    client_index: int = 0
    split_seed: int = 0  # fixes the shards, independent of the training seed
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def metrics_path(out: str | Path) -> Path:
    """Where the metrics JSON goes for a given checkpoint output path.

    Example:
        >>> metrics_path("runs/a.safetensors")
        PosixPath('runs/a.metrics.json')
    """
    out = Path(out)
    if out.suffix == ".safetensors":
        return out.with_name(out.stem + ".metrics.json")
    return out / "metrics.json"


def client_indices(cfg: TrainConfig) -> torch.Tensor | None:
    """The training indices of client ``client_index`` (None = all data when there is one client)."""
    if cfg.clients < 1:
        raise InvalidValueError(f"must be >= 1, got {cfg.clients}", option="clients")
    if not 0 <= cfg.client_index < cfg.clients:
        raise InvalidValueError(f"must be in 0..{cfg.clients - 1}, got {cfg.client_index}", option="client_index")
    if cfg.clients == 1:
        return None
    labels = get_task(cfg.task).load_data(0).y_train
    return make_split(labels, cfg.clients, cfg.split, cfg.dirichlet_alpha, cfg.split_seed)[cfg.client_index]


#: The metrics ``wsa train`` shows in its table and CSV.
SUMMARY = ("task", "seed", "optimizer", "epochs", "width", "lr", "wsa_coef", "wsa_target", "n_train",
           "train_accuracy", "test_accuracy", "test_loss", "seconds")  # fmt: skip


@dataclass
class TrainResult(Result):
    """A trained checkpoint and its metrics (also written next to it)."""

    command = "train"

    checkpoint: Path
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), **self.metrics}

    def rows(self) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        return SUMMARY, [self.metrics]

    def render(self) -> list[View]:
        return [Table(f"wsa train {self.metrics.get('task')}", ["metric", "value"], [(k, self.metrics.get(k)) for k in SUMMARY])]


def train_checkpoint(cfg: TrainConfig, out: str | Path, *, force: bool = False, progress: ProgressFn | None = None) -> TrainResult:
    """Train per ``cfg`` and write the checkpoint and its metrics (the library call behind ``wsa train``).

    Example:
        >>> train_checkpoint(TrainConfig("digits-mlp", epochs=2), "a.safetensors").metrics["test_accuracy"]  # doctest: +SKIP
    """
    spec = get_task(cfg.task)
    announce_total(progress, max(spec.default_epochs if cfg.epochs is None else cfg.epochs, 1))
    path, metrics = train_to_file(cfg, out, force=force, progress=progress)
    return TrainResult(path, metrics, notes=[f"wrote {path} (test accuracy {metrics['test_accuracy']:.3f})"])


def train_to_file(
    cfg: TrainConfig,
    out: str | Path,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train per ``cfg`` and write the checkpoint and its metrics; return ``(checkpoint path, metrics)``.

    Example:
        >>> train_to_file(TrainConfig("digits-mlp", epochs=2), "a.safetensors")  # doctest: +SKIP
    """
    get_task(cfg.task)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # like `wsa merge`: create the output's folder
    inputs = [cfg.wsa_target] if isinstance(cfg.wsa_target, (str, Path)) and cfg.wsa_target != "init" else []
    check_output(out, inputs, force=force)
    mpath = metrics_path(out)
    if out.suffix == ".safetensors":
        check_output(mpath, inputs, force=force)
    idx = client_indices(cfg)
    state, metrics = train_model(
        cfg.task, seed=cfg.seed, optimizer=cfg.optimizer, epochs=cfg.epochs, width=cfg.width, lr=cfg.lr,
        wsa_coef=cfg.wsa_coef, wsa_target=cfg.wsa_target, train_indices=idx, device=cfg.device,
        progress=progress, batch_size=cfg.batch_size, wsa_reduction=cfg.wsa_reduction,
        wsa_direction=cfg.wsa_direction,
    )  # fmt: skip
    metrics["split"] = {
        "kind": cfg.split if cfg.clients > 1 else "all",
        "clients": cfg.clients,
        "client_index": cfg.client_index,
        "dirichlet_alpha": cfg.dirichlet_alpha if cfg.split == "dirichlet" and cfg.clients > 1 else None,
        "split_seed": cfg.split_seed,
    }
    if idx is not None:
        labels = get_task(cfg.task).load_data(0).y_train
        metrics["split"]["label_counts"] = label_histogram(labels, [idx])[0].tolist()
    metrics.update(cfg.extra)
    meta = {
        "format": "pt",
        "wsa.task": cfg.task,
        "wsa.width": str(metrics["width"]),
        "wsa.seed": str(cfg.seed),
        "wsa.optimizer": cfg.optimizer,
        "wsa.epochs": str(metrics["epochs"]),
        "wsa.wsa_coef": repr(float(cfg.wsa_coef)),
        "wsa.test_accuracy": f"{metrics['test_accuracy']:.6f}",
    }
    write_trained(out, state, metrics, meta, force=force)
    return (out if out.suffix == ".safetensors" else out / "model.safetensors"), metrics


def write_trained(out: Path, state: dict[str, torch.Tensor], metrics: dict[str, Any], meta: dict[str, str], *, force: bool = False) -> None:
    """Write a trained state dict with its ``wsa.*`` metadata and its metrics JSON, atomically together."""
    from wsa_cli.io.base import TensorInfo
    from wsa_cli.io.writer import SafetensorsWriter

    infos = [TensorInfo(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    with SafetensorsWriter(out, infos, metadata=meta, force=force) as writer:
        for k, v in state.items():
            writer.write(k, v)
        writer.add_text(metrics_path(out).name, to_json(metrics))  # committed together with the model




@dataclass
class JointTrainConfig:
    """``wsa train --seeds``: K models trained together; lists are per member (one value = all members)."""

    task: str
    seeds: list[int]
    optimizers: list[str] = field(default_factory=lambda: ["sgd"])
    lrs: list[float | None] = field(default_factory=lambda: [None])
    epochs: int | None = None
    width: int | None = None
    batch_size: int = 64
    wsa_coef: float = 0.0
    wsa_target: TargetLike | None = "fused"
    refuse_every: int = 10
    shared_init: int | None = None  # seed of one initialisation all members start from; None = each its own seed
    device: str = "cpu"


def _per_member(values: list[Any], k: int, option: str) -> list[Any]:
    if len(values) == 1:
        return values * k
    if len(values) != k:
        raise InvalidValueError(f"give one value or one per seed ({k}), got {len(values)}", option=option)
    return list(values)


@dataclass
class JointTrainResult(Result):
    """K checkpoints trained together, one row each."""

    command = "train"

    checkpoints: list[Path]
    metrics: list[dict[str, Any]]
    refusions: int

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoints": [str(p) for p in self.checkpoints], "refusions": self.refusions, "members": self.metrics}

    def rows(self) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        return ("checkpoint", *SUMMARY), [{"checkpoint": str(p), **m} for p, m in zip(self.checkpoints, self.metrics, strict=True)]

    def render(self) -> list[View]:
        cols = ["checkpoint", "seed", "optimizer", "lr", "wsa_target", "test_accuracy", "test_loss"]
        rows = [(p.name, *(m.get(c) for c in cols[1:])) for p, m in zip(self.checkpoints, self.metrics, strict=True)]
        return [Table(f"wsa train {self.metrics[0]['task']} (x{len(self.metrics)}, target re-fused {self.refusions} times)", cols, rows)]


def train_joint_checkpoints(cfg: JointTrainConfig, out: str | Path, *, force: bool = False, progress: ProgressFn | None = None) -> JointTrainResult:
    """Train ``cfg.seeds`` models together (:func:`wsa_cli.tasks.joint.train_joint`); write ``OUT/model-<i>.safetensors``.

    Example:
        >>> train_joint_checkpoints(JointTrainConfig("digits-mlp", [0, 1], ["sgd", "adam"], epochs=1), "pair")  # doctest: +SKIP
    """
    from wsa_cli.tasks.joint import Member, train_joint

    spec = get_task(cfg.task)
    k = len(cfg.seeds)
    if k < 1:
        raise InvalidValueError("give at least one seed", option="seeds")
    opts = _per_member(cfg.optimizers, k, "optimizers")
    lrs = _per_member(cfg.lrs, k, "lrs")
    out = Path(out)
    if out.suffix == ".safetensors":
        raise InvalidValueError("with several seeds OUT is a folder (it gets model-0.safetensors, model-1.safetensors, ...)", option="out")
    paths = [out / f"model-{i}.safetensors" for i in range(k)]
    inputs = [cfg.wsa_target] if isinstance(cfg.wsa_target, (str, Path)) and cfg.wsa_target not in ("init", "fused") else []
    for p in paths:
        check_output(p, inputs, force=force)
        check_output(metrics_path(p), inputs, force=force)
    announce_total(progress, max(spec.default_epochs if cfg.epochs is None else cfg.epochs, 1))
    init = None if cfg.shared_init is None else spec.build_model(cfg.width, seed=cfg.shared_init).state_dict()
    run = train_joint(
        cfg.task, [Member(s, o, lr) for s, o, lr in zip(cfg.seeds, opts, lrs, strict=True)], epochs=cfg.epochs, width=cfg.width,
        wsa_coef=cfg.wsa_coef, target=cfg.wsa_target, refuse_every=cfg.refuse_every, init_state=init, batch_size=cfg.batch_size,
        device=cfg.device, progress=progress,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for i, (p, state, m) in enumerate(zip(paths, run.states, run.metrics, strict=True)):
        m.update({"member": i, "shared_init": cfg.shared_init, "refusions": run.refusions})
        meta = {
            "format": "pt", "wsa.task": cfg.task, "wsa.width": str(m["width"]), "wsa.seed": str(m["seed"]),
            "wsa.optimizer": m["optimizer"], "wsa.epochs": str(m["epochs"]), "wsa.wsa_coef": repr(float(cfg.wsa_coef)),
            "wsa.test_accuracy": f"{m['test_accuracy']:.6f}",
        }  # fmt: skip
        write_trained(p, state, m, meta, force=force)
    accs = ", ".join(f"{m['test_accuracy']:.3f}" for m in run.metrics)
    return JointTrainResult(paths, run.metrics, run.refusions, notes=[f"wrote {k} checkpoints under {out} (test accuracy {accs})"])
