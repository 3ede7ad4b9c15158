"""The training loop of the built-in tasks, with the optional WSA scope regularizer.

Mini-batch SGD (momentum 0.9) or Adam on cross-entropy, plus ``wsa_coef * sum_l KL(scope_l ||
target_l)`` when ``wsa_coef > 0``. Deterministic for a given seed on the CPU: the seed fixes the
initialisation and the order of the batches.

Default target (``wsa_target=None`` or ``"init"``): the layer scopes of the task's model freshly
initialised with seed 0 at the same width. That scope does not depend on the training seed, so
independently trained models are all pulled towards the same scope (our choice; the paper's
federated setting uses the server's fused scope instead, which :mod:`wsa_cli.fed` passes in).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from wsa_cli.device import resolve_device
from wsa_cli.errors import InvalidValueError
from wsa_cli.scope.gaussian import Scope
from wsa_cli.regularize import KL_DIRECTIONS, REDUCTIONS, ScopeRegularizer
from wsa_cli.regularize.targets import TargetLike
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.tasks.data import DataSplit
from wsa_cli.tasks.evaluate import evaluate_model
from wsa_cli.tasks.registry import get_task
from wsa_cli.threads import small_model_threads
from wsa_cli.progress import ProgressFn

OPTIMIZERS = ("sgd", "adam")
DEFAULT_BATCH = 64
SGD_MOMENTUM = 0.9


def _target_for(task_name: str, width: int, target: TargetLike | None) -> TargetLike:
    """``None``/``"init"``: the task model's state at its seed-0 initialisation (its layer scopes are the targets)."""
    if target is None or (isinstance(target, str) and target == "init"):
        return get_task(task_name).build_model(width, seed=0).state_dict()
    return target


def describe_target(target: object) -> str:
    """A short JSON-safe description of a target for metrics files."""
    if target is None or target == "init":
        return "init"
    if isinstance(target, Scope):
        return f"{target.mean:g},{target.std:g}"
    if isinstance(target, (str,)) or hasattr(target, "__fspath__"):
        return str(target)
    return type(target).__name__


