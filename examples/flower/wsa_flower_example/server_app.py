"""ServerApp: FedAvgWSA instead of FedAvg, with a central evaluation on the digits test set."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from wsa_cli.fed.flower import FedAvgWSA
from wsa_flower_example.task import accuracy, build_model, shards

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the rounds, then print the per-round history (accuracy, client drift, left-out clients)."""
    cfg = context.run_config
    data, _ = shards(1, float(cfg["dirichlet-alpha"]))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        acc, loss = accuracy(model, data.x_test, data.y_test)
        return MetricRecord({"accuracy": acc, "loss": loss})

    strategy = FedAvgWSA(
        wsa_coef=float(cfg["wsa-coef"]), fusion=str(cfg["fusion"]), align=bool(cfg["align"]), request_scopes=True,
        fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0,
    )  # fmt: skip
    strategy.start(grid, ArrayRecord(build_model().state_dict()), num_rounds=int(cfg["num-server-rounds"]), evaluate_fn=evaluate)
    for h in strategy.history:
        print(f"round {h['round']}: accuracy {h.get('accuracy', float('nan')):.4f}, "
              f"client drift {h.get('client_scope_kl', float('nan')):.2e}, left out {len(h['rejected'])}")  # fmt: skip
