"""``wsa sweep``: in-memory merges score exactly what ``wsa merge`` writes; the front; Ctrl-C; resume; --write; surrogate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wsa_cli.interpolate.evaluators import resolve_evaluator
from wsa_cli.io import open_checkpoint
from wsa_cli.sweep import grid_points, pareto_front, parse_grid, point_recipe, prepare_sweep, run_sweep
from wsa_cli.sweep.grid import recipe_data
from wsa_cli.sweep.surrogate import design_points, fit_quadratic

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "recipes" / "models"
PLUGIN = Path(__file__).parent / "interpolate_plugin_eval.py"

TIES = """models:
  - {models}/mlp-ft-a.safetensors
  - {models}/mlp-ft-b.safetensors
  - {models}/mlp-ft-c.safetensors
base: {models}/mlp-base.safetensors
method: ties
parameters:
  density: 0.3
overrides:
  - match: "*.bias"
    method: linear
output: out/ties.safetensors
"""


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    p = tmp_path / "ties.yaml"
    p.write_text(TIES.format(models=MODELS))
    return p


def test_grid_matches_wsa_merge_to_file_exactly(recipe: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    """Each point merged in memory gives the metrics of `wsa merge` of that point's recipe to a file, evaluated from the file."""
    grid = ["models[1].weight=0:1:3", "density=0.2,0.8"]
    setup = prepare_sweep(recipe, grid=grid, evaluator="digits-mlp")
    result = run_sweep(setup, device="cpu")
    assert len(result.points) == 6 and result.inputs_opened == 1
    ev = resolve_evaluator("digits-mlp")
    data = recipe_data(setup.recipe)
    for row, point in zip(result.points, grid_points(parse_grid(grid)), strict=True):
        r = point_recipe(recipe, data, point)
        p = tmp_path / f"p{row['index']}.yaml"
        p.write_text(r.text.replace("out/ties.safetensors", f"out/p{row['index']}.safetensors"))
        res = cli("merge", str(p), "--device", "cpu", "--json")
        assert res.exit_code == 0, res.stderr
        with open_checkpoint(tmp_path / "out" / f"p{row['index']}.safetensors") as reader:
            from_file = ev(reader.state_dict(), torch.device("cpu"))
        assert row["metrics"] == from_file, row["point"]
    assert len({r["metrics"]["loss"] for r in result.points}) == 6  # the grid really changes the merge


def test_pareto_front_against_hand_computed() -> None:
    rows = [
        {"loss": 0.30, "accuracy": 0.90},  # 0: front (lowest loss)
        {"loss": 0.35, "accuracy": 0.93},  # 1: front
        {"loss": 0.40, "accuracy": 0.92},  # 2: dominated by 1
        {"loss": 0.50, "accuracy": 0.95},  # 3: front (best accuracy)
        {"loss": 0.30, "accuracy": 0.89},  # 4: dominated by 0 (equal loss, worse accuracy)
        {"loss": None, "accuracy": 0.99},  # 5: missing loss: never on the front
        {"loss": 0.35, "accuracy": 0.93},  # 6: equal to 1: neither dominates, both on it
    ]
    assert pareto_front(rows, {"loss": "min", "accuracy": "max"}) == [0, 1, 3, 6]
    assert pareto_front(rows, {"loss": "max", "accuracy": "max"}) == [3]  # both maximised: 3 is best on both


def test_directions_and_best(recipe: Path) -> None:
    setup = prepare_sweep(recipe, grid=["density=0.2,0.8"], evaluator="digits-mlp", directions=["accuracy=min"])
    res = run_sweep(setup, device="cpu")
    accs = [r["metrics"]["accuracy"] for r in res.points]
    assert res.directions == {"loss": "min", "accuracy": "min"}
    assert res.row(res.best["accuracy"])["metrics"]["accuracy"] == min(accs)


