"""mergekit configs run as they are: five configs modelled on mergekit's documentation examples, on
small Llama-shaped inputs, merged and checked against the formulas; misspelt keys refused at their line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.errors import ConfigError
from wsa_cli.merge.executor import merge_recipe
from wsa_cli.recipe import load_recipe
from wsa_cli.recipe.mergekit import is_mergekit_config, load_mergekit, translate_mergekit

H, LAYERS = 8, 4


def llama(seed: int, base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (32, H)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (H, H), p + "self_attn.o_proj.weight": (H, H), p + "mlp.up_proj.weight": (2 * H, H),
                   p + "mlp.down_proj.weight": (H, 2 * H), p + "input_layernorm.weight": (H,)}  # fmt: skip
    shapes |= {"model.norm.weight": (H,), "lm_head.weight": (32, H)}
    if base is None:
        return {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    return {k: base[k] + 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = llama(0)
    for name, sd in {"base": base, "a": llama(1, base), "b": llama(2, base)}.items():
        (tmp_path / name).mkdir()
        save_file(sd, tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": LAYERS}))
    monkeypatch.chdir(tmp_path)  # mergekit resolves model paths from the working directory
    return tmp_path


def state(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(folder / name / "model.safetensors")


def run(folder: Path, text: str, out: str = "out") -> dict[str, torch.Tensor]:
    cfg = folder / "mergekit.yml"
    cfg.write_text(text)
    assert is_mergekit_config(cfg)
    res = CliRunner().invoke(app, ["merge", str(cfg), "-o", out, "--quiet"])
    assert res.exit_code == 0, res.output
    # the printed recipe loads and gives the same merge
    recipe = folder / "wsa.yaml"
    res = CliRunner().invoke(app, ["recipe", "from-mergekit", str(cfg), "--output", "again", "--write", str(recipe), "--force"])
    assert res.exit_code == 0, res.output
    merge_recipe(load_recipe(recipe))
    got, again = load_file(folder / out / "model.safetensors"), load_file(folder / "again" / "model.safetensors")
    assert all(torch.equal(got[k], again[k]) for k in got)
    return got


def test_linear(folder: Path) -> None:
    got = run(folder, """\
models:
  - model: a
    parameters:
      weight: 1.0
  - model: b
    parameters:
      weight: 3.0
merge_method: linear
dtype: float32
""")
    a, b = state(folder, "a"), state(folder, "b")
    for k in a:
        torch.testing.assert_close(got[k], (a[k] + 3 * b[k]) / 4, rtol=0, atol=1e-6)


def test_slerp_with_t_gradient_and_filters(folder: Path) -> None:
    got = run(folder, """\
slices:
  - sources:
      - model: a
        layer_range: [0, 4]
      - model: b
        layer_range: [0, 4]
merge_method: slerp
base_model: a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""")
    a, b = state(folder, "a"), state(folder, "b")

    def slerp(t: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # Shoemake's formula on the flattened tensors
        xd, yd = x.double().flatten(), y.double().flatten()
        omega = torch.arccos(torch.dot(xd / xd.norm(), yd / yd.norm()).clamp(-1, 1))
        out = (torch.sin((1 - t) * omega) * xd + torch.sin(t * omega) * yd) / torch.sin(omega)
        return out.reshape(x.shape).float()

    def at(points: list[float], layer: int) -> float:  # the list spread over the 4 layers, linear in between
        x = layer / (LAYERS - 1) * (len(points) - 1)
        i = min(int(x), len(points) - 2)
        return points[i] + (x - i) * (points[i + 1] - points[i])

    for i in range(LAYERS):
        q, up, norm = (f"model.layers.{i}.{s}" for s in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight"))
        torch.testing.assert_close(got[q], slerp(at([0, 0.5, 0.3, 0.7, 1], i), a[q], b[q]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[up], slerp(at([1, 0.5, 0.7, 0.3, 0], i), a[up], b[up]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[norm], slerp(0.5, a[norm], b[norm]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["model.layers.0.self_attn.q_proj.weight"], a["model.layers.0.self_attn.q_proj.weight"])  # t = 0


def test_ties_with_base(folder: Path) -> None:
    got = run(folder, """\
models:
  - model: base
  - model: a
    parameters:
      density: 0.5
      weight: 0.7
  - model: b
    parameters:
      density: 0.5
      weight: 0.3
merge_method: ties
base_model: base
parameters:
  normalize: true
  int8_mask: true
dtype: float32
""")
    base, a, b = state(folder, "base"), state(folder, "a"), state(folder, "b")
    for k in base:
        taus, ws = [], [0.7, 0.3]
        for m in (a, b):
            tau = (m[k] - base[k]).flatten()
            keep = torch.zeros_like(tau, dtype=torch.bool)
            keep[tau.abs().argsort(descending=True, stable=True)[: int(0.5 * tau.numel())]] = True  # exactly k entries
            taus.append(torch.where(keep, tau, 0.0))
        sign = torch.sign(ws[0] * taus[0] + ws[1] * taus[1])
        num = sum(w * torch.where(torch.sign(t) == sign, t, 0.0) for w, t in zip(ws, taus, strict=True))
        den = sum(w * ((torch.sign(t) == sign) & (t != 0)).float() for w, t in zip(ws, taus, strict=True))
        want = base[k].flatten() + num / torch.where(den == 0, 1.0, den)
        torch.testing.assert_close(got[k].flatten(), want, rtol=1e-5, atol=1e-6)


def test_dare_ties_translates_density_to_drop_rate(folder: Path) -> None:
    cfg = folder / "mergekit.yml"
    text = """\
