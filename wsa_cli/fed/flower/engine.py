"""``wsa fedsim --engine flower``: the built-in experiment run on Flower's simulation engine.

Same task, shards, seeds and local training as :func:`wsa_cli.fed.run_fedsim`: every virtual
SuperNode is one client (its ``partition-id`` is the client index), and its ClientApp calls the
same :func:`~wsa_cli.fed.simulation.client_update`; the ServerApp runs :class:`FedAvgWSA`, which
averages with the same float64 :func:`~wsa_cli.fed.fedavg` in client order. Weights travel as
float32 arrays, losslessly, so with full participation both engines compute the same numbers up
to floating-point summation inside the Ray workers' PyTorch (their thread count can differ).

Differences by design: with ``participation < 1`` Flower's own node sampling picks the clients,
so a different subset trains each round than in the built-in engine; and the clients run as Ray
actors (``num_cpus`` 1 each, at most ``max_workers`` at a time), which costs start-up time.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from wsa_cli.device import resolve_device
from wsa_cli.errors import WsaError
from wsa_cli.fed.flower.client import scope_metrics, target_from_config, wants_scopes
from wsa_cli.fed.flower.strategy import FedAvgWSA
from wsa_cli.fed.simulation import FedConfig, FedResult, RoundResult, check_config, client_update, fixed_target, per_round
from wsa_cli.fusion.scopefile import ScopeTable
from wsa_cli.progress import ProgressFn
from wsa_cli.regularize.targets import scopes_of_state_dict
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.tasks.evaluate import evaluate_model, model_from_state_dict
from wsa_cli.tasks.registry import get_task
from wsa_cli.tasks.splits import label_histogram, make_split
from wsa_cli.threads import small_model_threads


@functools.lru_cache(maxsize=4)
def _setup(task: str, clients: int, split: str, alpha: float, split_seed: int) -> tuple[Any, list[torch.Tensor]]:
    """The task data and the client shards (cached per Ray worker: loaded once, not per round)."""
    data = get_task(task).load_data(0)
    return data, make_split(data.y_train, clients, split, alpha, split_seed)


def _client_app(cfg: FedConfig) -> ClientApp:
    app = ClientApp()
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        k = int(context.node_config["partition-id"])
        config = msg.content["config"]
        data, shards = _setup(cfg.task, cfg.clients, cfg.split, cfg.dirichlet_alpha, split_seed)
        dev, sel = resolve_device(cfg.device), LayerSelector()
        state = dict(msg.content["arrays"].to_torch_state_dict())
        with small_model_threads(dev, sum(v.numel() for v in state.values())):
            new, acc = client_update(cfg, k, int(config["server-round"]), shards[k], state, target_from_config(config), data, sel, dev)
        metrics: dict[str, Any] = {"num-examples": int(shards[k].numel()), "partition-id": k, "test-accuracy": acc}
        if wants_scopes(config):
            metrics.update(scope_metrics(new, config, sel))
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def run_fedsim_flower(
    cfg: FedConfig,
    *,
    progress: ProgressFn | None = None,
    max_workers: int = 2,
    selector: LayerSelector | None = None,
) -> FedResult:
    """Run ``cfg`` on Flower's Ray simulation engine; the same :class:`FedResult` as ``run_fedsim``.

    ``progress(n, label)`` is called after each round with the number of client updates.
    """
    check_config(cfg)
    spec = get_task(cfg.task)
    sel = selector or LayerSelector()
    dev = resolve_device(cfg.device)
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    data, shards = _setup(cfg.task, cfg.clients, cfg.split, cfg.dirichlet_alpha, split_seed)
    sizes = [int(s.numel()) for s in shards]
    state0 = {k: v.detach().clone() for k, v in spec.build_model(cfg.width, seed=cfg.seed).state_dict().items()}
    initial_scopes = scopes_of_state_dict(state0, sel)
    fixed = fixed_target(cfg.target, initial_scopes)
    x_te, y_te = data.x_test.to(dev), data.y_test.to(dev)
    out: dict[str, Any] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = dict(arrays.to_torch_state_dict())
        with small_model_threads(dev, sum(v.numel() for v in state.values())):
            res = evaluate_model(model_from_state_dict(cfg.task, state).to(dev), x_te, y_te)
        if server_round > 0 and progress is not None:
            progress(per_round(cfg), f"round {server_round}/{cfg.rounds}")
        return MetricRecord({"accuracy": res["accuracy"], "loss": res["loss"]})

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvgWSA(
            wsa_coef=cfg.wsa_coef, fusion=cfg.fusion, target=fixed, align=cfg.align_before_average, selector=sel,
            fraction_train=cfg.participation, fraction_evaluate=0.0, min_train_nodes=per_round(cfg),
            min_evaluate_nodes=0, min_available_nodes=cfg.clients,
        )  # fmt: skip
        out["result"] = strategy.start(grid, ArrayRecord(state0), num_rounds=cfg.rounds, evaluate_fn=evaluate)
        out["strategy"] = strategy

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": max(1, min(max_workers, cfg.clients)), "include_dashboard": False,
                             "log_to_driver": False, "logging_level": logging.ERROR}}  # fmt: skip
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning; CPU-only clients
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)  # Flower's deprecation and "evaluation skipped" notices are not ours to show
    try:
        run_simulation(server_app=server, client_app=_client_app(cfg), num_supernodes=cfg.clients, backend_config=backend)
    finally:
        flwr_logger.setLevel(level)
    if "strategy" not in out:
        raise WsaError("the Flower simulation ended without a result (see the log above)")
    return _to_result(cfg, out["strategy"], out["result"], sizes, data, shards, initial_scopes)


def _to_result(cfg: FedConfig, strategy: FedAvgWSA, result: Any, sizes: list[int], data: Any, shards: list[torch.Tensor],
               initial_scopes: dict[str, Any]) -> FedResult:  # fmt: skip
    """The strategy's history as the built-in engine's :class:`FedResult`."""
    rounds = []
    for h in strategy.history:
        accs = [float(m.get("test-accuracy", 0.0)) for m in h.get("client_metrics", [])]
        rounds.append(RoundResult(
            round=h["round"], test_accuracy=float(h.get("accuracy", float("nan"))), test_loss=float(h.get("loss", float("nan"))),
            client_scope_kl=float(h.get("client_scope_kl", float("nan"))), global_scope_kl=float(h.get("global_scope_kl", float("nan"))),
            mean_client_accuracy=sum(accs) / len(accs) if accs else float("nan"), seconds=float(h["seconds"]),
            participants=[int(p) for p in h.get("participants", [])], client_drift=list(h.get("client_drift", [])),
        ))  # fmt: skip
    final_state = dict(result.arrays.to_torch_state_dict())
    last = strategy.history[-1] if strategy.history else {}
    weights = last.get("weights", [])
    total = float(sum(weights)) or 1.0
    fused = strategy.fused or initial_scopes
    table = ScopeTable(
        layers=dict(fused), fusion=cfg.fusion, weights=[w / total for w in weights],
        sources=[f"client-{p}" for p in last.get("participants", [])],
        numel={k: int(final_state[k].numel()) for k in fused},
    )  # fmt: skip
    return FedResult(
        config=cfg, rounds=rounds, client_sizes=sizes, label_counts=label_histogram(data.y_train, shards).tolist(),
        initial_accuracy=float(strategy.initial.get("accuracy", float("nan"))), final_state=final_state, final_scopes=table,
    )  # fmt: skip
