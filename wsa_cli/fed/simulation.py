"""Federated training simulated in one process: FedAvg, optionally with WSA scope regularization.

Each round ``r = 1..R``:

1. every client ``k`` starts from the global model and trains ``local_epochs`` on its own shard
   (IID, or label-skewed with ``Dirichlet(alpha)``; :mod:`wsa_cli.tasks.splits`), adding
   ``wsa_coef * sum_l KL(scope_l || target_l)`` to its loss when ``wsa_coef > 0``;
2. the server averages the client models with data-size weights (FedAvg);
3. the server fuses the client layer scopes with the same weights into the next round's target.

The round-1 target is the scope of the initial global model. With ``wsa_coef = 0`` nothing uses
the target and this is plain FedAvg. ``align_before_average`` (off by default) additionally
rescales each client's layers onto the fused scope before averaging (the WSA merge step applied at
the server).

Example:
    >>> res = run_fedsim(FedConfig(rounds=1, clients=2, local_epochs=1, width=16))
    >>> 0.0 <= res.rounds[-1].test_accuracy <= 1.0
    True
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from wsa_cli.device import resolve_device
from wsa_cli.errors import InvalidValueError
from wsa_cli.progress import ProgressFn
from wsa_cli.fed.fedavg import align_states, fedavg, fuse_client_scopes
from wsa_cli.scope.gaussian import Scope, gaussian_kl
from wsa_cli.fusion.scopefile import ScopeTable
from wsa_cli.regularize.targets import scopes_of_state_dict
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.tasks.data import DataSplit
from wsa_cli.tasks.evaluate import evaluate_model, model_from_state_dict
from wsa_cli.tasks.registry import get_task
from wsa_cli.tasks.splits import label_histogram, make_split
from wsa_cli.tasks.threads import small_model_threads
from wsa_cli.tasks.train import train_model


@dataclass
class FedConfig:
    """One federated simulation. ``None`` means the task's default."""

    task: str = "digits-mlp"
    clients: int = 5  # number of clients, all of which take part in every round
    rounds: int = 10
    local_epochs: int = 1  # local passes over a client's shard per round
    split: str = "dirichlet"  # iid | dirichlet (label skew)
    dirichlet_alpha: float = 0.3  # smaller = more skewed
    wsa_coef: float = 0.0  # 0 = plain FedAvg
    wsa_reduction: str = "sum"
    wsa_direction: str = "forward"
    fusion: str = "moments"  # how the server fuses client scopes
    align_before_average: bool = False  # rescale clients onto the fused scope before FedAvg
    optimizer: str = "sgd"
    lr: float | None = None
    width: int | None = None
    batch_size: int = 32
    seed: int = 0  # initial global model and the clients' batch orders
    split_seed: int | None = None  # shards; None = same as seed
    device: str = "cpu"


@dataclass
class RoundResult:
    """Metrics after one round's aggregation."""

    round: int
    test_accuracy: float
    test_loss: float
    #: mean over layers and clients of KL(client scope || fused scope): how far scopes drifted apart
    client_scope_kl: float
    #: mean over layers of KL(averaged model's scope || fused scope): what averaging did to scopes
    global_scope_kl: float
    mean_client_accuracy: float  # clients' own models on the global test set (before averaging)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FedResult:
    """All rounds of one simulation, plus the final global model and fused scopes."""

    config: FedConfig
    rounds: list[RoundResult]
    client_sizes: list[int]
    label_counts: list[list[int]]
    initial_accuracy: float
    final_state: dict[str, torch.Tensor] = field(repr=False)
    final_scopes: ScopeTable = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "client_sizes": self.client_sizes,
            "label_counts": self.label_counts,
            "initial_accuracy": self.initial_accuracy,
            "rounds": [r.to_dict() for r in self.rounds],
        }


def _mean_kl(scopes: dict[str, list[Scope]], target: dict[str, Scope]) -> float:
    vals = [gaussian_kl(s.mean, s.std, target[k].mean, target[k].std) for k, lst in scopes.items() for s in lst]
    return sum(vals) / len(vals) if vals else 0.0


