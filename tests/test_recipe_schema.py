"""The recipe schema is declared once: keys, docs table and number parsing all come from its fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from wsa_cli.errors import ConfigError
from wsa_cli.recipe import load_recipe, schema_table
from wsa_cli.recipe import schema

DOCS = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
START, END = "<!-- recipe-schema:start -->\n", "<!-- recipe-schema:end -->"
#: fields that record where things were written, or what was derived; never recipe keys
BOOKKEEPING = {"line", "lines", "text", "path@Recipe", "sha256@Recipe"}


def test_docs_table_is_the_rendered_schema() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1
    table = text.split(START, 1)[1].split(END, 1)[0]
    assert table == schema_table(), (
        "docs/recipes.md's key table differs from the schema; paste the output of\n"
        "  python -c 'from wsa_cli.recipe import schema_table; print(schema_table(), end=\"\")'\n"
        "between the recipe-schema markers"
    )


@pytest.mark.parametrize(("prefix", "cls"), schema.SCHEMA_BLOCKS, ids=[c.__name__ for _, c in schema.SCHEMA_BLOCKS])
def test_every_field_is_a_documented_key_or_bookkeeping(prefix: str, cls: type) -> None:
    for f in dataclasses.fields(cls):
        if f.name in BOOKKEEPING or f"{f.name}@{cls.__name__}" in BOOKKEEPING:
            assert "doc" not in f.metadata, f.name
        else:
            assert f.metadata.get("doc") and f.metadata.get("kind"), f"{cls.__name__}.{f.name} needs doc_field(...)"


def test_allowed_keys_come_from_the_fields() -> None:
    assert schema.MODEL_KEYS == ("path", "stage", "weight", "key", "strip_prefix")
    assert schema.SCOPE_KEYS == ("align", "fusion", "target", "rescale", "include", "exclude", "weights", "align_base")
    assert schema.OUTPUT_KEYS == ("path", "dtype", "shard_size", "copy_files_from", "provenance", "report", "nonfinite")
    assert schema.OVERRIDE_KEYS == ("match", "method", "parameters", "align", "rescale")
    assert schema.PERMUTATION_KEYS == ("spec", "reference", "seed")
    assert ("version", "stages", *schema.STAGE_KEYS) == schema.TOP_KEYS
    assert tuple(f.name for f in dataclasses.fields(schema.StageSpec) if f.name not in BOOKKEEPING) == schema.STAGE_KEYS


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for name in ("a.safetensors", "b.safetensors", "c.safetensors"):
        (tmp_path / name).write_bytes(b"")  # the loader checks that inputs exist, it does not open them
    return tmp_path


def _load(folder: Path, body: str):
    recipe = folder / "recipe.yaml"
    recipe.write_text(body)
    return load_recipe(recipe)


HEAD = "models:\n  - path: a.safetensors\n    weight: {w}\n  - b.safetensors\n"


def test_exponent_floats_are_numbers(folder: Path) -> None:
    """PyYAML reads 1e-3 and 5e3 as strings; every number field takes them as the numbers they are."""
    body = (HEAD.format(w="5e-1") + "base: c.safetensors\nmethod: ties\nparameters: {density: 3e-1}\n"
            "scope:\n  weights: [1e0, 2E+0]\n  target: {mean: -1e-3, std: 5e3}\n"
            "overrides:\n  - match: '*.bias'\n    parameters: {density: 1E-1}\n"
            "output:\n  path: out\n  shard_size: 5e9\n")  # fmt: skip
    stage = _load(folder, body).stages[0]
    assert stage.models[0].weight == 0.5
    assert stage.parameters == {"density": 0.3} and stage.overrides[0].parameters == {"density": 0.1}
    assert stage.scope.weights == [1.0, 2.0]
    assert (stage.scope.target.mean, stage.scope.target.std) == (-1e-3, 5e3)
    assert stage.output is not None and stage.output.shard_size == 5_000_000_000


def test_strings_that_are_not_numbers_stay_refused(folder: Path) -> None:
    with pytest.raises(ConfigError, match="models\\[0\\] weight must be a number, got '1e'") as info:
        _load(folder, HEAD.format(w="1e") + "output: out.safetensors\n")
    assert info.value.line == 3


OUT = "output: out.safetensors\n"
NON_FINITE = [
    # (id, recipe text, line of the bad value, message fragment)
    ("weight-nan", HEAD.format(w=".nan") + OUT, 3, "models[0] weight must be a finite number, got nan"),
    ("weight-inf", HEAD.format(w=".inf") + OUT, 3, "models[0] weight must be a finite number, got inf"),
    ("weight-huge-text", HEAD.format(w="1e999") + OUT, 3, "models[0] weight must be a finite number, got inf"),
    ("base-weight-inf", HEAD.format(w=1) + "base:\n  path: c.safetensors\n  weight: .inf\nmethod: ties\n" + OUT, 7,
     "base weight must be a finite number, got inf"),
    ("scope-weights-nan", HEAD.format(w=1) + "scope:\n  weights:\n    - 1\n    - .nan\n" + OUT, 8,
     "scope.weights entry must be a finite number, got nan"),
    ("target-mean-inf", HEAD.format(w=1) + "scope:\n  target:\n    mean: -.inf\n    std: 1\n" + OUT, 7,
     "scope.target.mean must be a finite number, got -inf"),
    ("target-std-nan", HEAD.format(w=1) + "scope:\n  target:\n    mean: 0\n    std: .NaN\n" + OUT, 8,
     "scope.target.std must be a finite number, got nan"),
    ("parameter-nan", HEAD.format(w=1) + "parameters:\n  normalize: true\n  t: .nan\n" + OUT, 7,
     "parameters: t must be a finite number, got nan"),
    ("override-parameter-inf", HEAD.format(w=1) + "overrides:\n  - match: '*.bias'\n    parameters:\n      t: .inf\n" + OUT,
     8, "overrides[0].parameters: t must be a finite number, got inf"),
    ("shard-size-inf", HEAD.format(w=1) + "output:\n  path: out\n  shard_size: .inf\n", 7,
     "output.shard_size must be a positive byte count or a size like '2GB', got inf"),
    ("seed-nan", HEAD.format(w=1) + "seed: .nan\n" + OUT, 5, "seed must be an integer, got nan"),
    ("target-model-inf", HEAD.format(w=1) + "scope:\n  target: {model: .inf}\n" + OUT, 6,
     "scope.target.model must be an integer, got inf"),
    ("permutation-reference-nan", HEAD.format(w=1) + "permutation:\n  spec: digits-mlp\n  reference: .nan\n" + OUT, 7,
     "permutation.reference must be an integer, got nan"),
    ("version-inf", "version: .inf\n" + HEAD.format(w=1) + OUT, 1, "version must be an integer, got inf"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "line", "message"), [c[1:] for c in NON_FINITE], ids=[c[0] for c in NON_FINITE])
def test_nan_and_inf_are_refused_at_their_line(folder: Path, body: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(folder, body)
    assert info.value.line == line and message in info.value.message, (info.value.line, info.value.message)