models:
  - model: a
    parameters:
      density: 0.53
      weight: 0.5
  - model: b
    parameters:
      density: 0.53
      weight: 0.5
merge_method: dare_ties
base_model: base
parameters:
  normalize: true
  int8_mask: true
dtype: bfloat16
"""
    got = run(folder, text)
    cfg.write_text(text)
    stage = load_mergekit(cfg, out="out2").stages[0]
    assert stage.method == "dare_ties" and stage.parameters["drop_rate"] == pytest.approx(0.47) and not stage.scope.align
    assert got["lm_head.weight"].dtype == torch.bfloat16
    base = state(folder, "base")
    # every entry is base + a (rescaled) mean of surviving task-vector entries: never further than the largest rescaled delta
    a, b = state(folder, "a"), state(folder, "b")
    k = "model.layers.1.mlp.up_proj.weight"
    bound = torch.maximum((a[k] - base[k]).abs(), (b[k] - base[k]).abs()) / 0.53
    assert ((got[k].float() - base[k]).abs() <= bound * 1.01 + 1e-2).all()
    assert not torch.equal(got[k].float(), base[k].bfloat16().float())


def test_passthrough_slices(folder: Path) -> None:
    got = run(folder, """\
slices:
  - sources:
    - model: a
      layer_range: [0, 3]
  - sources:
    - model: b
      layer_range: [1, 4]
merge_method: passthrough
dtype: float32
""")
    a, b = state(folder, "a"), state(folder, "b")
    assert torch.equal(got["model.layers.2.mlp.up_proj.weight"], a["model.layers.2.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.3.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.5.mlp.up_proj.weight"], b["model.layers.3.mlp.up_proj.weight"])
    assert torch.equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], b["lm_head.weight"])


@pytest.mark.parametrize(("text", "line", "words"), [
    ("models:\n  - model: a\n  - model: b\nmerge_method: linear\nout_dtpye: float16\n", 5, "did you mean 'out_dtype'"),
    ("models:\n  - model: a\n    parameters:\n      densty: 0.5\n  - model: b\nmerge_method: ties\nbase_model: base\n", 4, "unknown key 'densty'"),
    ("models:\n  - model: a\n  - model: b\nmerge_method: slerp\nbase_model: a\nparameters:\n  tt: 0.3\n", 7, "did you mean 't'"),
    ("models:\n  - model: a\n  - model: b\nmerge_method: linaer\n", 4, "did you mean 'linear'"),
    ("models:\n  - model: a\n  - model: b\nmerge_method: dare_ties\nbase_model: base\n", 4, "add 'normalize: true'"),
    ("models:\n  - model: a\n  - model: missing-model\nmerge_method: linear\n", 3, "not a local checkpoint"),
    ("models:\n  - model: a\n  - model: b\nmerge_method: slerp\nbase_model: a\nparameters:\n  t: 1.5\n", 6, "must be <= 1"),
])  # fmt: skip
def test_misspelt_or_unsupported_keys_fail_at_their_line(folder: Path, text: str, line: int, words: str) -> None:
    cfg = folder / "mergekit.yml"
    cfg.write_text(text)
    res = CliRunner().invoke(app, ["merge", str(cfg), "-o", "out", "--dry-run"])
    assert res.exit_code != 0
    assert f"mergekit.yml:{line}:" in res.output and words in res.output, res.output
    assert not (folder / "out").exists()


def test_align_is_off_unless_asked(folder: Path) -> None:
    cfg = folder / "mergekit.yml"
    cfg.write_text("models:\n  - model: a\n  - model: b\nmerge_method: linear\n")
    assert "align: false" in translate_mergekit(cfg).text
    res = CliRunner().invoke(app, ["merge", str(cfg), "-o", "out", "--dry-run", "--align", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["stages"][0]["scope"]["align"] is True
    res = CliRunner().invoke(app, ["merge", str(cfg), "--dry-run"])
    assert res.exit_code == 2 and "-o OUT" in res.output


def test_translation_error_lines_point_into_the_mergekit_file(folder: Path) -> None:
    cfg = folder / "mergekit.yml"
    cfg.write_text("models:\n  - model: a\n  - model: b\nmerge_method: karcher\nparameters:\n  max_iter: 0\n")
    with pytest.raises(ConfigError) as info:
        merge_recipe(load_mergekit(cfg, out="out"), dry_run=True)
    assert info.value.line == 5 and info.value.path == str(cfg)  # the parameters: line, as in a wsa recipe


@pytest.mark.parametrize("name", ["ties.yml", "slerp.yml"])
def test_shipped_mergekit_examples_merge(name: str, tmp_path: Path) -> None:
    cfg = Path(__file__).parents[1] / "recipes" / "mergekit" / name
    out = tmp_path / "merged.safetensors"
    res = CliRunner().invoke(app, ["merge", str(cfg), "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert load_file(out)
