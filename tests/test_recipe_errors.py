"""Every recipe error: its exact one-line message (with recipe.yaml:LINE where it applies) and exit code.

Each case runs `wsa merge` end to end and also checks that nothing was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.errors import ConfigError
from wsa_cli.io import save_safetensors
from wsa_cli.recipe import load_recipe, parse_size


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("recipes")
    g = torch.Generator().manual_seed(0)

    def sd(out_features=4):
        return {"fc.weight": torch.randn(out_features, 3, generator=g), "fc.bias": torch.randn(out_features, generator=g)}

    save_safetensors(sd(), d / "a.safetensors")
    save_safetensors(sd(), d / "b.safetensors")
    save_safetensors(sd(), d / "c.safetensors")
    save_safetensors(sd(5), d / "wide.safetensors")
    save_safetensors({"fc.weight": torch.randn(4, 3)}, d / "nobias.safetensors")
    save_safetensors({**sd(), "extra.weight": torch.randn(2, 2)}, d / "extra.safetensors")
    (d / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return d


OK = "models: [a.safetensors, b.safetensors]\noutput: out.safetensors\n"

CASES = [
    # (id, recipe text, exit code, expected stderr fragment)
    ("unknown-top-key", "modles: [a.safetensors]\noutput: out.safetensors\n", 6,
     "recipe.yaml:1: unknown key 'modles' in the recipe; did you mean 'models'?"),
    ("unknown-model-key", "models:\n  - path: a.safetensors\n    wieght: 2\noutput: out.safetensors\n", 6,
     "recipe.yaml:3: unknown key 'wieght' in models[0]; did you mean 'weight'?"),
    ("weight-type", "models:\n  - path: a.safetensors\n    weight: heavy\noutput: out.safetensors\n", 6,
     "recipe.yaml:3: models[0] weight must be a number, got 'heavy'"),
    ("weight-negative", "models:\n  - path: a.safetensors\n    weight: -1\noutput: out.safetensors\n", 6,
     "recipe.yaml:3: models[0] weight must be finite and >= 0, got -1.0"),
    ("missing-file", "models:\n  - a.safetensors\n  - nope.safetensors\noutput: out.safetensors\n", 3,
     "recipe.yaml:3: models[1] 'nope.safetensors' does not exist"),
    ("models-not-list", "models: a.safetensors\noutput: out.safetensors\n", 6,
     "recipe.yaml:1: models must be a non-empty list of checkpoint paths"),
    ("no-models", "output: out.safetensors\n", 6, "recipe.yaml:1: stage 'merge' needs 'models'"),
    ("no-output", "models: [a.safetensors]\n", 6, "recipe.yaml:1: stage 'merge' needs 'output'"),
    ("unknown-method", OK + "method: tie\n", 6, "recipe.yaml:3: unknown merge method 'tie'; did you mean 'ties'?"),
    ("unknown-param", "models: [a.safetensors, b.safetensors]\nbase: c.safetensors\nmethod: ties\nparameters: {densty: 0.5}\n"
     "output: out.safetensors\n", 6, "recipe.yaml:4: method 'ties' has no parameter 'densty'; did you mean 'density'?"),
    ("param-range", "models: [a.safetensors, b.safetensors]\nbase: c.safetensors\nmethod: dare_linear\n"
     "parameters:\n  drop_rate: 1.0\noutput: out.safetensors\n", 6, "recipe.yaml:4: parameter 'drop_rate' must be < 1"),
    ("param-type", OK + "parameters: {normalize: 3}\n", 6, "recipe.yaml:3: parameter 'normalize' must be true or false, got 3"),
    ("needs-base", OK + "method: task_arithmetic\n", 6,
     "recipe.yaml:3: method 'task_arithmetic' needs a base model: add 'base: PATH' to stage 'merge'"),
    ("base-unused", OK + "base: c.safetensors\n", 6, "recipe.yaml:3: a base model is given but no method of stage 'merge' uses one"),
    ("slerp-three", "models: [a.safetensors, b.safetensors, c.safetensors]\nmethod: slerp\noutput: out.safetensors\n", 6,
     "recipe.yaml:2: method 'slerp' takes at most 2 model(s), got 3"),
    ("shape-mismatch", "models: [a.safetensors, wide.safetensors]\noutput: out.safetensors\n", 5,
     "wide.safetensors: key 'fc.bias': models[1] does not line up with models[0]: has shape (5,), expected (4,) as in"),
    ("missing-key", "models: [a.safetensors, nobias.safetensors]\noutput: out.safetensors\n", 5,
     "nobias.safetensors: key 'fc.bias': models[1] does not line up with models[0]: tensor is missing"),
    ("extra-key", "models: [a.safetensors, extra.safetensors]\noutput: out.safetensors\n", 5,
     "extra.safetensors: key 'extra.weight': models[1] does not line up with models[0]: tensor is not in"),
    ("base-does-not-fit", "models: [a.safetensors, b.safetensors]\nbase: wide.safetensors\nmethod: ties\noutput: out.safetensors\n", 5,
     "wide.safetensors: key 'fc.bias': base model does not fit the models: has shape (5,)"),
    ("yaml-syntax", "models: [a.safetensors\noutput: out.safetensors\n", 6, "recipe.yaml:2: YAML syntax error"),
    ("duplicate-key", OK + "models: [a.safetensors]\n", 6, "recipe.yaml:3: key 'models' appears twice (first on line 1)"),
    ("empty", "", 6, "recipe.yaml:1: recipe is empty"),
    ("not-a-mapping", "- a.safetensors\n", 6, "recipe.yaml:1: the recipe must be a mapping"),
    ("override-no-match", OK + "overrides:\n  - match: 'classifier.*'\n    align: false\n", 6,
     "recipe.yaml:4: overrides[0] matches no floating-point tensor (classifier.*)"),
    ("override-no-pattern", OK + "overrides:\n  - align: false\n", 6, "recipe.yaml:4: overrides[0] needs 'match'"),
    ("override-bad-regex", OK + "overrides:\n  - match: 're:fc(['\n", 6, "recipe.yaml:4: overrides[0].match: bad regular expression"),
    ("fusion-unknown", OK + "scope:\n  fusion: moment\n", 6,
     "recipe.yaml:4: scope.fusion 'moment' is not known; did you mean 'moments'?"),
    ("scope-unknown-key", OK + "scope:\n  algin: false\n", 6, "recipe.yaml:4: unknown key 'algin' in scope; did you mean 'align'?"),
    ("scope-align-type", OK + "scope:\n  align: yes please\n", 6, "recipe.yaml:4: scope.align must be true or false"),
    ("target-index", OK + "scope:\n  target: {model: 4}\n", 6, "recipe.yaml:4: scope.target model 4 is out of range for 2 models"),
    ("target-fixed", OK + "scope:\n  target: {mean: 0}\n", 6, "recipe.yaml:4: a fixed scope.target needs both 'mean' and 'std'"),
    ("target-file-missing", OK + "scope:\n  target: scopes.json\n", 3, "recipe.yaml:4: scope.target scope file 'scopes.json' does not exist"),
    ("scope-weights-length", OK + "scope:\n  weights: [1, 2, 3]\n", 6, "recipe.yaml:4: scope.weights has 3 entries for 2 models"),
    ("dtype", "models: [a.safetensors]\noutput:\n  path: out.safetensors\n  dtype: float8\n", 6,
     "recipe.yaml:4: output.dtype 'float8' is not known"),
    ("shard-single-file", "models: [a.safetensors]\noutput:\n  path: out.safetensors\n  shard_size: 1GB\n", 6,
     "recipe.yaml:4: output.shard_size needs a folder output path"),
    ("shard-size-bad", "models: [a.safetensors]\noutput:\n  path: out\n  shard_size: lots\n", 6,
     "recipe.yaml:4: output.shard_size must be a positive byte count"),
    ("copy-files-single", "models: [a.safetensors]\noutput:\n  path: out.safetensors\n  copy_files_from: 0\n", 6,
     "recipe.yaml:4: output.copy_files_from needs a folder output path"),
    ("copy-files-none", "models: [a.safetensors]\noutput:\n  path: out\n  copy_files_from: 0\n", 6,
     "recipe.yaml:4: models[0] (a.safetensors) has no config/tokenizer files to copy"),
    ("version", "version: 2\n" + OK, 6, "recipe.yaml:1: only recipe version 1 exists"),
    ("stage-stray-key", "method: linear\nstages:\n  - name: s\n    models: [a.safetensors]\n    output: out.safetensors\n", 6,
     "recipe.yaml:1: 'method' must go inside a stage when 'stages' is used"),
    ("stage-no-name", "stages:\n  - models: [a.safetensors]\n    output: out.safetensors\n", 6,
     "recipe.yaml:2: stages[0] needs a 'name'"),
    ("stage-forward-ref", "stages:\n  - name: one\n    models: [{stage: two}]\n  - name: two\n    models: [a.safetensors]\n"
     "    output: out.safetensors\n", 6, "recipe.yaml:3: stage 'two' is not available here (a stage can only use stages listed before it)"),
    ("stage-output-mismatch", "stages:\n  - name: pair\n    models: [a.safetensors, b.safetensors]\n  - name: final\n"
     "    models: [wide.safetensors, {stage: pair}]\n    output: out.safetensors\n", 5,
     "error: the output of stage 'pair': key 'fc.bias': models[1] does not line up with models[0]: has shape (4,), "
     "expected (5,) as in "),
    ("stage-duplicate", "stages:\n  - name: s\n    models: [a.safetensors]\n  - name: s\n    models: [b.safetensors]\n"
     "    output: out.safetensors\n", 6, "recipe.yaml:4: stage name 's' is used twice"),
    ("model-path-and-stage", "models:\n  - path: a.safetensors\n    stage: x\noutput: out.safetensors\n", 6,
     "recipe.yaml:2: models[0] needs exactly one of 'path' or 'stage'"),
    ("broken-checkpoint", "models: [a.safetensors, broken.safetensors]\noutput: out.safetensors\n", 4, "broken.safetensors: corrupt"),
    ("output-is-input", "models: [a.safetensors, b.safetensors]\noutput: a.safetensors\n", 7, "output would overwrite input"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_recipe_error(folder: Path, body: str, code: int, message: str) -> None:
    recipe = folder / "recipe.yaml"
    recipe.write_text(body)
    before = sorted(p.name for p in folder.iterdir())
    res = CliRunner().invoke(app, ["merge", str(recipe), "--device", "cpu"])
    assert res.exit_code == code, res.output
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr  # one line, no traceback
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.output
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_recipe_not_found_and_dry_run_ok(folder: Path) -> None:
    res = CliRunner().invoke(app, ["merge", str(folder / "none.yaml")])
    assert res.exit_code == 3 and "recipe not found" in res.stderr
    recipe = folder / "ok.yaml"
    recipe.write_text(OK)
    res = CliRunner().invoke(app, ["merge", str(recipe), "--dry-run", "--json", "--device", "cpu"])
    assert res.exit_code == 0 and json.loads(res.stdout)["stages"][0]["counts"]["tensors"] == 2


def test_cuda_unavailable_is_a_device_error(folder: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = folder / "ok.yaml"
    recipe.write_text(OK)
    res = CliRunner().invoke(app, ["merge", str(recipe), "--device", "cuda"])
    assert res.exit_code == 9 and "CUDA is not available" in res.stderr


def test_schema_defaults_and_sizes(folder: Path) -> None:
    recipe = folder / "d.yaml"
    recipe.write_text(OK)
    r = load_recipe(recipe)
    s = r.stages[0]
    assert (s.name, s.method, s.parameters, s.seed) == ("merge", "linear", {}, 0)
    assert (s.scope.align, s.scope.fusion, s.scope.target, s.scope.rescale, s.scope.align_base) == (True, "moments", "fused", "affine", True)
    assert s.output is not None and s.output.provenance == "fast" and s.output.report and s.output.dtype is None
    assert [m.weight for m in s.models] == [1.0, 1.0] and s.models[0].path == folder / "a.safetensors"
    assert parse_size("2GB") == 2_000_000_000 and parse_size("1MiB") == 1 << 20 and parse_size("big") is None
    recipe.write_text(OK + "scope: false\n")
    assert load_recipe(recipe).stages[0].scope.align is False
    with pytest.raises(ConfigError) as info:
        recipe.write_text(OK + "seed: 1.5\n")
        load_recipe(recipe)
    assert info.value.line == 3 and info.value.path == str(recipe)
