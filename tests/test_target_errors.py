"""A malformed target names where it was written: the flag on the command line, the line in a recipe."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wsa_cli.errors import ExitCode


@pytest.fixture
def pair(tmp_path):
    for name in ("a", "b"):
        save_file({"w": torch.randn(8, 8)}, str(tmp_path / f"{name}.safetensors"))
    return tmp_path


@pytest.mark.parametrize(("text", "what"), [("0,-1", "std > 0"), ("0,x", "expected MEAN,STD")])
def test_command_line_target_errors_name_the_flag(pair, cli, text, what):
    res = cli("interpolate", str(pair / "a.safetensors"), str(pair / "b.safetensors"), "--target", text)
    assert res.exit_code == ExitCode.USAGE
    assert res.stderr.strip().startswith(f"error: --target '{text}'") and what in res.stderr


def test_recipe_target_in_command_line_form_is_refused_at_its_line(pair, cli):
    recipe = pair / "r.yaml"
    recipe.write_text("models:\n  - a.safetensors\n  - b.safetensors\noutput: m.safetensors\nscope:\n  target: '0,0.05'\n")
    res = cli("merge", str(recipe))
    assert res.exit_code == ExitCode.BAD_CONFIG
    assert "r.yaml:6:" in res.stderr and "{mean: M, std: S}" in res.stderr
    assert not (pair / "m.safetensors").exists()
