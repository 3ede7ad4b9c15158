"""Federated training simulated in one process: FedAvg, optionally with WSA scope regularization.

Each round ``r = 1..R``:

1. the server samples ``round(participation * clients)`` clients (at least one; all of them by
   default) with a generator seeded by ``(seed, r)``;
2. every sampled client ``k`` starts from the global model and trains ``local_epochs`` on its own
   shard, or exactly ``local_steps`` mini-batch steps (IID, or label-skewed with
   ``Dirichlet(alpha)``; :mod:`wsa_cli.tasks.splits`), adding
   ``wsa_coef * sum_l KL(scope_l || target_l)`` to its loss when ``wsa_coef > 0``;
3. the server averages the sampled clients' models with data-size weights (FedAvg);
4. the server fuses their layer scopes with the same weights: with ``target="fused"`` (default)
   that is the next round's target, otherwise the target stays fixed (``init``: the initial global
   model's scopes; ``MEAN,STD``; a scope file) and the fused scope is only measured.

Client drift per round (``client_drift``) is each sampled client's mean over layers of
KL(client scope || fused scope); ``client_scope_kl`` is their mean. The round-1 target is the
scope of the initial global model. With ``wsa_coef = 0`` nothing uses the target and this is plain
FedAvg. ``align_before_average`` (off by default) additionally
rescales each client's layers onto the fused scope before averaging (the WSA merge step applied at
the server).

Example:
    >>> res = run_fedsim(FedConfig(rounds=1, clients=2, local_epochs=1, width=16))
    >>> 0.0 <= res.rounds[-1].test_accuracy <= 1.0
    True
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsa_cli.device import resolve_device
from wsa_cli.errors import InvalidValueError
from wsa_cli.progress import ProgressFn
from wsa_cli.fed.fedavg import align_states, fedavg, fuse_client_scopes
from wsa_cli.scope.gaussian import Scope, gaussian_kl
from wsa_cli.fusion.scopefile import ScopeTable, load_scope_file
from wsa_cli.fusion.targets import parse_target
from wsa_cli.regularize.targets import scopes_of_state_dict
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.tasks.data import DataSplit
from wsa_cli.tasks.evaluate import evaluate_model, model_from_state_dict
from wsa_cli.tasks.registry import get_task
from wsa_cli.tasks.splits import label_histogram, make_split
from wsa_cli.threads import small_model_threads
from wsa_cli.tasks.train import train_model


@dataclass
class FedConfig:
    """One federated simulation. ``None`` means the task's default."""

    task: str = "digits-mlp"
    clients: int = 5  # number of clients
    rounds: int = 10
    local_epochs: int = 1  # local passes over a client's shard per round
    local_steps: int | None = None  # exact mini-batch steps per round instead of local_epochs
    participation: float = 1.0  # fraction of clients sampled each round (at least one)
    target: str = "fused"  # fused (server's fused scopes) | init | MEAN,STD | scope file (fixed targets)
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
    participants: list[int] = field(default_factory=list)  # client indices sampled this round
    #: per participant (same order): mean over layers of KL(client scope || fused scope)
    client_drift: list[float] = field(default_factory=list)

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


def client_drift(scopes: Mapping[str, list[Scope]], fused: Mapping[str, Scope]) -> list[float]:
    """Per client: mean over layers of KL(client scope || fused scope).

    Example:
        >>> client_drift({"w": [Scope(0.0, 1.0), Scope(0.0, 2.0)]}, {"w": Scope(0.0, 1.0)})[0]
        0.0
    """
    n = len(next(iter(scopes.values()), []))
    out = []
    for i in range(n):
        vals = [gaussian_kl(lst[i].mean, lst[i].std, fused[k].mean, fused[k].std) for k, lst in scopes.items()]
        out.append(sum(vals) / len(vals) if vals else 0.0)
    return out


def per_round(cfg: FedConfig) -> int:
    """How many clients take part in each round."""
    return max(1, min(cfg.clients, round(cfg.participation * cfg.clients)))


def sample_clients(clients: int, participation: float, seed: int, round_: int) -> list[int]:
    """The sorted client indices taking part in a round: ``max(1, round(participation * clients))`` of them.

    Example:
        >>> sample_clients(4, 1.0, 0, 1)
        [0, 1, 2, 3]
        >>> len(sample_clients(20, 0.25, 0, 1))
        5
    """
    m = max(1, min(clients, round(participation * clients)))
    if m == clients:
        return list(range(clients))
    gen = torch.Generator().manual_seed(int(seed) * 7_919 + int(round_))
    return sorted(torch.randperm(clients, generator=gen)[:m].tolist())


