"""Layer slices (a frankenmerge / depth up-scaling) against a model built by hand from the inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.errors import ConfigError, MismatchError
from wsa_cli.merge.executor import merge_recipe

HIDDEN = 8


def llama(n_layers: int, seed: int, hidden: int = HIDDEN) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(16, hidden, generator=g)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = torch.randn(hidden, hidden, generator=g)
        sd[p + "mlp.up_proj.weight"] = torch.randn(2 * hidden, hidden, generator=g)
        sd[p + "input_layernorm.weight"] = torch.randn(hidden, generator=g)
    sd["model.norm.weight"] = torch.randn(hidden, generator=g)
    sd["lm_head.weight"] = torch.randn(16, hidden, generator=g)
    return sd


@pytest.fixture()
def models(tmp_path: Path) -> dict[str, dict[str, torch.Tensor]]:
    out = {"a": llama(4, 1), "b": llama(4, 2), "c": llama(4, 3, hidden=4)}
    for name, sd in out.items():
        save_file(sd, tmp_path / f"{name}.safetensors")
    return out


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def layer(sd: dict[str, torch.Tensor], i: int, new: int) -> dict[str, torch.Tensor]:
    pre = f"model.layers.{i}."
    return {f"model.layers.{new}." + k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}


def test_frankenmerge_matches_hand_built(tmp_path: Path, models: dict[str, dict[str, torch.Tensor]]) -> None:
    recipe = write(tmp_path, """\
method: passthrough
slices:
  - sources: [{model: a.safetensors, layer_range: [0, 3]}]
  - sources: [{model: b.safetensors, layer_range: [1, 4]}]
output: out.safetensors
""")
    merge_recipe(recipe)
    a, b = models["a"], models["b"]
    want = {"model.embed_tokens.weight": a["model.embed_tokens.weight"]}  # before the layers: the first slice's model
    for i in range(3):
        want |= layer(a, i, i)
    for i, j in enumerate(range(1, 4)):
        want |= layer(b, j, 3 + i)
    want |= {"model.norm.weight": b["model.norm.weight"], "lm_head.weight": b["lm_head.weight"]}  # after: the last slice's
    got = load_file(tmp_path / "out.safetensors")
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_depth_upscaling_repeats_layers_of_one_model(tmp_path: Path, models: dict[str, dict[str, torch.Tensor]]) -> None:
    recipe = write(tmp_path, """\
method: passthrough
slices:
  - sources: [{model: a.safetensors, layer_range: [0, 3]}]
  - sources: [{model: a.safetensors, layer_range: [1, 4]}]
output: out.safetensors
""")
    merge_recipe(recipe)
    got = load_file(tmp_path / "out.safetensors")
    a = models["a"]
    assert {k for k in got if k.startswith("model.layers.")} == {f"model.layers.{i}.{s}" for i in range(6)
                                                              for s in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight")}
    assert torch.equal(got["model.layers.3.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.5.mlp.up_proj.weight"], a["model.layers.3.mlp.up_proj.weight"])


def test_slice_merged_over_two_sources(tmp_path: Path, models: dict[str, dict[str, torch.Tensor]]) -> None:
    recipe = write(tmp_path, """\
method: linear
scope: false
slices:
  - sources: [{model: a.safetensors, layer_range: [0, 2]}, {model: b.safetensors, layer_range: [2, 4]}]
  - sources: [{model: b.safetensors, layer_range: [3, 4]}]
output: out.safetensors
""")
    merge_recipe(recipe)
    got = load_file(tmp_path / "out.safetensors")
    a, b = models["a"], models["b"]
    for i in range(2):
        k = f"model.layers.{i}.self_attn.q_proj.weight"
        want = (a[k] + b[f"model.layers.{i + 2}.self_attn.q_proj.weight"]) / 2
        torch.testing.assert_close(got[k], want, rtol=0, atol=1e-6)
    assert torch.equal(got["model.layers.2.mlp.up_proj.weight"], b["model.layers.3.mlp.up_proj.weight"])
    torch.testing.assert_close(got["model.embed_tokens.weight"], (a["model.embed_tokens.weight"] + b["model.embed_tokens.weight"]) / 2)
    assert torch.equal(got["lm_head.weight"], b["lm_head.weight"])  # the last slice has b only


def test_dry_run_names_input_keys(tmp_path: Path, models: dict[str, dict[str, torch.Tensor]]) -> None:
    recipe = write(tmp_path, """\
