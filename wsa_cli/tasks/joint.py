"""Train K task models side by side, regularized towards one shared scope target that can move.

The paper's protocol (Xu et al. 2024, "Weight Scope Alignment") pulls every model's layer scopes
towards a *fused* scope of all models. Training them one at a time can only use a static target
(``init``, a fixed ``MEAN,STD``, or a scope file fused beforehand). Here the K models step in
lockstep: after every ``refuse_every`` optimisation steps the live per-layer scopes of all K models
are fused (:func:`wsa_cli.fusion.fuse_scopes`, moment matching by default) and become every
model's target: a *dynamic fused target*. With ``target="fused"`` the first target is the fusion
of the K initial scopes.

Each member has its own seed (initialisation and batch order, exactly as :func:`train_model` uses
it), optimizer, learning rate and optional training subset; ``init_state`` gives all members one
shared initialisation. With ``wsa_coef=0`` every member trains exactly as :func:`train_model`
would train it alone.

Example:
    >>> run = train_joint("digits-mlp", [Member(0), Member(1, "adam")], epochs=1, width=16,
    ...                   wsa_coef=0.01, target="fused", refuse_every=5)
    >>> len(run.states), run.refusions > 0
    (2, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from wsa_cli.device import resolve_device
from wsa_cli.errors import InvalidValueError
from wsa_cli.fusion.fuse import fuse_scopes
from wsa_cli.regularize import ScopeRegularizer
from wsa_cli.regularize.targets import TargetLike, scopes_of_state_dict
from wsa_cli.scope.gaussian import Scope
from wsa_cli.tasks.evaluate import evaluate_model, model_from_state_dict
from wsa_cli.tasks.registry import get_task
from wsa_cli.threads import small_model_threads
from wsa_cli.tasks.train import DEFAULT_BATCH, OPTIMIZERS, SGD_MOMENTUM, _target_for, describe_target
from wsa_cli.progress import ProgressFn

#: Text targets :func:`train_joint` understands besides Scope / scope tables / state dicts.
JOINT_TARGETS = ("init", "fused")


@dataclass(frozen=True)
class Member:
    """One of the K jointly trained models: its seed, optimizer, learning rate (None = task default)."""

    seed: int
    optimizer: str = "sgd"
    lr: float | None = None
    #: training subset (a client's shard); None = the whole training set
    train_indices: torch.Tensor | None = field(default=None, compare=False)


@dataclass
class JointRun:
    """The trained members: CPU state dicts, per-member metrics, and how the target moved."""

    states: list[dict[str, torch.Tensor]]
    metrics: list[dict[str, Any]]
    #: number of times the fused target was recomputed from the live models
    refusions: int
    #: ``[(step, mean over layers of the target std)]`` at each refusion (for plots and reports)
    target_trace: list[tuple[int, float]]


def _live_fused(models: Sequence[nn.Module], method: str) -> dict[str, Scope]:
    """Per-layer fusion of the K models' current scopes (float64 statistics, no gradient)."""
    with torch.no_grad():
        scopes = [scopes_of_state_dict(dict(m.named_parameters())) for m in models]
    return {k: fuse_scopes([s[k] for s in scopes], method=method) for k in scopes[0]}


def _mean_std(target: Scope | Mapping[str, Scope]) -> float:
    if isinstance(target, Scope):
        return float(target.std)
    return float(sum(s.std for s in target.values()) / max(len(target), 1))