def test_recipe_sweep_block_and_cli_table(tmp_path: Path, cli) -> None:  # noqa: ANN001
    p = tmp_path / "s.yaml"
    p.write_text(TIES.format(models=MODELS) + "sweep:\n  grid:\n    density: [0.2, 0.9]\n    models[0].weight: 0:1:2\n  eval: digits-mlp\n")
    res = cli("sweep", str(p), "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["format"] == "wsa-sweep" and doc["evaluated"] == 4
    assert [a["path"] for a in doc["axes"]] == ["parameters.density", "models[0].weight"]
    assert set(doc["front"]) <= {r["index"] for r in doc["points"]}
    csv = cli("sweep", str(p), "--device", "cpu", "--format", "csv")
    assert csv.exit_code == 0 and csv.stdout.splitlines()[0].startswith("index,parameters.density,models[0].weight,loss,accuracy,front")


def test_write_best_goes_through_the_merge_path(recipe: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    res = cli("sweep", str(recipe), "--grid", "density=0.2,0.8", "--eval", "digits-mlp", "--write", "best:accuracy", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    best = doc["best"]["accuracy"]
    out = tmp_path / "out" / f"ties-p{best}.safetensors"
    assert doc["written"][0]["output"] == str(out) and out.is_file()
    report = Path(doc["written"][0]["report"])
    assert report.is_file() and report.parent == out.parent and json.loads(report.read_text())["format"] == "wsa-merge-report"
    filled = (tmp_path / "out" / f"ties-p{best}.recipe.yaml").read_text()
    density = doc["points"][best]["point"]["parameters.density"]
    assert f"density: {density}" in filled
    with open_checkpoint(out) as reader:
        metrics = resolve_evaluator("digits-mlp")(reader.state_dict(), torch.device("cpu"))
    assert metrics == doc["points"][best]["metrics"]
    again = cli("sweep", str(recipe), "--grid", "density=0.2,0.8", "--eval", "digits-mlp", "--write", "best:accuracy", "--device", "cpu")
    assert again.exit_code == 7  # an existing output needs --force


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--grid", "models[7].weight=0,1"], 2, "outside"),
    (["--grid", "density"], 2, "PATH=VALUES"),
    (["--grid", "density=0.2", "--eval", "no-such-evaluator"], 2, "evaluator"),
    (["--grid", "density=0.2", "--write", "best"], 2, "--write"),
    (["--grid", "density=0.2", "--front", "loss"], 2, "two or more"),
    (["--grid", "density=0.2", "--limit", "3"], 2, "hf-*"),
])  # fmt: skip
def test_bad_options_are_one_line_errors(recipe: Path, cli, args: list[str], code: int, text: str) -> None:  # noqa: ANN001
    full = [*args, "--eval", "digits-mlp"] if "--eval" not in args else args
    res = cli("sweep", str(recipe), *full, "--device", "cpu")
    assert res.exit_code == code, (res.stdout, res.stderr)
    assert text in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


SLOW = '''import time
def slow(state_dict, device):
    time.sleep(0.4)
    return {"loss": float(sum(float(t.double().sum()) for t in state_dict.values())), "accuracy": 0.5}
'''


def test_ctrl_c_returns_finished_points_and_resumes(recipe: Path, tmp_path: Path) -> None:
    (tmp_path / "slow_eval.py").write_text(SLOW)
    state = tmp_path / "state.json"
    cmd = [sys.executable, "-m", "wsa_cli", "sweep", str(recipe), "--grid", "density=0:1:12", "--eval", "slow_eval.py:slow",
           "--state", str(state), "--device", "cpu", "--json", "--write", "front"]  # fmt: skip
    env = {**os.environ, "WSA_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        if state.is_file() and len(json.loads(state.read_text())["done"]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["interrupted"] is True and 2 <= doc["evaluated"] < 12 and doc["written"] == []
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written, nothing written
    saved = json.loads(state.read_text())
    assert len(saved["done"]) == doc["evaluated"] and "interrupted" in err
    done = doc["evaluated"]
    res = subprocess.run(cmd[:-2], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    full = json.loads(res.stdout)
    assert full["evaluated"] == 12 and not full["interrupted"] and f"resumed {done} point(s)" in res.stderr
    assert [r["metrics"] for r in full["points"][:done]] == [r["metrics"] for r in doc["points"]]


def test_state_of_another_sweep_is_refused(recipe: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    state = tmp_path / "state.json"
    assert cli("sweep", str(recipe), "--grid", "density=0.2", "--eval", "digits-mlp", "--state", str(state), "--device", "cpu").exit_code == 0
    res = cli("sweep", str(recipe), "--grid", "density=0.3", "--eval", "digits-mlp", "--state", str(state), "--device", "cpu")
    assert res.exit_code == 6 and "another sweep" in res.stderr


def test_quadratic_fit_recovers_a_quadratic() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 2, size=(12, 2))
    f = lambda p: 1.0 + 2 * p[:, 0] - p[:, 1] + 0.5 * p[:, 0] ** 2 - 3 * p[:, 0] * p[:, 1] + p[:, 1] ** 2  # noqa: E731
    fit = fit_quadratic(x, f(x))
    test = rng.uniform(-1, 2, size=(5, 2))
    assert np.allclose(fit.predict(test), f(test), atol=1e-9)
    assert design_points(10, 4) == sorted(design_points(10, 4)) and {0, 9} <= set(design_points(10, 4))


def test_surrogate_evaluates_design_and_predicted_front(recipe: Path) -> None:
    setup = prepare_sweep(recipe, grid=["models[1].weight=0:1:5", "density=0.2:0.8:4"], evaluator="digits-mlp", surrogate=8)
    res = run_sweep(setup, device="cpu")
    s = res.surrogate
    assert s is not None and len(s["design"]) == 8 and s["grid_points"] == 20
    evaluated = {r["index"] for r in res.points}
    assert set(s["predicted_front"]) <= evaluated and evaluated == set(s["design"]) | set(s["confirmed"])
    assert s["confirmed"] and not set(s["confirmed"]) & set(s["design"])
    for m in ("loss", "accuracy"):
        e = s["errors"][m]
        assert e["points"] == len(s["confirmed"]) and e["max_abs_error"] >= e["mean_abs_error"] >= 0
        assert s["fit_errors"][m]["points"] == 8
    predicted = {p["index"]: p["metrics"] for p in s["predictions"]}
    assert len(predicted) == 20
    for i in s["confirmed"]:
        row = res.row(i)
        assert row["predicted"] == predicted[i]
        assert abs(row["predicted"]["loss"] - row["metrics"]["loss"]) <= s["errors"]["loss"]["max_abs_error"] + 1e-12


def test_plot(recipe: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    pytest.importorskip("matplotlib")
    png = tmp_path / "front.png"
    res = cli("sweep", str(recipe), "--grid", "density=0.2,0.5,0.8", "--eval", "digits-mlp", "--plot", str(png), "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_points_the_recipe_refuses_are_skipped_and_said(recipe: Path) -> None:
    setup = prepare_sweep(recipe, grid=["models[0].weight=0,1", "models[1].weight=0,1", "models[2].weight=0,1"], evaluator="digits-mlp")
    res = run_sweep(setup, device="cpu")
    assert res.points[0]["metrics"] == {} and "must not all be zero" in res.points[0]["skipped"]
    assert all(r["metrics"] for r in res.points[1:]) and 0 not in res.front
    assert any("1 grid point(s) skipped" in w for w in res.warnings)


def test_multi_stage_recipe_is_refused(tmp_path: Path, cli) -> None:  # noqa: ANN001
    src = ROOT / "recipes" / "multi-stage.yaml"
    shutil.copytree(ROOT / "recipes" / "models", tmp_path / "models")
    shutil.copy(src, tmp_path / "m.yaml")
    res = cli("sweep", str(tmp_path / "m.yaml"), "--grid", "stages[0].parameters.t=0.5", "--eval", "digits-mlp", "--device", "cpu")
    assert res.exit_code == 2 and "single-stage" in res.stderr


def test_several_evaluators_give_labelled_metrics(recipe: Path) -> None:
    grid = ["density=0.2,0.8"]
    both = run_sweep(prepare_sweep(recipe, grid=grid, evaluator=["digits-mlp", f"bump={PLUGIN}:bump"]), device="cpu")
    alone = run_sweep(prepare_sweep(recipe, grid=grid, evaluator=f"{PLUGIN}:bump"), device="cpu")
    digits = run_sweep(prepare_sweep(recipe, grid=grid, evaluator="digits-mlp"), device="cpu")
    assert both.metrics == ["digits-mlp.loss", "digits-mlp.accuracy", "bump.loss", "bump.accuracy", "bump.norm"]
    assert both.directions["bump.loss"] == "min" and both.directions["digits-mlp.accuracy"] == "max"
    for r, a, d in zip(both.points, alone.points, digits.points, strict=True):
        assert r["metrics"] == {**{f"digits-mlp.{k}": v for k, v in d["metrics"].items()}, **{f"bump.{k}": v for k, v in a["metrics"].items()}}


def test_a_key_no_point_accepts_is_an_error(recipe: Path, cli) -> None:  # noqa: ANN001
    res = cli("sweep", str(recipe), "--grid", "parameters.densty=0.2,0.5", "--eval", "digits-mlp", "--device", "cpu")
    assert res.exit_code == 6 and "every grid point was refused" in res.stderr and "densty" in res.stderr


def test_progress_is_announced_and_called_per_point(recipe: Path) -> None:
    calls: list[tuple[int, str]] = []
    totals: list[int] = []

    def report(n: int, label: str) -> None:
        calls.append((n, label))

    report.set_total = totals.append  # type: ignore[attr-defined]
    run_sweep(prepare_sweep(recipe, grid=["density=0.2,0.5,0.8"], evaluator="digits-mlp"), device="cpu", progress=report)
    assert totals == [3] and [n for n, _ in calls] == [1, 1, 1] and calls[0][1] == "parameters.density=0.2"


def test_permuted_fp_recipe_matches_wsa_merge_exactly(tmp_path: Path, cli) -> None:  # noqa: ANN001
    """A permutation block with rescale: fp permutes and rescales when the inputs are opened; a swept target must reopen them."""
    shutil.copytree(ROOT / "recipes" / "models", tmp_path / "models")
    shutil.copytree(ROOT / "recipes" / "specs", tmp_path / "specs")
    recipe = tmp_path / "p.yaml"
    shutil.copy(ROOT / "recipes" / "permuted-fp.yaml", recipe)
    grid = ["models[1].weight=1,3", "scope.target=fused,{model: 1}"]
    setup = prepare_sweep(recipe, grid=grid, evaluator="digits-mlp")
    result = run_sweep(setup, device="cpu")
    ev = resolve_evaluator("digits-mlp")
    data = recipe_data(setup.recipe)
    out = setup.recipe.stages[-1].output.path
    for row in result.points:
        r = point_recipe(recipe, data, row["point"])
        p = tmp_path / f"p{row['index']}.yaml"
        target = out.with_name(f"p{row['index']}{out.suffix}")
        p.write_text(r.text.replace(str(out.relative_to(tmp_path)), str(target.relative_to(tmp_path))))
        res = cli("merge", str(p), "--device", "cpu", "--json")
        assert res.exit_code == 0, res.stderr
        with open_checkpoint(target) as reader:
            assert row["metrics"] == ev(reader.state_dict(), torch.device("cpu")), row["point"]
    assert result.inputs_opened == 4 and len({r["metrics"]["loss"] for r in result.points}) == 4


MARKING = '''import time
from pathlib import Path
def slow(state_dict, device):
    time.sleep(0.3)
    with open(Path(__file__).with_name("calls.txt"), "a") as f:
        f.write("x\\n")
    return {"loss": float(sum(float(t.double().sum()) for t in state_dict.values())), "accuracy": 0.5}
'''


def test_ctrl_c_without_state_saves_one_next_to_the_run(recipe: Path, tmp_path: Path) -> None:
    (tmp_path / "mark_eval.py").write_text(MARKING)
    cmd = [sys.executable, "-m", "wsa_cli", "sweep", str(recipe), "--grid", "density=0:1:12", "--eval", "mark_eval.py:slow",
           "--device", "cpu", "--json"]  # fmt: skip
    env = {**os.environ, "WSA_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    calls = tmp_path / "calls.txt"
    deadline = time.time() + 60
    while time.time() < deadline and not (calls.is_file() and len(calls.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    state = tmp_path / "ties.sweep-state.json"
    assert doc["state"] == "ties.sweep-state.json" and state.is_file() and f"--state {doc['state']}" in err
    assert len(json.loads(state.read_text())["done"]) == doc["evaluated"] >= 2


def test_wsa_merge_refuses_a_sweep_block_at_its_line_and_names_the_way(tmp_path, cli):
    from safetensors.torch import save_file

    for name in ("a", "b"):
        save_file({"w": torch.randn(4, 4)}, str(tmp_path / f"{name}.safetensors"))
    recipe = tmp_path / "s.yaml"
    recipe.write_text("models: [a.safetensors, b.safetensors]\noutput: m.safetensors\nsweep:\n  grid: ['models[1].weight=0,1']\n")
    res = cli("merge", str(recipe))
    assert res.exit_code == 6 and "s.yaml:3:" in res.stderr and "wsa sweep RECIPE --write" in res.stderr
    assert not (tmp_path / "m.safetensors").exists()
