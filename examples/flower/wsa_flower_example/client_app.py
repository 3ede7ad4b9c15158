"""ClientApp: an ordinary PyTorch training loop; WSA adds two lines (the regularizer, the scopes)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from wsa_cli.fed.flower import regularizer_from_config, scope_metrics, wants_scopes
from wsa_flower_example.task import build_model, shards

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on this node's shard from the global model, pulled towards the server's target scopes."""
    k, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    data, parts = shards(n, float(context.run_config["dirichlet-alpha"]))
    x, y = data.x_train[parts[k]], data.y_train[parts[k]]
    config = msg.content["config"]
    model = build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    reg = regularizer_from_config(config)  # WSA: None when the server sent no target or wsa-coef 0
    opt = torch.optim.SGD(model.parameters(), lr=float(context.run_config["lr"]), momentum=0.9)
    gen = torch.Generator().manual_seed(int(config["server-round"]) * 1000 + k)
    model.train()
    for _ in range(int(context.run_config["local-epochs"])):
        for b in torch.randperm(len(y), generator=gen).split(32):
            loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
            if reg is not None:
                loss = loss + reg(model)  # WSA: the KL pull towards the target scopes
            opt.zero_grad()
            loss.backward()
            opt.step()
    metrics = {"num-examples": len(y), "partition-id": k}
    if wants_scopes(config):
        metrics.update(scope_metrics(model, config))  # WSA: report scopes when the server asks
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}), reply_to=msg)
