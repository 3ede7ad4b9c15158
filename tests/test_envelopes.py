"""Every command's JSON has the same envelope, ``{"format": "wsa-<command>", "version": N, ...}``,
and its structure is pinned by tests/golden/envelopes.json (keys and value types, recursively;
lists by their first element). Regenerate after a deliberate change with
``WSA_UPDATE_GOLDEN=1 python -m pytest tests/test_envelopes.py``, and bump the command's version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from wsa_cli.io import save_safetensors

GOLDEN = Path(__file__).parent / "golden" / "envelopes.json"


def skeleton(value: Any) -> Any:
    """The shape of a JSON value: dicts by key, lists by their first item, scalars by type."""
    if isinstance(value, dict):
        return {k: skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return [skeleton(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("envelopes")
    g = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        save_safetensors({"fc1.weight": torch.randn(8, 4, generator=g), "fc1.bias": torch.randn(8, generator=g),
                          "fc2.weight": torch.randn(3, 8, generator=g), "fc2.bias": torch.randn(3, generator=g)},
                         d / f"{name}.safetensors")  # fmt: skip
    (d / "r.yaml").write_text("models: [a.safetensors, b.safetensors]\noutput: m.safetensors\n")
    (d / "mk.yml").write_text("merge_method: linear\nmodels: [{model: a.safetensors}, {model: b.safetensors}]\n")  # a mergekit config
    return d


COMMANDS = {
    "inspect": ["inspect", "a.safetensors"],
    "inspect-compare": ["inspect", "a.safetensors", "b.safetensors", "--target", "0,0.5"],
    "inspect-histogram": ["inspect", "a.safetensors", "--histogram", "fc1.weight", "--bins", "3"],
    "merge-dry-run": ["merge", "r.yaml", "--dry-run", "--device", "cpu"],
    "merge": ["merge", "r.yaml", "--device", "cpu", "--force"],
    "methods": ["methods"],
    "recipe-from-mergekit": ["recipe", "from-mergekit", "mk.yml"],
    "scope-fuse": ["scope", "fuse", "a.safetensors", "b.safetensors", "-o", "s.json", "--force", "--device", "cpu"],
    "interpolate": ["interpolate", "a.safetensors", "b.safetensors", "--alphas", "0,0.5,1", "--device", "cpu"],
    "align": ["align", "a.safetensors", "b.safetensors", "--spec", "mlp", "-o", "al.safetensors", "--force", "--device", "cpu"],
    "spec-list": ["spec", "list"],
    "spec-check": ["spec", "check", "mlp", "a.safetensors"],
    "train": ["train", "digits-mlp", "-o", "t.safetensors", "--epochs", "1", "--width", "8", "--force"],
    "train-joint": ["train", "digits-mlp", "-o", "joint", "--seeds", "0,1", "--epochs", "1", "--width", "8", "--wsa-coef", "0.1",
                    "--wsa-target", "fused", "--force"],
    "fedsim": ["fedsim", "--clients", "2", "--rounds", "1", "--width", "8"],
    "sweep": ["sweep", "r.yaml", "--grid", "models[1].weight=0,1", "--eval", f"{Path(__file__).parent / 'interpolate_plugin_eval.py'}:bump",
              "--device", "cpu"],
}


def _run(folder: Path, args: list[str], monkeypatch: pytest.MonkeyPatch, cli) -> dict[str, Any]:  # noqa: ANN001
    monkeypatch.chdir(folder)
    res = cli(*args, "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_envelope_and_structure(name: str, folder: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:  # noqa: ANN001
    doc = _run(folder, COMMANDS[name], monkeypatch, cli)
    command = name.removesuffix("-compare").removesuffix("-histogram").removesuffix("-dry-run").removesuffix("-joint")
    assert list(doc)[:2] == ["format", "version"] and doc["format"] == f"wsa-{command}" and isinstance(doc["version"], int)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("WSA_UPDATE_GOLDEN"):
        golden[name] = skeleton(doc)
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1) + "\n")
    assert name in golden, f"no golden structure for {name}; run with WSA_UPDATE_GOLDEN=1"
    assert skeleton(doc) == golden[name]


def test_golden_file_has_no_stale_entries() -> None:
    assert set(json.loads(GOLDEN.read_text())) == set(COMMANDS)
