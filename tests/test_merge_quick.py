"""`wsa merge A B -o OUT [--method M --base B --param k=v ...]`: a merge without a YAML file, run as its recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wsa_cli.io import save_safetensors


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    g = torch.Generator().manual_seed(4)
    for name in ("base", "a", "b"):
        save_safetensors({"l1.weight": torch.randn(6, 5, generator=g), "l1.bias": torch.randn(6, generator=g),
                          "l2.weight": torch.randn(3, 6, generator=g)}, tmp_path / f"{name}.safetensors")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_command_line_merge_equals_the_same_recipe_file(models: Path, cli) -> None:  # noqa: ANN001
    quick = cli("merge", "a.safetensors", "b.safetensors", "-o", "q.safetensors", "--method", "ties", "--base", "base.safetensors",
                "--param", "density=0.5", "--weights", "1,3", "--json")  # fmt: skip
    assert quick.exit_code == 0, quick.stderr
    doc = json.loads(quick.stdout)
    assert doc["format"] == "wsa-merge" and "method: \"ties\"" in doc["recipe_text"]
    (models / "r.yaml").write_text("models:\n  - {path: a.safetensors, weight: 1}\n  - {path: b.safetensors, weight: 3}\n"
                                   "base: base.safetensors\nmethod: ties\nparameters: {density: 0.5}\noutput: f.safetensors\n")  # fmt: skip
    assert cli("merge", "r.yaml", "--json").exit_code == 0
    q, f = load_file(models / "q.safetensors"), load_file(models / "f.safetensors")
    assert q.keys() == f.keys() and all(torch.equal(q[k], f[k]) for k in q)


def test_saved_recipe_runs_from_any_folder(models: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    (models / "keep").mkdir()
    res = cli("merge", "a.safetensors", "b.safetensors", "-o", "out/m.safetensors", "--no-align", "--dtype", "bfloat16",
              "--save-recipe", "keep/m.yaml", "--dry-run", "--json")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    text = (models / "keep" / "m.yaml").read_text()
    assert text.startswith("# recipe built from: wsa merge a.safetensors b.safetensors") and '"../a.safetensors"' in text
    assert not (models / "out").exists()  # a dry run writes the recipe, never the model
    monkeypatch.chdir(models / "keep")
    run = cli("merge", "m.yaml", "--json")
    assert run.exit_code == 0, run.stderr
    merged = load_file(models / "out" / "m.safetensors")
    assert merged["l1.weight"].dtype == torch.bfloat16
    a, b = load_file(models / "a.safetensors"), load_file(models / "b.safetensors")
    torch.testing.assert_close(merged["l1.weight"], ((a["l1.weight"] + b["l1.weight"]) / 2).to(torch.bfloat16))


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["a.safetensors", "b.safetensors"], 2, "give a recipe (wsa merge RECIPE.yaml) or the checkpoints and an output"),
        (["a.safetensors", "-o", "x.safetensors", "--method", "tie"], 6, "unknown merge method 'tie'; did you mean 'ties'?"),
        (["a.safetensors", "b.safetensors", "-o", "x.safetensors", "--param", "density"], 2, "--param 'density': expected NAME=VALUE"),
        (["a.safetensors", "b.safetensors", "-o", "x.safetensors", "--weights", "1"], 2, "--weights '1': 1 weights for 2 checkpoints"),
        (["a.safetensors", "-o", "x.safetensors", "--save-recipe", "r.txt"], 2, "--save-recipe 'r.txt': a recipe file ends in .yaml"),
        (["r.yaml", "--method", "ties"], 2, "--method is for a merge of checkpoints given on the command line"),
        (["a.safetensors", "-o", "x.safetensors", "--save-recipe", "a.safetensors.yaml", "--method", "slerp"], 6, "needs at least 2"),
    ],
)
def test_command_line_merge_errors(models: Path, cli, args, code, message) -> None:  # noqa: ANN001
    (models / "r.yaml").write_text("models: [a.safetensors]\noutput: o.safetensors\n")
    res = cli("merge", *args)
    assert res.exit_code == code, res.stderr
    assert message in res.stderr and res.stderr.count("\n") == 1
    assert not (models / "x.safetensors").exists()
