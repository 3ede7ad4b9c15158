"""`wsa demo --quick`: the same steps as the full demo, end to end, into one folder."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.demo import MODELS, PAIRS, render_report
from wsa_cli.demo.runner import prepare_out_dir
from wsa_cli.errors import OutputError
from wsa_cli.tasks import evaluate

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "wsa-demo"
    res = runner.invoke(app, ["demo", "--quick", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout), res.stderr


def test_demo_writes_everything_into_its_folder(demo_run):
    out, summary, _ = demo_run
    for rel in summary["files"]:
        assert (out / rel).is_file(), rel
    assert {p.name for p in out.iterdir()} == {"models", "recipes", "merged", "interpolate", "inspect.json", "summary.json", "report.md"}
    assert json.loads((out / "summary.json").read_text())["config"]["quick"] is True


def test_demo_models_are_real_checkpoints(demo_run):
    out, summary, _ = demo_run
    assert set(summary["models"]) == {m[0] for m in MODELS}
    for name, info in summary["models"].items():
        sd = load_file(out / info["path"])
        acc = evaluate("digits-mlp", sd, "cpu")["accuracy"]
        assert acc == pytest.approx(info["test_accuracy"])
        assert acc > 0.5  # quick mode trains 4 epochs: far above chance (0.1)


def test_demo_merges_used_recipes_and_load(demo_run):
    out, summary, _ = demo_run
    merges = {m["name"]: m for m in summary["merges"]}
    assert merges["average-sgd-adam-plain"]["align"] is False and merges["average-sgd-adam-aligned"]["align"] is True
    assert "recipes/average.yaml" in merges["average-sgd-adam-aligned"]["template"]
    assert "recipes/permuted-wsa.yaml" in merges["permuted-wsa-seeds"]["template"]
    for m in merges.values():
        recipe = (out / m["recipe"]).read_text()
        assert "wsa demo" in recipe and "models:" in recipe
        sd = load_file(out / m["output"])
        assert evaluate("digits-mlp", sd, "cpu")["accuracy"] == pytest.approx(m["accuracy"])
    # averaging two models from different inits is worse than the models themselves (permutation symmetry)
    seeds = merges["average-seeds-plain"]
    assert seeds["accuracy"] < min(seeds["accuracy_a"], seeds["accuracy_b"])


def test_demo_barrier_table_and_inspect(demo_run):
    out, summary, _ = demo_run
    modes = {(b["pair"], b["mode"]) for b in summary["barriers"]}
    for pair, *_ in PAIRS:
        assert (pair, "naive") in modes and (pair, "wsa") in modes
        data = json.loads((out / "interpolate" / f"{pair}.json").read_text())
        assert data["format"] == "wsa-interpolate" and len(data["alphas"]) == 5
    assert ("seed0-vs-seed1", "permuted") in modes
    for b in summary["barriers"]:
        assert b["loss_barrier"] >= 0
    inspect = json.loads((out / "inspect.json").read_text())
    assert set(inspect) == {p[0] for p in PAIRS}
    assert {row["key"] for row in inspect["sgd-vs-adam"]["layers"]} == {"fc1.weight", "fc2.weight", "fc3.weight"}


def test_demo_report_and_progress(demo_run):
    out, _, stderr = demo_run
    report = (out / "report.md").read_text()
    for heading in ("## 1. Trained models", "## 2. Layer scopes", "## 3. Merged models", "## 4. Interpolation barriers",
                    "## 5. What the numbers mean"):  # fmt: skip
        assert heading in report
    assert "loss barrier" in report and "sgd-seed0 -> sgd-seed1" in report
    assert "[1/" in stderr and "done" in stderr


def test_demo_refuses_to_clobber(demo_run, tmp_path):
    out, _, _ = demo_run
    before = (out / "summary.json").read_bytes()
    res = runner.invoke(app, ["demo", "--quick", "-o", str(out)])
    assert res.exit_code == 7 and "--force" in res.stderr
    assert (out / "summary.json").read_bytes() == before
    prepare_out_dir(out, force=True)  # --force: allowed, keeps the folder
    assert (out / "summary.json").exists()
    nested = tmp_path / "runs" / "demo1"
    prepare_out_dir(nested, force=False)  # missing parents are created
    assert (nested / "models").is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError):
        prepare_out_dir(f, force=True)
    res = runner.invoke(app, ["demo", "--quick", "-o", str(f)])
    assert res.exit_code == 7 and res.stderr.strip().splitlines() == [f"error: {f}: demo output exists and is not a folder"]
    res = runner.invoke(app, ["demo", "--quick", "-o", str(out)])  # the refusal is the only stderr line
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error:")
    assert runner.invoke(app, ["demo", "--quick", "-o", str(out), "-f", "csv"]).exit_code == 2


def test_report_wording_follows_the_numbers():
    """The plain-words section must say 'worse' when alignment hurt, not claim a gain."""
    base = {
        "config": {"task": "digits-mlp", "width": 8, "epochs": 1, "wsa_coef": 0.1, "out_dir": "d"},
        "seconds": 1.0, "models": {}, "scopes": {}, "files": [],
        "merges": [
            {"name": "average-sgd-adam-plain", "template": "recipes/average.yaml", "align": False, "accuracy": 0.90, "accuracy_a": 0.9, "accuracy_b": 0.9},
            {"name": "average-sgd-adam-aligned", "template": "recipes/average.yaml", "align": True, "accuracy": 0.80, "accuracy_a": 0.9, "accuracy_b": 0.9},
            {"name": "average-sgd-adam-wsa-trained", "template": "recipes/average.yaml", "align": True, "accuracy": 0.70, "accuracy_a": 0.8, "accuracy_b": 0.8},
        ],
        "barriers": [
            {"pair": "sgd-vs-adam", "what": "w", "a": "A", "b": "B", "mode": "naive", "loss_barrier": 0.1, "acc_barrier": 0.0, "mid_accuracy": 0.9},
            {"pair": "sgd-vs-adam", "what": "w", "a": "A", "b": "B", "mode": "wsa", "loss_barrier": 0.5, "acc_barrier": 0.0, "mid_accuracy": 0.9},
        ],
    }  # fmt: skip
    text = render_report(base)
    assert "gives 0.800 (worse)" in text
    assert "the regularizer made the merge worse" in text
    assert "0.500 with both ends rescaled onto the fused scope (worse)" in text
    base["merges"][1]["accuracy"] = 0.905
    base["barriers"][1]["loss_barrier"] = 0.11
    text = render_report(base)
    assert "gives 0.905 (about the same)" in text and "(about the same)" in text


def test_demo_bad_device_leaves_no_folder(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--quick", "-o", str(out), "--device", "cuda:x"])
    assert res.exit_code == 9
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