def train_model(
    task_name: str,
    *,
    seed: int = 0,
    optimizer: str = "sgd",
    epochs: int | None = None,
    width: int | None = None,
    lr: float | None = None,
    wsa_coef: float = 0.0,
    wsa_target: TargetLike | None = None,
    train_indices: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    batch_size: int = DEFAULT_BATCH,
    weight_decay: float = 0.0,
    init_state: Mapping[str, torch.Tensor] | None = None,
    wsa_reduction: str = "sum",
    wsa_direction: str = "forward",
    selector: LayerSelector | None = None,
    data: DataSplit | None = None,
    evaluate_each_epoch: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train a task model; return its CPU state dict and a metrics dict.

    ``train_indices`` restricts training to a subset (a client's shard); ``init_state`` starts from
    given weights (a federated round) instead of a fresh seeded initialisation; ``progress`` is
    called as ``progress(1, label)`` after each epoch.

    Example:
        >>> sd, m = train_model("digits-mlp", seed=0, epochs=5, width=16)
        >>> m["test_accuracy"] > 0.5
        True
    """
    spec = get_task(task_name)
    if optimizer not in OPTIMIZERS:
        raise InvalidValueError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}", option="optimizer")
    epochs = spec.default_epochs if epochs is None else int(epochs)
    if epochs < 0:
        raise InvalidValueError(f"must be >= 0, got {epochs}", option="epochs")
    if batch_size < 1:
        raise InvalidValueError(f"batch size must be >= 1, got {batch_size}")
    lr = spec.default_lr[optimizer] if lr is None else float(lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise InvalidValueError(f"must be > 0, got {lr}", option="lr")
    dev = resolve_device(device)
    sel = selector or LayerSelector()
    data = data or spec.load_data(0)

    if init_state is not None:
        width = spec.width_of(init_state)
        model = spec.build_model(width, seed=seed)
        from wsa_cli.tasks.evaluate import model_from_state_dict

        model.load_state_dict(model_from_state_dict(task_name, init_state).state_dict())
    else:
        width = spec.default_width if width is None else int(width)
        model = spec.build_model(width, seed=seed)
    model = model.to(dev).train()

    reg: ScopeRegularizer | None = None
    if wsa_coef < 0 or not math.isfinite(wsa_coef):
        raise InvalidValueError(f"must be finite and >= 0, got {wsa_coef}", option="wsa_coef")
    # checked even when the regularizer is off: a typo must not be recorded in the metrics as if used
    if wsa_reduction not in REDUCTIONS:
        raise InvalidValueError(f"choose from {', '.join(REDUCTIONS)}", option="wsa_reduction", value=wsa_reduction)
    if wsa_direction not in KL_DIRECTIONS:
        raise InvalidValueError(f"choose from {', '.join(KL_DIRECTIONS)}", option="wsa_direction", value=wsa_direction)
    if wsa_coef > 0:
        reg = ScopeRegularizer(
            _target_for(task_name, width, wsa_target), wsa_coef,
            reduction=wsa_reduction, direction=wsa_direction, selector=sel,
        )  # fmt: skip

    x_all, y_all = data.x_train, data.y_train
    if train_indices is not None:
        idx = torch.as_tensor(train_indices, dtype=torch.int64)
        if idx.numel() == 0:
            raise InvalidValueError("training subset is empty")
        x_all, y_all = x_all[idx], y_all[idx]
    x_tr, y_tr = x_all.to(dev), y_all.to(dev)
    x_te, y_te = data.x_test.to(dev), data.y_test.to(dev)
    n = int(y_tr.shape[0])

    n_params = sum(p.numel() for p in model.parameters())
    with small_model_threads(dev, n_params):
        opt: torch.optim.Optimizer
        if optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(int(seed) + 1_000_003)  # batch order, independent of init
        history: list[dict[str, float]] = []
        t0 = time.perf_counter()
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            loss_sum, reg_sum, steps = 0.0, 0.0, 0
            for i in range(0, n, batch_size):
                b = perm[i : i + batch_size]
                if b.numel() < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                    continue  # BatchNorm cannot train on a single example
                logits = model(x_tr[b])  # (B, 10)
                task_loss = nn.functional.cross_entropy(logits, y_tr[b])
                loss = task_loss
                if reg is not None:
                    penalty = reg(model)
                    loss = loss + penalty
                    reg_sum += float(penalty.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(task_loss.detach())
                steps += 1
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(steps, 1), "wsa_penalty": reg_sum / max(steps, 1)}
            if evaluate_each_epoch:
                row["test_accuracy"] = evaluate_model(model, x_te, y_te)["accuracy"]
            history.append(row)
            model.train()
            if progress is not None:
                progress(1, f"epoch {epoch + 1}/{epochs} loss {row['train_loss']:.3f}")

        model.eval()
        test = evaluate_model(model, x_te, y_te)
        train = evaluate_model(model, x_tr, y_tr)
    metrics: dict[str, Any] = {
        "task": task_name,
        "seed": int(seed),
        "optimizer": optimizer,
        "epochs": epochs,
        "width": int(width),
        "lr": lr,
        "batch_size": batch_size,
        "wsa_coef": float(wsa_coef),
        "wsa_target": describe_target(wsa_target) if wsa_coef > 0 else None,
        "wsa_reduction": wsa_reduction,
        "wsa_direction": wsa_direction,
        "n_train": n,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "seconds": time.perf_counter() - t0,
        "history": history,
    }
    if reg is not None:
        with torch.no_grad():
            reg(model)  # final per-layer KL for the metrics file
        metrics["wsa_layer_kl"] = dict(reg.last_values)
        metrics["wsa_regularizer"] = reg.describe()
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    return state, metrics
