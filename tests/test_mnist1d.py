"""MNIST-1D: the generator follows the published procedure, is deterministic, and works with every command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wsa_cli.tasks import evaluate, get_task
from wsa_cli.tasks.mnist1d import SEQ_LEN, generate_mnist1d, load_mnist1d_split, templates


def test_templates_start_at_zero_and_are_distinct():
    t = templates()
    assert t.shape == (10, 12)
    assert np.allclose(t[:, 0], 0.0)
    assert len({tuple(np.round(r, 6)) for r in t}) == 10


def test_generation_is_deterministic_balanced_and_normalised():
    x1, y1 = generate_mnist1d(3, 500)
    x2, y2 = generate_mnist1d(3, 500)
    x3, _ = generate_mnist1d(4, 500)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (500, SEQ_LEN)
    assert np.bincount(y1).tolist() == [50] * 10
    assert abs(x1.mean()) < 1e-9 and abs(x1.std() - 1) < 1e-9


def test_split_is_4000_1000_and_cached():
    d = load_mnist1d_split(0)
    assert tuple(d.x_train.shape) == (4000, 40) and tuple(d.x_test.shape) == (1000, 40)
    assert d.x_train.dtype == torch.float32 and d.y_test.dtype == torch.int64
    assert load_mnist1d_split(0) is d


def test_classes_are_learnable_but_not_trivial():
    """A linear probe beats chance clearly but stays far from perfect (the task the paper's models need depth for)."""
    d = load_mnist1d_split(0)
    x = torch.cat([d.x_train, torch.ones(d.x_train.shape[0], 1)], 1).double()
    onehot = torch.nn.functional.one_hot(d.y_train, 10).double()
    w = torch.linalg.lstsq(x, onehot).solution
    xt = torch.cat([d.x_test, torch.ones(d.x_test.shape[0], 1)], 1).double()
    acc = float(((xt @ w).argmax(1) == d.y_test).double().mean())
    assert 0.2 < acc < 0.8


@pytest.mark.parametrize("task, shape", [("mnist1d-mlp", (128, 40)), ("mnist1d-cnn", (16, 1, 5))])
def test_tasks_build_and_evaluate(task, shape):
    spec = get_task(task)
    model = spec.build_model(seed=0)
    first = next(iter(model.state_dict().values()))
    assert tuple(first.shape) == shape
    m = evaluate(task, model.state_dict(), "cpu")
    assert set(m) == {"loss", "accuracy"}


def test_train_interpolate_spec_and_align_on_mnist1d(tmp_path, cli):
    paths = []
    for task in ("mnist1d-mlp", "mnist1d-cnn"):
        for seed in (0, 1):
            out = tmp_path / f"{task}-{seed}.safetensors"
            res = cli("train", task, "-o", str(out), "--epochs", "2", "--width", "8", "--seed", str(seed), "--json")
            assert res.exit_code == 0, res.output
            paths.append(out)
        a, b = paths[-2], paths[-1]
        metrics = json.loads(out.with_name(out.stem + ".metrics.json").read_text())
        assert metrics["task"] == task and metrics["n_train"] == 4000
        assert evaluate(task, load_file(out), "cpu")["accuracy"] == pytest.approx(metrics["test_accuracy"])
        res = cli("spec", "template", task, str(a), "-o", str(tmp_path / f"{task}.yaml"))
        assert res.exit_code == 0, res.output
        res = cli("align", str(a), str(b), "--spec", task, "-o", str(tmp_path / f"{task}-aligned.safetensors"), "--json")
        assert res.exit_code == 0, res.output
        extra = ["--recalibrate-bn"] if task.endswith("cnn") else []
        res = cli("interpolate", str(a), str(b), "--eval", task, "--modes", "naive,permuted", "--spec", task, "--alphas", "0:1:3", "--json", *extra)
        assert res.exit_code == 0, res.output
        modes = json.loads(res.stdout)["modes"]
        assert [m["mode"] for m in modes] == ["naive", "permuted"]
        assert modes[1]["summary"]["loss_barrier"] is not None