def check_config(cfg: FedConfig) -> None:
    """Refuse bad numbers before any training (the CLI maps the option names to flags)."""
    if cfg.rounds < 1:
        raise InvalidValueError(f"must be >= 1, got {cfg.rounds}", option="rounds")
    if cfg.local_epochs < 1:
        raise InvalidValueError(f"must be >= 1, got {cfg.local_epochs}", option="local_epochs")
    if cfg.local_steps is not None and cfg.local_steps < 1:
        raise InvalidValueError(f"must be >= 1, got {cfg.local_steps}", option="local_steps")
    if not 0 < cfg.participation <= 1:
        raise InvalidValueError(f"must be in (0, 1], got {cfg.participation}", option="participation")
    fixed_target(cfg.target, {})


def fixed_target(text: str, initial: dict[str, Scope]) -> dict[str, Scope] | Scope | None:
    """The target that stays the same every round, or ``None`` for the server's fused target.

    Example:
        >>> fixed_target("fused", {}) is None
        True
        >>> fixed_target("0,0.05", {})
        Scope(mean=0.0, std=0.05)
    """
    parsed = parse_target(text, accept=("fused", "init", "fixed", "file"))
    if isinstance(parsed, Path):
        return dict(load_scope_file(parsed).layers)
    if parsed == "fused":
        return None
    if parsed == "init":
        return dict(initial)
    return parsed  # a Scope


def local_indices(shard: torch.Tensor, cfg: FedConfig, seed: int) -> torch.Tensor:
    """A client's training indices for one round: its shard, or with ``local_steps`` the shard cycled
    (in a seeded shuffled order) to exactly ``local_steps * batch_size`` examples, so one pass is
    ``local_steps`` mini-batch steps.

    Example:
        >>> cfg = FedConfig(local_steps=3, batch_size=4)
        >>> local_indices(torch.arange(5), cfg, 0).numel()
        12
    """
    if cfg.local_steps is None:
        return shard
    need = cfg.local_steps * cfg.batch_size
    gen = torch.Generator().manual_seed(int(seed) + 2_000_029)
    reps = -(-need // shard.numel())
    order = torch.cat([shard[torch.randperm(shard.numel(), generator=gen)] for _ in range(reps)])
    return order[:need]


def client_update(
    cfg: FedConfig,
    k: int,
    r: int,
    shard: torch.Tensor,
    global_state: Mapping[str, torch.Tensor],
    target: Mapping[str, Scope] | Scope,
    data: DataSplit,
    sel: LayerSelector,
    dev: torch.device,
) -> tuple[dict[str, torch.Tensor], float]:
    """Client ``k``'s local training in round ``r`` (both engines call this): its new state and test accuracy."""
    seed = cfg.seed * 100_003 + r * 1_009 + k
    state, metrics = train_model(
        cfg.task, seed=seed, optimizer=cfg.optimizer,
        epochs=1 if cfg.local_steps is not None else cfg.local_epochs, lr=cfg.lr, wsa_coef=cfg.wsa_coef,
        wsa_target=target, train_indices=local_indices(shard, cfg, seed), device=dev, batch_size=cfg.batch_size,
        init_state=global_state, wsa_reduction=cfg.wsa_reduction, wsa_direction=cfg.wsa_direction, selector=sel,
        data=data, evaluate_each_epoch=False,
    )  # fmt: skip
    return state, metrics["test_accuracy"]


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
    check_config(cfg)
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
    initial_scopes = scopes_of_state_dict(global_state, sel)
    fixed = fixed_target(cfg.target, initial_scopes)
    target: dict[str, Scope] | Scope = initial_scopes if fixed is None else fixed  # round-1 target
    fused: dict[str, Scope] = initial_scopes
    initial = evaluate_model(model_from_state_dict(cfg.task, global_state).to(dev), x_te, y_te)["accuracy"]
    rounds: list[RoundResult] = []
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        chosen = sample_clients(cfg.clients, cfg.participation, cfg.seed, r)
        states, client_acc = [], []
        for k in chosen:
            state, acc = client_update(cfg, k, r, shards[k], global_state, target, data, sel, dev)
            states.append(state)
            client_acc.append(acc)
            if progress is not None:
                progress(1, f"round {r}/{cfg.rounds} client {k + 1}/{cfg.clients}")
        weights = [sizes[k] for k in chosen]
        fused, per_client = fuse_client_scopes(states, weights, method=cfg.fusion, selector=sel)
        to_average = align_states(states, fused) if cfg.align_before_average else states
        global_state = fedavg(to_average, weights)
        target = fused if fixed is None else fixed
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
                participants=chosen,
                client_drift=client_drift(per_client, fused),
            )
        )
    total = float(sum(weights))  # the last round's participants made the last fused scopes
    table = ScopeTable(
        layers=dict(fused), fusion=cfg.fusion, weights=[w / total for w in weights],
        sources=[f"client-{k}" for k in chosen],
        numel={k: int(global_state[k].numel()) for k in fused},
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