def train_joint(
    task_name: str,
    members: Sequence[Member],
    *,
    epochs: int | None = None,
    width: int | None = None,
    wsa_coef: float = 0.0,
    target: TargetLike | None = "fused",
    refuse_every: int = 10,
    fusion: str = "moments",
    init_state: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = DEFAULT_BATCH,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> JointRun:
    """Train ``members`` in lockstep; with ``target="fused"`` re-fuse their scopes every ``refuse_every`` steps.

    ``target``: ``"fused"`` (dynamic), ``"init"``/``None`` (seed-0 initial scopes), a fixed
    :class:`Scope`, a scope table/file or a state dict (static). ``progress(1, label)`` after each epoch.
    """
    spec = get_task(task_name)
    if len(members) < 1:
        raise InvalidValueError("give at least one seed", option="seeds")
    epochs = spec.default_epochs if epochs is None else int(epochs)
    if epochs < 0:
        raise InvalidValueError(f"must be >= 0, got {epochs}", option="epochs")
    if not (wsa_coef >= 0 and math.isfinite(wsa_coef)):
        raise InvalidValueError(f"must be finite and >= 0, got {wsa_coef}", option="wsa_coef")
    dynamic = isinstance(target, str) and target == "fused"
    if dynamic and refuse_every < 1:
        raise InvalidValueError(f"must be >= 1 with a fused target, got {refuse_every}", option="refuse_every")
    dev = resolve_device(device)
    data = spec.load_data(0)
    models: list[nn.Module] = []
    opts: list[torch.optim.Optimizer] = []
    for m in members:
        if m.optimizer not in OPTIMIZERS:
            raise InvalidValueError(f"unknown optimizer {m.optimizer!r}; choose from {', '.join(OPTIMIZERS)}", option="optimizers")
        lr = spec.default_lr[m.optimizer] if m.lr is None else float(m.lr)
        if not (lr > 0 and math.isfinite(lr)):
            raise InvalidValueError(f"must be > 0, got {lr}", option="lrs")
        if init_state is not None:
            model = model_from_state_dict(task_name, init_state)
        else:
            model = spec.build_model(width, seed=m.seed)
        model = model.to(dev).train()
        models.append(model)
        if m.optimizer == "sgd":
            opts.append(torch.optim.SGD(model.parameters(), lr=lr, momentum=SGD_MOMENTUM))
        else:
            opts.append(torch.optim.Adam(model.parameters(), lr=lr))
    w = int(models[0].width)
    regs: list[ScopeRegularizer] = []
    if wsa_coef > 0:
        first: TargetLike = _live_fused(models, fusion) if dynamic else _target_for(task_name, w, target)
        regs = [ScopeRegularizer(first, wsa_coef) for _ in models]

    xs, ys, gens = [], [], []
    for m in members:
        x, y = data.x_train, data.y_train
        if m.train_indices is not None:
            idx = torch.as_tensor(m.train_indices, dtype=torch.int64)
            if idx.numel() == 0:
                raise InvalidValueError("training subset is empty")
            x, y = x[idx], y[idx]
        xs.append(x.to(dev))
        ys.append(y.to(dev))
        gens.append(torch.Generator().manual_seed(int(m.seed) + 1_000_003))  # the batch order train_model uses
    has_bn = any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in models[0].modules())
    n_params = sum(p.numel() for p in models[0].parameters())
    refusions, step = 0, 0
    trace: list[tuple[int, float]] = []
    if regs:
        trace.append((0, _mean_std(regs[0].target)))
    t0 = time.perf_counter()
    with small_model_threads(dev, n_params):
        for epoch in range(epochs):
            perms = [torch.randperm(int(y.shape[0]), generator=g).to(dev) for y, g in zip(ys, gens, strict=True)]
            n_steps = max(math.ceil(int(y.shape[0]) / batch_size) for y in ys)
            for i in range(n_steps):
                for k, model in enumerate(models):
                    b = perms[k][i * batch_size : (i + 1) * batch_size]
                    if b.numel() == 0 or (b.numel() < 2 and has_bn):
                        continue  # a smaller shard has run out of batches this epoch / BN needs two examples
                    loss = nn.functional.cross_entropy(model(xs[k][b]), ys[k][b])
                    if regs:
                        loss = loss + regs[k](model)
                    opts[k].zero_grad(set_to_none=True)
                    loss.backward()
                    opts[k].step()
                step += 1
                if regs and dynamic and step % refuse_every == 0:
                    fused = _live_fused(models, fusion)
                    for r in regs:
                        r.set_target(fused)
                    refusions += 1
                    trace.append((step, _mean_std(fused)))
            if progress is not None:
                progress(1, f"epoch {epoch + 1}/{epochs}")
    seconds = time.perf_counter() - t0
    states, metrics = [], []
    for k, (m, model) in enumerate(zip(members, models, strict=True)):
        model.eval()
        test = evaluate_model(model, data.x_test.to(dev), data.y_test.to(dev))
        train = evaluate_model(model, xs[k], ys[k])
        metrics.append({
            "task": task_name, "seed": int(m.seed), "optimizer": m.optimizer,
            "lr": spec.default_lr[m.optimizer] if m.lr is None else float(m.lr), "epochs": epochs, "width": w,
            "batch_size": batch_size, "wsa_coef": float(wsa_coef),
            "wsa_target": ("fused" if dynamic else describe_target(target)) if wsa_coef > 0 else None,
            "refuse_every": refuse_every if dynamic and wsa_coef > 0 else None, "members": len(members),
            "n_train": int(ys[k].shape[0]), "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "test_loss": test["loss"], "test_accuracy": test["accuracy"], "seconds": seconds,
        })  # fmt: skip
        states.append({key: v.detach().to("cpu").clone() for key, v in model.state_dict().items()})
    return JointRun(states, metrics, refusions, trace)
