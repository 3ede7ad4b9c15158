"""The Flower-independent half of WSA-on-Flower: the target codec and the client helpers."""

from __future__ import annotations

import pytest
import torch

from wsa_cli.errors import ConfigError
from wsa_cli.fed.flower import decode_scopes, encode_scopes, regularizer_from_config, scope_metrics, wants_scopes
from wsa_cli.fusion import Scope
from wsa_cli.scope import tensor_scope


def test_codec_round_trips_tables_and_fixed_scopes_and_refuses_bad_encodings():
    table = {"a.weight": Scope(0.1, 0.2), "b.weight": Scope(-0.3, 0.05)}
    enc = encode_scopes(table)
    assert all(isinstance(v, list) for v in enc.values())  # ConfigRecord-compatible values
    assert decode_scopes(enc) == table
    assert decode_scopes(encode_scopes(Scope(0.0, 0.1))) == Scope(0.0, 0.1)
    with pytest.raises(ConfigError, match="wsa-target-keys"):
        decode_scopes({**enc, "wsa-target-keys": ["a.weight"]})
    with pytest.raises(ConfigError):
        decode_scopes({"wsa-target-mean": [0.0, 1.0], "wsa-target-std": [1.0, 1.0]})


def test_client_helper_builds_a_regularizer_that_pulls_towards_the_sent_target():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    target = {"0.weight": Scope(0.0, 0.05), "2.weight": Scope(0.0, 0.05)}
    config = {**encode_scopes(target), "wsa-coef": 1.0}
    assert regularizer_from_config({}) is None and regularizer_from_config({**config, "wsa-coef": 0.0}) is None
    reg = regularizer_from_config(config)
    assert reg is not None and reg.coef == 1.0 and regularizer_from_config(config, coef=0.3).coef == 0.3
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    before = float(reg(model).detach())
    for _ in range(100):
        opt.zero_grad()
        reg(model).backward()
        opt.step()
    assert float(reg(model).detach()) < before / 2
    bad = regularizer_from_config({**encode_scopes({"0.weight": Scope(0.0, 0.05)}), "wsa-coef": 1.0})
    with pytest.raises(ConfigError, match="2.weight"):  # the layer the target misses is named
        bad(model)


def test_scope_metrics_follow_the_target_order():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    config = {**encode_scopes({"1.weight": Scope(0, 1), "0.weight": Scope(0, 1)}), "wsa-report-scopes": True}
    assert wants_scopes(config) and not wants_scopes({})
    m = scope_metrics(model, config)
    assert m["wsa-scopes-mean"][0] == pytest.approx(tensor_scope(model[1].weight).mean)
    assert m["wsa-scopes-std"][1] == pytest.approx(tensor_scope(model[0].weight).std)


def test_missing_flower_is_one_line_naming_the_extra(monkeypatch):
    import sys

    from typer.testing import CliRunner

    from wsa_cli.cli.app import app

    monkeypatch.setitem(sys.modules, "flwr", None)  # `import flwr` now fails as if it were not installed
    res = CliRunner().invoke(app, ["fedsim", "--rounds", "1", "--clients", "2", "--engine", "flower"])
    assert res.exit_code == 2 and "pip install 'wsa[flower]'" in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
    bad = CliRunner().invoke(app, ["fedsim", "--rounds", "1", "--clients", "2", "--engine", "spark"])
    assert bad.exit_code == 2 and "--engine" in bad.stderr
