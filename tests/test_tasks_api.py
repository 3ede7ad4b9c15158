"""The built-in tasks' API: registry, data, models, evaluation and the training loop."""

from __future__ import annotations

import pytest
import torch

from wsa_cli.errors import MismatchError, InvalidValueError
from wsa_cli.tasks import TASKS, evaluate, get_task, model_from_state_dict, task_evaluator, train_model


@pytest.fixture(scope="module")
def mlp_trained():
    return train_model("digits-mlp", seed=3, epochs=8, width=32)


def test_registry_names_and_unknown_task():
    assert {"digits-mlp", "digits-cnn"} <= set(TASKS)
    with pytest.raises(InvalidValueError, match="digits-mlp"):
        get_task("mnist-transformer")


def test_data_split_is_fixed_stratified_and_disjoint():
    d0, d0b, d1 = get_task("digits-mlp").load_data(0), get_task("digits-mlp").load_data(0), get_task("digits-mlp").load_data(1)
    assert torch.equal(d0.x_test, d0b.x_test)
    assert not torch.equal(d0.y_test, d1.y_test) or not torch.equal(d0.x_test, d1.x_test)
    assert d0.x_train.dtype == torch.float32 and d0.y_train.dtype == torch.int64
    assert d0.x_train.shape[0] + d0.x_test.shape[0] == 1797
    counts = torch.bincount(d0.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # ~20 % of every class (174..183 images each)
    # no test image is also a training image (the digits contain no exact duplicates across classes)
    train_rows = {tuple(r.tolist()) for r in d0.x_train}
    overlap = sum(tuple(r.tolist()) in train_rows for r in d0.x_test)
    assert overlap <= 2
    assert get_task("digits-cnn").load_data(0).x_train.shape[1:] == (1, 8, 8)


def test_mlp_keys_and_shapes_follow_the_contract():
    sd = get_task("digits-mlp").build_model(width=24, seed=0).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "fc1.weight": (24, 64), "fc1.bias": (24,), "fc2.weight": (24, 24), "fc2.bias": (24,),
        "fc3.weight": (10, 24), "fc3.bias": (10,),
    }  # fmt: skip


def test_cnn_keys_and_shapes_follow_the_contract():
    sd = get_task("digits-cnn").build_model(width=8, seed=0).state_dict()
    assert tuple(sd["conv1.weight"].shape) == (8, 1, 3, 3)
    assert tuple(sd["conv2.weight"].shape) == (16, 8, 3, 3)
    assert tuple(sd["bn2.running_var"].shape) == (16,)
    assert sd["fc.weight"].shape[0] == 10
    assert all(k.split(".")[0] in {"conv1", "bn1", "conv2", "bn2", "fc"} for k in sd)


def test_seed_fixes_init_and_does_not_touch_global_rng():
    spec = get_task("digits-mlp")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = spec.build_model(16, seed=5).state_dict()
    after = torch.rand(1)
    b = spec.build_model(16, seed=5).state_dict()
    c = spec.build_model(16, seed=6).state_dict()
    assert torch.equal(before, after)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


def test_trained_mlp_beats_chance_by_a_wide_margin(mlp_trained):
    sd, metrics = mlp_trained
    assert metrics["test_accuracy"] > 0.85  # chance is 0.10
    again = evaluate("digits-mlp", sd, "cpu")
    assert again["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert len(metrics["history"]) == 8
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]


def test_training_is_deterministic_for_a_seed():
    a, _ = train_model("digits-mlp", seed=2, epochs=1, width=8)
    b, _ = train_model("digits-mlp", seed=2, epochs=1, width=8)
    c, _ = train_model("digits-mlp", seed=4, epochs=1, width=8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


def test_trained_cnn_with_adam_beats_chance_and_recalibration_works():
    sd, metrics = train_model("digits-cnn", seed=0, optimizer="adam", epochs=3, width=8)
    assert metrics["test_accuracy"] > 0.8
    # wreck the running stats: recalibration must repair them
    broken = dict(sd)
    broken["bn2.running_mean"] = torch.full_like(sd["bn2.running_mean"], 5.0)
    bad = evaluate("digits-cnn", broken, "cpu")["accuracy"]
    fixed = evaluate("digits-cnn", broken, "cpu", recalibrate_bn=True)["accuracy"]
    assert fixed > bad + 0.2
    assert fixed > 0.8


def test_model_from_state_dict_infers_width_and_checks_keys(mlp_trained):
    sd, _ = mlp_trained
    model = model_from_state_dict("digits-mlp", sd)
    assert model.fc1.weight.shape == (32, 64) and not model.training
    assert torch.equal(model.fc2.weight, sd["fc2.weight"])
    missing = {k: v for k, v in sd.items() if k != "fc3.bias"}
    with pytest.raises(MismatchError, match="fc3.bias"):
        model_from_state_dict("digits-mlp", missing)
    with pytest.raises(MismatchError, match="fc1.weight"):
        model_from_state_dict("digits-cnn", sd)
    bad = dict(sd, **{"fc3.weight": torch.zeros(10, 5)})
    with pytest.raises(MismatchError, match="shape"):
        model_from_state_dict("digits-mlp", bad)


def test_evaluator_plugin_contract_and_train_split(mlp_trained):
    sd, metrics = mlp_trained
    ev = task_evaluator("digits-mlp", split="train")
    out = ev({k: v.double() for k, v in sd.items()}, torch.device("cpu"))  # other dtypes are cast
    assert set(out) == {"loss", "accuracy"}
    assert out["accuracy"] == pytest.approx(metrics["train_accuracy"])


def test_train_subset_and_bad_arguments():
    idx = torch.arange(0, 200)
    _, m = train_model("digits-mlp", seed=0, epochs=1, width=8, train_indices=idx)
    assert m["n_train"] == 200
    with pytest.raises(InvalidValueError):
        train_model("digits-mlp", optimizer="lbfgs", epochs=1)
    with pytest.raises(InvalidValueError):
        train_model("digits-mlp", lr=-1.0, epochs=1)
    with pytest.raises(InvalidValueError):
        train_model("digits-mlp", wsa_coef=-0.1, epochs=1)


def test_small_model_threads_restores_the_setting(monkeypatch):
    from wsa_cli.threads import SMALL_MODEL_PARAMS, small_model_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the user's setting would win

    before = torch.get_num_threads()
    with small_model_threads("cpu", 1000):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with small_model_threads("cpu", SMALL_MODEL_PARAMS + 1):
        assert torch.get_num_threads() == before
    with pytest.raises(KeyError), small_model_threads("cpu", 10):
        raise KeyError("boom")
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with small_model_threads("cpu", 1000):  # OMP_NUM_THREADS overrides the policy, as for merges
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
