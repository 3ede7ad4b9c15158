"""Every example recipe in recipes/ runs end to end, and its output loads with plain safetensors.

The recipes are copied to a temporary folder first (with their small input models), so the
repository is never written to. Merges of fine-tunes of one base (and the permuted merge) must
also still classify digits well -- a check that the merge did something sensible, not a golden value.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.io import open_checkpoint
from wsa_cli.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ALL = sorted(p.name for p in RECIPES.glob("*.yaml"))
#: recipes that merge models able to work together (same base, or permuted first)
GOOD_MERGES = {"average.yaml", "task-arithmetic.yaml", "ties.yaml", "dare-ties.yaml", "slerp.yaml", "multi-stage.yaml",
               "scope-file-target.yaml", "permuted.yaml", "permuted-wsa.yaml"}  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("work") / "recipes"
    shutil.copytree(RECIPES, d, ignore=shutil.ignore_patterns("out", "__pycache__"))
    return d


def test_every_recipe_is_listed():
    assert len(ALL) >= 8 and GOOD_MERGES <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_recipe_runs(workdir: Path, name: str) -> None:
    recipe = workdir / name
    res = CliRunner().invoke(app, ["merge", str(recipe), "--device", "cpu", "--format", "json", "--force"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    out = Path(result["stages"][-1]["output"])
    assert out.exists()
    files = [out] if out.suffix == ".safetensors" else sorted(out.glob("*.safetensors"))
    merged: dict[str, torch.Tensor] = {}
    for f in files:
        merged.update(load_file(f))  # plain safetensors reads it
    first = load_recipe(recipe).stages[0].models[0].path
    with open_checkpoint(first) as ref:
        assert set(merged) == set(ref.keys())
    assert all(torch.isfinite(t.float()).all() for t in merged.values())
    assert Path(result["stages"][-1]["report"]).exists()
    if name in GOOD_MERGES:
        from wsa_cli.tasks import evaluate

        acc = evaluate("digits-mlp", {k: v.float() for k, v in merged.items()}, "cpu")["accuracy"]
        assert acc > 0.8, f"{name}: accuracy {acc:.3f}"


def test_folder_recipe_layout(workdir: Path) -> None:
    res = CliRunner().invoke(app, ["merge", str(workdir / "cnn-folder.yaml"), "--device", "cpu", "--json", "--force"])
    assert res.exit_code == 0, res.output
    out = workdir / "out" / "cnn-merged"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert (out / "config.json").read_text() == (workdir / "models" / "cnn-1" / "config.json").read_text()
    merged = open_checkpoint(out).state_dict()
    assert merged["conv1.weight"].dtype == torch.bfloat16
    first = load_file(workdir / "models" / "cnn-1" / "model.safetensors")
    assert torch.equal(merged["bn1.num_batches_tracked"], first["bn1.num_batches_tracked"])