method: passthrough
slices:
  - sources: [{model: a.safetensors, layer_range: [2, 4]}]
output: out.safetensors
""")
    res = CliRunner().invoke(app, ["merge", str(recipe), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    tensors = {t["key"]: t for t in json.loads(res.stdout)["stages"][0]["tensors"]}
    assert tensors["model.layers.0.mlp.up_proj.weight"]["from"] == ["a.safetensors:model.layers.2.mlp.up_proj.weight"]
    assert "model.layers.2.mlp.up_proj.weight" not in tensors
    assert not (tmp_path / "out.safetensors").exists()


def test_shapes_checked_before_reading(tmp_path: Path, models: dict[str, dict[str, torch.Tensor]]) -> None:
    recipe = write(tmp_path, """\
method: passthrough
slices:
  - sources: [{model: a.safetensors, layer_range: [0, 2]}]
  - sources: [{model: c.safetensors, layer_range: [0, 2]}]
output: out.safetensors
""")
    with pytest.raises(MismatchError, match="slices do not line up"):
        merge_recipe(recipe, dry_run=True)


def test_layer_range_beyond_model_is_a_config_error_at_its_line(tmp_path: Path, models: dict[str, dict[str, torch.Tensor]]) -> None:
    recipe = write(tmp_path, """\
method: passthrough
slices:
  - sources:
      - model: a.safetensors
        layer_range: [0, 9]
output: out.safetensors
""")
    with pytest.raises(ConfigError, match=r"beyond a.safetensors, which has 4") as info:
        merge_recipe(recipe, dry_run=True)
    assert info.value.line == 5


def test_passthrough_refuses_two_sources(tmp_path: Path, models: dict[str, dict[str, torch.Tensor]]) -> None:
    recipe = write(tmp_path, """\
method: passthrough
slices:
  - sources: [{model: a.safetensors, layer_range: [0, 2]}, {model: b.safetensors, layer_range: [0, 2]}]
output: out.safetensors
""")
    res = CliRunner().invoke(app, ["merge", str(recipe), "--dry-run"])
    assert res.exit_code != 0 and "passthrough" in res.output


def test_copied_config_with_the_old_layer_count_is_warned_about(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    save_file(llama(4, 1), tmp_path / "a" / "model.safetensors")
    (tmp_path / "a" / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    recipe = write(tmp_path, """\
method: passthrough
slices:
  - sources: [{model: a, layer_range: [0, 4]}]
  - sources: [{model: a, layer_range: [2, 4]}]
output: out
""")
    res = merge_recipe(recipe)
    assert any("num_hidden_layers: 4, the slices give 6 layers" in w for w in res.warnings)
    assert (tmp_path / "out" / "config.json").exists()


def test_slices_with_a_base_that_is_one_of_the_sources(tmp_path: Path, models: dict[str, dict[str, torch.Tensor]]) -> None:
    save_file(llama(4, 9), tmp_path / "base.safetensors")
    base = load_file(tmp_path / "base.safetensors")
    recipe = write(tmp_path, """\
method: task_arithmetic
scope: false
base: base.safetensors
parameters: {scale: 0.5}
slices:
  - sources: [{model: base.safetensors, layer_range: [0, 2]}, {model: a.safetensors, layer_range: [0, 2]},
              {model: b.safetensors, layer_range: [0, 2]}]
  - sources: [{model: a.safetensors, layer_range: [3, 4]}, {model: b.safetensors, layer_range: [3, 4]}]
output: out.safetensors
""")
    merge_recipe(recipe)
    got = load_file(tmp_path / "out.safetensors")
    a, b = models["a"], models["b"]
    k = "model.layers.1.mlp.up_proj.weight"  # first slice: base is its own source
    torch.testing.assert_close(got[k], base[k] + 0.5 * (a[k] - base[k] + b[k] - base[k]), rtol=0, atol=1e-5)
    k_in, k_out = "model.layers.3.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight"  # second: the base's same range
    torch.testing.assert_close(got[k_out], base[k_in] + 0.5 * (a[k_in] - base[k_in] + b[k_in] - base[k_in]), rtol=0, atol=1e-5)
