"""`wsa train` end to end: checkpoint + metrics files, options, errors and exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from wsa_cli.tasks import evaluate


def test_train_writes_checkpoint_metrics_and_json_summary(tmp_path, cli):
    out = tmp_path / "a.safetensors"
    res = cli("train", "digits-mlp", "-o", str(out), "--epochs", "6", "--width", "24", "--seed", "3", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    metrics = json.loads((tmp_path / "a.metrics.json").read_text())
    assert summary["test_accuracy"] == metrics["test_accuracy"] > 0.8
    assert metrics["seed"] == 3 and metrics["width"] == 24 and metrics["epochs"] == 6
    sd = load_file(out)
    assert sd["fc1.weight"].shape == (24, 64)
    assert evaluate("digits-mlp", sd, "cpu")["accuracy"] == pytest.approx(metrics["test_accuracy"])
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["wsa.task"] == "digits-mlp" and meta["wsa.width"] == "24"


def test_train_refuses_to_clobber_and_force_replaces(tmp_path, cli):
    out = tmp_path / "a.safetensors"
    assert cli("train", "digits-mlp", "-o", str(out), "--epochs", "1", "--width", "8").exit_code == 0
    before = out.read_bytes()
    res = cli("train", "digits-mlp", "-o", str(out), "--epochs", "1", "--width", "8", "--seed", "1")
    assert res.exit_code == 7 and "--force" in res.stderr
    assert out.read_bytes() == before
    res = cli("train", "digits-mlp", "-o", str(out), "--epochs", "1", "--width", "8", "--seed", "1", "--force")
    assert res.exit_code == 0 and out.read_bytes() != before


def test_train_cnn_adam_with_wsa_into_a_folder_on_a_dirichlet_shard(tmp_path, cli):
    out = tmp_path / "cnn"
    res = cli("train", "digits-cnn", "-o", str(out), "--epochs", "2", "--width", "4", "--optimizer", "adam",
                 "--wsa-coef", "0.05", "--wsa-target", "0,0.1", "--wsa-direction", "reverse", "--wsa-reduction", "mean",
                 "--split", "dirichlet", "--clients", "4",
                 "--client-index", "1", "--dirichlet-alpha", "0.2", "-f", "json")  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer"] == "adam" and metrics["wsa_target"] == "0,0.1"
    assert metrics["wsa_direction"] == "reverse" and metrics["wsa_reduction"] == "mean"
    assert metrics["wsa_regularizer"] == "coef=0.05 mean reverse KL to fixed N(0, 0.1^2)"
    assert set(metrics["wsa_layer_kl"]) == {"conv1.weight", "conv2.weight", "fc.weight"}
    split = metrics["split"]
    assert split["kind"] == "dirichlet" and split["client_index"] == 1
    assert sum(split["label_counts"]) == metrics["n_train"] < 1438
    sd = load_file(out / "model.safetensors")
    assert "bn1.running_mean" in sd and sd["bn1.num_batches_tracked"].dtype == torch.int64


def test_train_csv_format_into_a_new_folder(tmp_path, cli):
    res = cli("train", "digits-mlp", "-o", str(tmp_path / "new" / "c.safetensors"), "--epochs", "1", "--width", "8", "-f", "csv")
    assert res.exit_code == 0
    header, row = res.stdout.strip().splitlines()
    assert header.split(",")[:3] == ["task", "seed", "optimizer"] and row.startswith("digits-mlp,0,sgd")
    assert (tmp_path / "new" / "c.safetensors").is_file() and (tmp_path / "new" / "c.metrics.json").is_file()
    res = cli("train", "digits-mlp", "-o", str(tmp_path / "t.safetensors"), "--epochs", "1", "--width", "8", "-f", "table")
    assert res.exit_code == 0 and "test_accuracy" in res.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["nope-task"], 2, "built-in tasks"),
        (["digits-mlp", "--optimizer", "rmsprop"], 2, "optimizer"),
        (["digits-mlp", "--wsa-coef", "0.1", "--wsa-target", "missing.json"], 3, "missing.json"),
        (["digits-mlp", "--wsa-coef", "0.1", "--wsa-target", "0,-2"], 2, "--wsa-target"),
        (["digits-mlp", "--clients", "3", "--client-index", "3"], 2, "client-index"),
        (["digits-mlp", "--split", "zipf", "--clients", "2"], 2, "split"),
        (["digits-mlp", "--device", "tpu"], 9, "device"),
        # checked even with the regularizer off (coef 0), so a typo is never recorded as used
        (["digits-mlp", "--wsa-reduction", "avg"], 2, "--wsa-reduction 'avg'"),
        (["digits-mlp", "--wsa-direction", "sideways"], 2, "--wsa-direction 'sideways'"),
    ],
)
def test_train_errors_are_one_line_with_exit_codes(tmp_path, args, code, needle, cli):
    out = tmp_path / "x.safetensors"
    res = cli("train", *args, "-o", str(out), "--epochs", "1")
    assert res.exit_code == code, res.output
    assert res.stderr.startswith("error:") and needle in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "x.metrics.json").exists()
