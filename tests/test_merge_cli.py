"""CLI surface of `wsa methods`, `wsa scope fuse` and `wsa merge` output formats; K = 1 identity."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wsa_cli.io import save_safetensors


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(3)
    for name in ("a", "b"):
        save_safetensors({"l1.weight": torch.randn(6, 5, generator=g) * 2, "l1.bias": torch.randn(6, generator=g),
                          "l2.weight": torch.randn(3, 6, generator=g)}, tmp_path / f"{name}.safetensors")  # fmt: skip
    return tmp_path / "a.safetensors", tmp_path / "b.safetensors"


def test_methods_json_and_csv(cli):
    res = cli("methods", "--json")
    assert res.exit_code == 0
    methods = {m["name"]: m for m in json.loads(res.stdout)["methods"]}
    assert methods["ties"]["needs_base"] is True and methods["slerp"]["models"] == "2"
    assert {p["name"]: p["default"] for p in methods["ties"]["parameters"]} == {"density": 0.2, "scale": 1.0, "tie_rule": "threshold"}
    ranges = {p["name"]: p["range"] for p in methods["ties"]["parameters"]}
    assert ranges == {"density": "[0, 1]", "scale": None, "tie_rule": "threshold | exact"}
    assert {p["name"]: p["range"] for p in methods["dare_linear"]["parameters"]}["drop_rate"] == "[0, 1)"
    res = cli("methods", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert res.exit_code == 0 and [r["name"] for r in rows] == sorted(r["name"] for r in rows)
    ties = next(r for r in rows if r["name"] == "ties")
    assert ties["parameters"] == "density=0.2 in [0, 1]; scale=1.0; tie_rule=threshold in threshold | exact"
    assert cli("methods", "--format", "table").exit_code == 0


def test_k1_merge_is_identity(tmp_path, pair, cli):
    (tmp_path / "r.yaml").write_text("models: [a.safetensors]\noutput: one.safetensors\n")
    res = cli("merge", str(tmp_path / "r.yaml"), "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    out, src = load_file(tmp_path / "one.safetensors"), load_file(pair[0])
    for k in src:
        torch.testing.assert_close(out[k], src[k], rtol=1e-6, atol=1e-6)


def test_merge_table_and_csv_output(tmp_path, pair, cli):
    (tmp_path / "r.yaml").write_text("models: [a.safetensors, b.safetensors]\noutput: m.safetensors\n")
    res = cli("merge", str(tmp_path / "r.yaml"), "--device", "cpu", "--format", "csv")
    assert res.exit_code == 0, res.output
    row = next(csv.DictReader(io.StringIO(res.stdout)))
    assert row["tensors"] == "3" and row["aligned"] == "2" and row["constant_not_rescaled"] == "0"
    res = cli("merge", str(tmp_path / "r.yaml"), "--device", "cpu", "--format", "table", "--force", "--quiet")
    assert res.exit_code == 0 and "linear" in res.stdout and res.stderr == ""
    res = cli("merge", str(tmp_path / "r.yaml"), "--device", "cpu", "--format", "table", "--force", "--dry-run")
    assert res.exit_code == 0 and "l1.weight" in res.stdout and "dry run" in res.stdout


def test_scope_fuse_formats_and_errors(tmp_path, pair, cli):
    a, b = map(str, pair)
    res = cli("scope", "fuse", a, b, "-o", str(tmp_path / "s.json"), "--fusion", "precision", "--include", "*.bias",
               "--format", "csv", "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert {r["key"] for r in csv.DictReader(io.StringIO(res.stdout))} == {"l1.weight", "l1.bias", "l2.weight"}
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["fusion"] == "precision" and data["layers"]["l1.weight"]["numel"] == 30
    assert data["sources"] == [a, b]
    cases = [
        (["scope", "fuse", a, "-o", str(tmp_path / "x.json"), "--fusion", "median"], 2, "unknown fusion method"),
        (["scope", "fuse", a, b, "-o", str(tmp_path / "x.json"), "--weights", "1"], 2, "1 weights for 2 checkpoints"),
        (["scope", "fuse", a, "-o", str(tmp_path / "x.txt")], 2, "ends in .json"),
        (["scope", "fuse", str(tmp_path / "nope.safetensors"), "-o", str(tmp_path / "x.json")], 3, "no such file"),
        (["scope", "fuse", a, "-o", str(tmp_path / "x.json"), "--exclude", "*"], 2, "no tensor is a layer"),
        (["scope", "fuse", a, "-o", a.replace(".safetensors", ".json"), "--device", "cuda"], 9, "CUDA")
        if not torch.cuda.is_available() else (["scope", "fuse", a, "-o", str(tmp_path / "s.json")], 7, "exists"),
    ]
    save_safetensors({"l1.weight": torch.zeros(6, 4)}, tmp_path / "c.safetensors")
    cases.append((["scope", "fuse", a, str(tmp_path / "c.safetensors"), "-o", str(tmp_path / "y.json")], 5, "shape"))
    for args, code, msg in cases:
        res = cli(*args)
        assert res.exit_code == code, (args, res.output)
        assert msg in res.stderr and res.stderr.startswith("error: "), res.stderr
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_pickled_inputs_merge_to_safetensors(tmp_path, cli):
    g = torch.Generator().manual_seed(1)
    a = {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.randn(4, generator=g)}
    b = {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.randn(4, generator=g)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in a.items()}}, tmp_path / "a.pt")  # Lightning/DDP style
    torch.save(b, tmp_path / "b.pt")
    (tmp_path / "r.yaml").write_text("models: [a.pt, b.pt]\nscope: {align: false}\noutput: m.safetensors\n")
    res = cli("merge", str(tmp_path / "r.yaml"), "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    out = load_file(tmp_path / "m.safetensors")
    for k in a:
        torch.testing.assert_close(out[k], (a[k] + b[k]) / 2)


def test_scope_file_measured_on_other_sizes_is_warned_not_refused(tmp_path, pair, cli):
    """A scope file fused from differently sized layers still applies, but wsa says so (dry run and run)."""
    g = torch.Generator().manual_seed(9)
    wide = tmp_path / "wide.safetensors"
    save_safetensors({"l1.weight": torch.randn(8, 5, generator=g), "l1.bias": torch.randn(8, generator=g),
                      "l2.weight": torch.randn(3, 8, generator=g)}, wide)  # fmt: skip
    assert cli("scope", "fuse", str(wide), "-o", str(tmp_path / "wide.json"), "--quiet").exit_code == 0
    assert cli("scope", "fuse", str(pair[0]), "-o", str(tmp_path / "same.json"), "--quiet").exit_code == 0
    for scopes, warned in (("wide.json", True), ("same.json", False)):
        (tmp_path / "r.yaml").write_text(f"models: [a.safetensors, b.safetensors]\nscope: {{target: {scopes}}}\noutput: m.safetensors\n")
        for extra in (["--dry-run"], []):
            res = cli("merge", str(tmp_path / "r.yaml"), "--device", "cpu", "--json", "--force", *extra)
            assert res.exit_code == 0, res.output
            stage = json.loads(res.stdout)["stages"][0]
            if warned:
                assert "2 layer(s) of the scope file were measured on tensors of another size" in res.stderr
                assert "'l1.weight': 40 values there, 30 here" in res.stderr and len(stage["warnings"]) == 1
            else:
                assert "warning" not in res.stderr and stage["warnings"] == []


def test_a_yaml_with_o_is_a_mergekit_config_or_an_error_about_that_file(tmp_path, cli):  # noqa: ANN001
    """``wsa merge X.yml -o OUT``: a missing X or a wsa recipe is named as such, not read as a checkpoint."""
    missing = cli("merge", str(tmp_path / "gone.yml"), "-o", str(tmp_path / "out"))
    assert missing.exit_code == 3 and "gone.yml: recipe or mergekit config not found" in missing.stderr, missing.stderr
    (tmp_path / "r.yaml").write_text("models: [a.safetensors]\noutput: one.safetensors\n")
    recipe = cli("merge", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out"))
    assert recipe.exit_code == 2 and "r.yaml: a wsa recipe names its own output; drop -o" in recipe.stderr, recipe.stderr
    assert len(recipe.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists() and not (tmp_path / "one.safetensors").exists()
