"""Regularizer targets: scope-file round trip (fuse -> file -> regularizer -> training), checkpoints."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.errors import ConfigError, InputNotFoundError
from wsa_cli.fusion import Scope, ScopeTable, gaussian_kl, load_scope_file
from wsa_cli.fusion.targets import parse_target as _parse_target
from wsa_cli.regularize import ScopeRegularizer, resolve_target
from wsa_cli.scope import tensor_scope
from wsa_cli.tasks import train_model

TRAIN_TARGETS = ("init", "fixed", "file", "checkpoint")


def parse_target(text: str):  # noqa: ANN201 - what wsa train --wsa-target accepts
    return _parse_target(text, accept=TRAIN_TARGETS)

runner = CliRunner()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    paths = []
    for seed, opt in [(0, "sgd"), (1, "adam")]:
        p = d / f"m{seed}.safetensors"
        res = runner.invoke(app, ["train", "digits-mlp", "-o", str(p), "--epochs", "3", "--width", "16",
                                  "--seed", str(seed), "--optimizer", opt, "--json"])  # fmt: skip
        assert res.exit_code == 0, res.output
        paths.append(p)
    return paths


def _fused_scope_file(paths, out):
    """The scope file (wsa-scopes JSON) written by `wsa scope fuse`."""
    res = runner.invoke(app, ["scope", "fuse", *map(str, paths), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out


def test_scope_file_round_trip_into_regularizer_and_training(two_models, tmp_path):
    scopes = _fused_scope_file(two_models, tmp_path / "scopes.json")
    table = load_scope_file(scopes)
    assert set(table.layers) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    reg = ScopeRegularizer.from_scope_file(scopes, coef=1.0)
    a = load_file(two_models[0])
    reg(a)
    for key, value in reg.last_values.items():
        s, t = tensor_scope(a[key]), table.layers[key]
        assert value == pytest.approx(gaussian_kl(s.mean, s.std, t.mean, t.std), rel=1e-4, abs=1e-7)

    # train a third model towards the fused scopes through the CLI; it lands much closer than without
    def kl_to_table(sd):
        return sum(gaussian_kl(tensor_scope(sd[k]).mean, tensor_scope(sd[k]).std, t.mean, t.std) for k, t in table.layers.items())

    out_reg, out_plain = tmp_path / "reg.safetensors", tmp_path / "plain.safetensors"
    common = ["digits-mlp", "--epochs", "3", "--width", "16", "--seed", "5", "--optimizer", "adam", "--lr", "0.01", "--json"]
    res = runner.invoke(app, ["train", *common, "-o", str(out_reg), "--wsa-coef", "5", "--wsa-target", str(scopes)])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["train", *common, "-o", str(out_plain)]).exit_code == 0
    metrics = json.loads((tmp_path / "reg.metrics.json").read_text())
    assert metrics["wsa_target"] == str(scopes) and metrics["test_accuracy"] > 0.6
    assert metrics["wsa_regularizer"].startswith("coef=5 sum forward KL to 3 per-layer scopes from ")
    assert kl_to_table(load_file(out_reg)) < 0.2 * kl_to_table(load_file(out_plain))


def test_checkpoint_as_target(two_models):
    target = resolve_target(two_models[1])
    b = load_file(two_models[1])
    assert target == {k: tensor_scope(b[k]) for k in ("fc1.weight", "fc2.weight", "fc3.weight")}
    assert parse_target(str(two_models[1])) == two_models[1]
    reg = ScopeRegularizer(two_models[1], coef=1.0)
    assert float(reg(b).detach()) == pytest.approx(0.0, abs=1e-6)


def test_scope_file_that_misses_layers_or_is_broken(tmp_path):
    part = tmp_path / "part.json"
    part.write_text(ScopeTable({"fc1.weight": Scope(0.0, 0.1)}).to_json())
    with pytest.raises(ConfigError, match="fc2.weight"):
        train_model("digits-mlp", epochs=1, width=8, wsa_coef=1.0, wsa_target=part)
    _, m = train_model("digits-mlp", epochs=1, width=8, wsa_coef=0.0, wsa_target=part)  # coef 0: target unused
    assert "wsa_layer_kl" not in m
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "wsa-scopes", "version": 1, "layers": {"fc1.weight": {"mean": 0}}}')
    with pytest.raises(ConfigError):
        parse_target(str(broken))
    res = runner.invoke(app, ["train", "digits-mlp", "-o", str(tmp_path / "o.safetensors"), "--wsa-coef", "1",
                              "--wsa-target", str(part), "--epochs", "1"])  # fmt: skip
    assert res.exit_code == 6 and "part.json" in res.stderr
    with pytest.raises(InputNotFoundError):
        resolve_target(tmp_path / "absent.safetensors")


def test_init_target_is_seed_independent():
    _, m1 = train_model("digits-mlp", seed=1, epochs=1, width=8, wsa_coef=1.0)
    _, m2 = train_model("digits-mlp", seed=2, epochs=1, width=8, wsa_coef=1.0, wsa_target="init")
    assert m1["wsa_target"] == m2["wsa_target"] == "init"
    assert set(m1["wsa_layer_kl"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(v >= 0 for v in m1["wsa_layer_kl"].values())
