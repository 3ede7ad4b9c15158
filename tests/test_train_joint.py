"""K models trained together (`wsa train --seeds`), with a dynamic fused target."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from wsa_cli.errors import InvalidValueError
from wsa_cli.scope.gaussian import Scope
from wsa_cli.tasks import get_task, train_model
from wsa_cli.tasks.joint import Member, train_joint


def test_without_regularizer_each_member_trains_as_alone():
    run = train_joint("digits-mlp", [Member(0), Member(1, "adam", 0.002)], epochs=2, width=12)
    for seed, opt, lr, state in ((0, "sgd", None, run.states[0]), (1, "adam", 0.002, run.states[1])):
        alone, _ = train_model("digits-mlp", seed=seed, optimizer=opt, lr=lr, epochs=2, width=12, evaluate_each_epoch=False)
        assert all(torch.equal(alone[k], state[k]) for k in alone)
    assert run.refusions == 0 and run.metrics[1]["lr"] == 0.002


def test_dynamic_fused_target_moves_and_changes_training():
    init = get_task("digits-mlp").build_model(16, seed=7).state_dict()
    members = [Member(0, "sgd"), Member(1, "adam")]
    plain = train_joint("digits-mlp", members, epochs=2, init_state=init)
    fused = train_joint("digits-mlp", members, epochs=2, init_state=init, wsa_coef=0.05, target="fused", refuse_every=4)
    assert fused.refusions == len(fused.target_trace) - 1 > 0
    assert len({round(s, 9) for _, s in fused.target_trace}) > 1  # the target followed the live scopes
    assert not torch.equal(plain.states[1]["fc2.weight"], fused.states[1]["fc2.weight"])
    assert all(m["wsa_target"] == "fused" and m["refuse_every"] == 4 for m in fused.metrics)
    # both members start from the one shared initialisation
    assert plain.metrics[0]["width"] == 16


def test_static_targets_do_not_refuse():
    run = train_joint("digits-mlp", [Member(0), Member(1)], epochs=1, width=8, wsa_coef=0.01, target=Scope(0.0, 0.1))
    assert run.refusions == 0 and run.metrics[0]["wsa_target"] == "0,0.1"


def test_bad_inputs_are_named():
    with pytest.raises(InvalidValueError, match=">= 1") as exc:
        train_joint("digits-mlp", [Member(0)], epochs=1, width=8, wsa_coef=0.01, target="fused", refuse_every=0)
    assert exc.value.option == "refuse_every"
    with pytest.raises(InvalidValueError, match="rmsprop") as exc:
        train_joint("digits-mlp", [Member(0, "rmsprop")], epochs=1, width=8)
    assert exc.value.option == "optimizers"


def test_cli_trains_a_pair_into_a_folder(tmp_path, cli):
    out = tmp_path / "pair"
    res = cli("train", "digits-mlp", "-o", str(out), "--seeds", "0,1", "--optimizers", "sgd,adam", "--shared-init", "5",
              "--epochs", "2", "--width", "12", "--wsa-coef", "0.01", "--wsa-target", "fused", "--refuse-every", "7", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["refusions"] > 0 and len(summary["checkpoints"]) == 2
    for i, opt in enumerate(("sgd", "adam")):
        metrics = json.loads((out / f"model-{i}.metrics.json").read_text())
        assert metrics["optimizer"] == opt and metrics["shared_init"] == 5
        assert load_file(out / f"model-{i}.safetensors")["fc1.weight"].shape == (12, 64)
    res = cli("interpolate", str(out / "model-0.safetensors"), str(out / "model-1.safetensors"), "--eval", "digits-mlp", "--alphas", "0:1:3")
    assert res.exit_code == 0, res.output


def test_cli_errors_name_the_flag_and_write_nothing(tmp_path, cli):
    out = tmp_path / "pair"
    res = cli("train", "digits-mlp", "-o", str(out), "--seeds", "0,1,2", "--optimizers", "sgd,adam", "--epochs", "1")
    assert res.exit_code == 2 and "--optimizers" in res.stderr
    res = cli("train", "digits-mlp", "-o", str(out), "--seeds", "0,x", "--epochs", "1")
    assert res.exit_code == 2 and "--seeds" in res.stderr
    res = cli("train", "digits-mlp", "-o", str(tmp_path / "a.safetensors"), "--seeds", "0,1", "--epochs", "1")
    assert res.exit_code == 2 and "folder" in res.stderr
    assert not out.exists() and not (tmp_path / "a.safetensors").exists()
