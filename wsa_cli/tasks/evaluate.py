"""Turn a state dict back into a task model and measure its loss and accuracy.

These are also the built-in evaluators of ``wsa interpolate --eval digits-mlp``: the evaluator
plug-in contract is ``callable(state_dict, device) -> {"loss": ..., "accuracy": ...}``, which
:func:`task_evaluator` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from wsa_cli.device import resolve_device
from wsa_cli.errors import MismatchError, InvalidValueError
from wsa_cli.tasks.registry import get_task
from wsa_cli.threads import small_model_threads

EVAL_BATCH = 1024


def model_from_state_dict(task_name: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build the task's model with the width the shapes imply, load the weights, eval mode.

    Tensors are cast to the model's float32 parameters; a missing, extra or misshapen tensor is a
    :class:`MismatchError` naming the key.

    Example:
        >>> sd = get_task("digits-mlp").build_model(32, seed=0).state_dict()
        >>> model_from_state_dict("digits-mlp", sd).fc2.weight.shape
        torch.Size([32, 32])
    """
    spec = get_task(task_name)
    model = spec.build_model(spec.width_of(state_dict), seed=0)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise MismatchError(f"tensor missing for task {task_name}", key=missing[0])
    extra = [k for k in state_dict if k not in own]
    if extra:
        raise MismatchError(f"unexpected tensor for task {task_name}", key=extra[0])
    for k, v in own.items():
        if tuple(state_dict[k].shape) != tuple(v.shape):
            raise MismatchError(
                f"has shape {tuple(state_dict[k].shape)}, expected {tuple(v.shape)} for {task_name}", key=k
            )
    model.load_state_dict({k: state_dict[k].detach().to(v.dtype) for k, v in own.items()})
    return model.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate BatchNorm running statistics on ``x`` (a cumulative average over all batches).

    Interpolated or merged weights leave the running statistics of the endpoints meaningless;
    recomputing them is the standard repair (e.g. Jordan et al. 2022, REPAIR).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: exact mean over the batches seen
    was_training = model.training
    model.train()
    for i in range(0, x.shape[0], batch_size):
        model(x[i : i + batch_size])
    for m, mom in zip(norms, saved, strict=True):
        m.momentum = mom
    model.train(was_training)


@torch.no_grad()
def evaluate(
    task_name: str,
    state_dict: Mapping[str, torch.Tensor],
    device: torch.device | str = "cpu",
    *,
    split: str = "test",
    recalibrate_bn: bool = False,
    data_seed: int = 0,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``state_dict`` on the task's ``split`` ("test" or "train").

    Example:
        >>> sd = get_task("digits-mlp").build_model(16, seed=0).state_dict()
        >>> sorted(evaluate("digits-mlp", sd, "cpu"))
        ['accuracy', 'loss']
    """
    if split not in ("test", "train"):
        raise InvalidValueError(f"split must be 'test' or 'train', got {split!r}")
    dev = resolve_device(device)
    spec = get_task(task_name)
    data = spec.load_data(data_seed)
    model = model_from_state_dict(task_name, state_dict).to(dev)
    with small_model_threads(dev, sum(p.numel() for p in model.parameters())):
        if recalibrate_bn:
            recalibrate_batchnorm(model, data.x_train.to(dev))
            model.eval()
        x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
        return evaluate_model(model, x.to(dev), y.to(dev))


@torch.no_grad()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Loss and accuracy of a model (in eval mode) on ``(x, y)``, in batches."""
    was_training = model.training
    model.eval()
    total_loss = 0.0
    correct = 0
    for i in range(0, x.shape[0], EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH]).float()  # (B, 10)
        yb = y[i : i + EVAL_BATCH]
        total_loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(int(x.shape[0]), 1)
    return {"loss": total_loss / n, "accuracy": correct / n}


def task_evaluator(
    task_name: str, *, split: str = "test", recalibrate_bn: bool = False
) -> Callable[[Mapping[str, torch.Tensor], torch.device], dict[str, float]]:
    """An evaluator plug-in (``(state_dict, device) -> metrics``) for a built-in task.

    Example:
        >>> ev = task_evaluator("digits-mlp")
        >>> 0.0 <= ev(get_task("digits-mlp").build_model(8, seed=0).state_dict(), "cpu")["accuracy"] <= 1.0
        True
    """
    get_task(task_name)  # fail early on an unknown name

    def _evaluate(state_dict: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, float]:
        return evaluate(task_name, state_dict, device, split=split, recalibrate_bn=recalibrate_bn)

    return _evaluate