def run_fedsim(
    cfg: FedConfig,
    *,
    progress: ProgressFn | None = None,
    selector: LayerSelector | None = None,
) -> FedResult:
    """Run ``cfg.rounds`` rounds; ``progress(1, label)`` after every client update.

    Example:
        >>> run_fedsim(FedConfig(rounds=2, clients=3, wsa_coef=0.01)).rounds[-1].round  # doctest: +SKIP
        2
    """
    spec = get_task(cfg.task)
    if cfg.rounds < 1:
        raise InvalidValueError(f"must be >= 1, got {cfg.rounds}", option="rounds")
    if cfg.local_epochs < 1:
        raise InvalidValueError(f"must be >= 1, got {cfg.local_epochs}", option="local_epochs")
    dev = resolve_device(cfg.device)
    sel = selector or LayerSelector()
    data = spec.load_data(0)
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    shards = make_split(data.y_train, cfg.clients, cfg.split, cfg.dirichlet_alpha, split_seed)
    sizes = [int(s.numel()) for s in shards]

    model0 = spec.build_model(cfg.width, seed=cfg.seed)
    with small_model_threads(dev, sum(p.numel() for p in model0.parameters())):
        return _run(cfg, model0, shards, sizes, data, sel, dev, progress)


def _run(
    cfg: FedConfig,
    model0: torch.nn.Module,
    shards: list[torch.Tensor],
    sizes: list[int],
    data: DataSplit,
    sel: LayerSelector,
    dev: torch.device,
    progress: ProgressFn | None,
) -> FedResult:
    """The rounds themselves (see the module docstring)."""
    x_te, y_te = data.x_test.to(dev), data.y_test.to(dev)
    global_state = {k: v.detach().clone() for k, v in model0.state_dict().items()}
    target: dict[str, Scope] = scopes_of_state_dict(global_state, sel)  # round-1 target: the initial scopes
    initial = evaluate_model(model_from_state_dict(cfg.task, global_state).to(dev), x_te, y_te)["accuracy"]
    rounds: list[RoundResult] = []
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        states, client_acc = [], []
        for k, idx in enumerate(shards):
            state, metrics = train_model(
                cfg.task, seed=cfg.seed * 100_003 + r * 1_009 + k, optimizer=cfg.optimizer,
                epochs=cfg.local_epochs, lr=cfg.lr, wsa_coef=cfg.wsa_coef, wsa_target=target,
                train_indices=idx, device=dev, batch_size=cfg.batch_size, init_state=global_state,
                wsa_reduction=cfg.wsa_reduction, wsa_direction=cfg.wsa_direction, selector=sel, data=data,
                evaluate_each_epoch=False,
            )  # fmt: skip
            states.append(state)
            client_acc.append(metrics["test_accuracy"])
            if progress is not None:
                progress(1, f"round {r}/{cfg.rounds} client {k + 1}/{cfg.clients}")
        fused, per_client = fuse_client_scopes(states, sizes, method=cfg.fusion, selector=sel)
        to_average = align_states(states, fused) if cfg.align_before_average else states
        global_state = fedavg(to_average, sizes)
        target = fused
        test = evaluate_model(model_from_state_dict(cfg.task, global_state).to(dev), x_te, y_te)
        global_scopes = {k: [s] for k, s in scopes_of_state_dict(global_state, sel).items()}
        rounds.append(
            RoundResult(
                round=r,
                test_accuracy=test["accuracy"],
                test_loss=test["loss"],
                client_scope_kl=_mean_kl(per_client, fused),
                global_scope_kl=_mean_kl(global_scopes, fused),
                mean_client_accuracy=sum(client_acc) / len(client_acc),
                seconds=time.perf_counter() - t0,
            )
        )
    total = float(sum(sizes))
    table = ScopeTable(
        layers=dict(target), fusion=cfg.fusion, weights=[s / total for s in sizes],
        sources=[f"client-{k}" for k in range(cfg.clients)],
        numel={k: int(global_state[k].numel()) for k in target},
    )  # fmt: skip
    return FedResult(
        config=cfg,
        rounds=rounds,
        client_sizes=sizes,
        label_counts=label_histogram(data.y_train, shards).tolist(),
        initial_accuracy=initial,
        final_state=global_state,
        final_scopes=table,
    )
