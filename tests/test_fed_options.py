"""fedsim protocol options: fixed targets, partial participation, local steps, strong skew, drift per round."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.errors import InvalidValueError
from wsa_cli.fed import FedConfig, client_drift, run_comparison, run_fedsim, sample_clients
from wsa_cli.fed.simulation import local_indices
from wsa_cli.fusion import Scope

BASE = FedConfig(rounds=2, clients=4, width=8, seed=3)


def test_sampling_is_seeded_sized_and_varies_by_round():
    a = sample_clients(20, 0.25, 0, 1)
    assert a == sample_clients(20, 0.25, 0, 1) and len(a) == 5 and a == sorted(set(a))
    assert a != sample_clients(20, 0.25, 0, 2)
    assert sample_clients(3, 0.01, 0, 1) and len(sample_clients(3, 0.01, 0, 1)) == 1  # never empty
    assert sample_clients(3, 1.0, 5, 9) == [0, 1, 2]


def test_local_steps_cycle_the_shard_to_exact_steps():
    idx = local_indices(torch.tensor([4, 7, 9]), replace(BASE, local_steps=5, batch_size=2), seed=1)
    assert idx.numel() == 10 and set(idx.tolist()) == {4, 7, 9}
    assert torch.equal(local_indices(torch.tensor([1, 2]), BASE, 0), torch.tensor([1, 2]))  # epochs mode: shard as is


def test_drift_is_kl_to_the_fused_scope_per_client():
    d = client_drift({"a": [Scope(0.0, 1.0), Scope(1.0, 1.0)], "b": [Scope(0.0, 1.0), Scope(0.0, 1.0)]},
                     {"a": Scope(0.0, 1.0), "b": Scope(0.0, 1.0)})  # fmt: skip
    assert d == [0.0, pytest.approx(0.25)]  # KL(N(1,1)||N(0,1)) = 0.5, averaged with layer b's 0


def test_partial_participation_many_clients_strong_skew():
    cfg = FedConfig(rounds=2, clients=20, participation=0.2, local_steps=3, dirichlet_alpha=0.05, width=8, seed=0)
    res = run_fedsim(cfg)
    for rr in res.rounds:
        assert len(rr.participants) == 4 and len(rr.client_drift) == 4
        assert all(d >= 0 for d in rr.client_drift)
        assert rr.client_scope_kl == pytest.approx(sum(rr.client_drift) / 4)
    assert res.rounds[0].participants != res.rounds[1].participants
    assert len(res.final_scopes.sources) == 4 and sum(res.final_scopes.weights) == pytest.approx(1.0)
    assert res.rounds[-1].to_dict()["participants"] == res.rounds[-1].participants


def test_fixed_target_differs_from_fused_and_is_deterministic():
    fused = run_fedsim(replace(BASE, wsa_coef=20.0, local_epochs=2))
    init = run_fedsim(replace(BASE, wsa_coef=20.0, local_epochs=2, target="init"))
    assert fused.rounds[0].test_accuracy == init.rounds[0].test_accuracy  # round 1: both targets are the initial scopes
    assert fused.rounds[-1].test_accuracy != init.rounds[-1].test_accuracy
    fixed = run_fedsim(replace(BASE, wsa_coef=5.0, target="0,0.05"))
    assert [r.test_accuracy for r in fixed.rounds] == [r.test_accuracy for r in run_fedsim(replace(BASE, wsa_coef=5.0, target="0,0.05")).rounds]


def test_scope_file_target_and_bad_options(tmp_path):
    first = run_comparison(replace(BASE, rounds=1), out_dir=tmp_path)
    scopes = first.outputs[0][1]
    res = run_fedsim(replace(BASE, rounds=1, wsa_coef=1.0, target=str(scopes)))
    assert res.rounds[0].client_scope_kl >= 0
    for bad in (dict(participation=0.0), dict(participation=1.5), dict(local_steps=0), dict(target="1,0")):
        with pytest.raises(InvalidValueError):
            run_comparison(replace(BASE, **bad))


def test_cli_options_reach_the_json():
    res = CliRunner().invoke(app, ["fedsim", "--clients", "10", "--participation", "0.3", "--local-steps", "2", "--rounds", "1",
                                   "--width", "8", "--dirichlet-alpha", "0.05", "--target", "init", "--wsa-coef", "0.1", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    run = json.loads(res.stdout)["runs"][0]
    assert run["config"]["target"] == "init" and run["config"]["local_steps"] == 2
    assert len(run["rounds"][0]["participants"]) == 3 and len(run["rounds"][0]["client_drift"]) == 3
    bad = CliRunner().invoke(app, ["fedsim", "--participation", "2", "--rounds", "1"])
    assert bad.exit_code == 2 and "--participation" in bad.stderr
