"""WSA on Flower: the FedAvgWSA strategy on real Flower messages, and a real Ray simulation that
agrees with the built-in engine."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

pytestmark = [pytest.mark.flower, pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="needs the flower extra")]


def _reply(node: int, content):  # noqa: ANN001, ANN202
    from flwr.app import Message, Metadata

    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="", group_id="1",
                    created_at=0.0, ttl=60.0, message_type="train")  # fmt: skip
    return Message(content, metadata=meta)


def _train_reply(node: int, state: dict, n: int):  # noqa: ANN001, ANN202
    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    return _reply(node, RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": n})}))


def test_strategy_averages_fuses_and_leaves_out_mismatching_and_failed_clients():
    from flwr.app import ArrayRecord, Error

    from wsa_cli.fed import fedavg, fuse_client_scopes
    from wsa_cli.fed.flower import FedAvgWSA

    g = torch.Generator().manual_seed(0)
    ref = {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.zeros(4)}
    a = {"fc.weight": torch.randn(4, 3, generator=g) * 2, "fc.bias": torch.ones(4)}
    b = {"fc.weight": torch.randn(4, 3, generator=g) + 1, "fc.bias": torch.zeros(4)}
    wrong = {"fc.weight": torch.randn(5, 3, generator=g), "fc.bias": torch.zeros(4)}
    s = FedAvgWSA(wsa_coef=0.1)
    s.reference = ref
    replies = [_train_reply(11, a, 30), _train_reply(12, wrong, 50), _train_reply(13, b, 10), _reply(14, Error(code=1, reason="boom"))]
    arrays, metrics = s.aggregate_train(1, replies)
    rec = s.history[-1]
    assert {r["node"] for r in rec["rejected"]} == {12, 14}
    assert any("fc.weight" in r["reason"] and "(5, 3)" in r["reason"] for r in rec["rejected"])
    out = dict(arrays.to_torch_state_dict())
    torch.testing.assert_close(out["fc.weight"], fedavg([a, b], [30, 10])["fc.weight"])
    fused, _ = fuse_client_scopes([a, b], [30, 10])
    assert s.target == fused and len(rec["client_drift"]) == 2 and metrics["clients"] == 2
    assert isinstance(ArrayRecord(out), ArrayRecord)
    none, _ = s.aggregate_train(2, [_train_reply(12, wrong, 50)])  # nobody left: no update, no crash
    assert none is None and s.history[-1]["participants"] == []


def test_flower_engine_agrees_with_builtin_engine_on_digits():
    """3 clients, 2 rounds, WSA on: same shards, seeds and local training, same float64 averaging."""
    from typer.testing import CliRunner

    from wsa_cli.cli.app import app
    from wsa_cli.fed import FedConfig, run_fedsim

    args = ["fedsim", "--clients", "3", "--rounds", "2", "--width", "16", "--wsa-coef", "0.5", "--json"]
    res = CliRunner().invoke(app, [*args, "--engine", "flower"])
    assert res.exit_code == 0, res.output
    flower = json.loads(res.stdout[res.stdout.index("{"):])["runs"][0]
    builtin = run_fedsim(FedConfig(clients=3, rounds=2, width=16, wsa_coef=0.5)).to_dict()
    assert flower["client_sizes"] == builtin["client_sizes"]
    assert flower["initial_accuracy"] == builtin["initial_accuracy"]
    for f, b in zip(flower["rounds"], builtin["rounds"], strict=True):
        assert f["participants"] == b["participants"] == [0, 1, 2]
        assert abs(f["test_accuracy"] - b["test_accuracy"]) <= 1e-6  # documented tolerance (docs/flower.md)
        assert f["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)
        assert f["client_scope_kl"] == pytest.approx(b["client_scope_kl"], rel=1e-3)
