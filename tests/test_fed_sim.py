"""Federated simulation: FedAvg arithmetic, scope fusion, and short end-to-end runs."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.errors import MismatchError
from wsa_cli.fed import FedConfig, align_states, fedavg, fuse_client_scopes, run_fedsim
from wsa_cli.fusion import Scope, fuse_scopes, load_scope_file
from wsa_cli.scope import tensor_scope


def test_fedavg_weights_by_data_size_and_keeps_dtypes():
    a = {"w": torch.zeros(2, 2), "n": torch.tensor(10)}
    b = {"w": torch.ones(2, 2), "n": torch.tensor(20)}
    out = fedavg([a, b], [100, 300])
    torch.testing.assert_close(out["w"], torch.full((2, 2), 0.75))
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 18  # 0.25*10 + 0.75*20 = 17.5 -> 18
    same = fedavg([a, a, a])
    assert torch.equal(same["w"], a["w"])
    with pytest.raises(MismatchError):
        fedavg([a, {"w": torch.zeros(3, 2), "n": torch.tensor(1)}])


def test_fused_client_scopes_use_data_size_weights():
    g = torch.Generator().manual_seed(0)
    states = [{"fc.weight": torch.randn(8, 8, generator=g) * s + m, "fc.bias": torch.zeros(8)} for s, m in [(1, 0), (2, 1)]]
    fused, per_client = fuse_client_scopes(states, [1, 3])
    assert set(fused) == {"fc.weight"}  # biases are not layers by default
    expected = fuse_scopes([tensor_scope(s["fc.weight"]) for s in states], [1, 3])
    assert fused["fc.weight"].mean == pytest.approx(expected.mean)
    assert fused["fc.weight"].std == pytest.approx(expected.std)
    aligned = align_states(states, fused)
    for s in aligned:
        sc = tensor_scope(s["fc.weight"])
        assert sc.mean == pytest.approx(expected.mean, abs=1e-5)
        assert sc.std == pytest.approx(expected.std, rel=1e-5)


def test_short_fedavg_run_learns_and_is_reproducible():
    cfg = FedConfig(rounds=3, clients=3, local_epochs=2, width=16, dirichlet_alpha=0.5, seed=1)
    r1 = run_fedsim(cfg)
    r2 = run_fedsim(cfg)
    acc = [r.test_accuracy for r in r1.rounds]
    assert acc == [r.test_accuracy for r in r2.rounds]
    assert acc[-1] > 0.5 > r1.initial_accuracy  # learns from label-skewed clients
    assert sum(r1.client_sizes) == 1438
    assert len(r1.label_counts) == 3 and sum(map(sum, r1.label_counts)) == 1438
    assert set(r1.final_scopes.layers) == {"fc1.weight", "fc2.weight", "fc3.weight"}


def test_wsa_coefficient_changes_training_and_pulls_scopes_together():
    base = FedConfig(rounds=2, clients=3, local_epochs=3, width=16, dirichlet_alpha=0.3, seed=0)
    plain = run_fedsim(base)
    from dataclasses import replace

    strong = run_fedsim(replace(base, wsa_coef=50.0))
    assert plain.rounds[-1].test_accuracy != strong.rounds[-1].test_accuracy
    # a strong pull towards the fused scope keeps client scopes close to it
    assert strong.rounds[-1].client_scope_kl < plain.rounds[-1].client_scope_kl


def test_fedsim_cli_json_csv_and_outputs(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["fedsim", "--rounds", "2", "--clients", "2", "--width", "8", "--wsa-coef", "0",
                              "--wsa-coef", "0.1", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [r["config"]["wsa_coef"] for r in data["runs"]] == [0.0, 0.1]
    assert [row["round"] for row in data["runs"][0]["rounds"]] == [1, 2]
    assert 0 <= data["runs"][1]["rounds"][-1]["test_accuracy"] <= 1

    res = runner.invoke(app, ["fedsim", "--rounds", "1", "--clients", "2", "--width", "8", "--split", "iid",
                              "-f", "csv", "--out-dir", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("wsa_coef,round,test_accuracy") and len(lines) == 2
    sd = load_file(tmp_path / "global-wsa0.safetensors")
    assert sd["fc1.weight"].shape == (8, 64)
    table = load_scope_file(tmp_path / "scopes-wsa0.json")
    assert isinstance(table.layers["fc2.weight"], Scope)
    again = runner.invoke(app, ["fedsim", "--rounds", "1", "--clients", "2", "--width", "8", "--out-dir", str(tmp_path)])
    assert again.exit_code == 7  # refuses to overwrite without --force

    table = runner.invoke(app, ["fedsim", "--rounds", "2", "--clients", "2", "--width", "8", "--wsa-coef", "0",
                                "--wsa-coef", "0.5", "-f", "table"])  # fmt: skip
    assert table.exit_code == 0 and "FedAvg acc" in table.stdout and "+WSA 0.5 acc" in table.stdout

    bad = runner.invoke(app, ["fedsim", "--clients", "5000", "--rounds", "1"])
    assert bad.exit_code == 2 and "error:" in bad.stderr


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 5), seed=st.integers(0, 1000), data=st.data())
def test_fedavg_is_order_free_and_keeps_identical_states(k, seed, data):
    g = torch.Generator().manual_seed(seed)
    states = [{"w": torch.randn(3, 4, generator=g, dtype=torch.float64)} for _ in range(k)]
    weights = data.draw(st.lists(st.floats(0.1, 100.0), min_size=k, max_size=k))
    order = data.draw(st.permutations(list(range(k))))
    a = fedavg(states, weights)
    b = fedavg([states[i] for i in order], [weights[i] for i in order])
    torch.testing.assert_close(a["w"], b["w"], rtol=1e-12, atol=1e-12)
    same = fedavg([states[0]] * k, weights)
    torch.testing.assert_close(same["w"], states[0]["w"], rtol=1e-12, atol=1e-12)
    fa, _ = fuse_client_scopes([{"x.weight": s["w"]} for s in states], weights)
    fb, _ = fuse_client_scopes([{"x.weight": states[i]["w"]} for i in order], [weights[i] for i in order])
    assert fa["x.weight"].mean == pytest.approx(fb["x.weight"].mean, abs=1e-12)
    assert fa["x.weight"].std == pytest.approx(fb["x.weight"].std, rel=1e-12)
