"""docs/exit-codes.md is the contract: every example command in it exits with the code it states."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.errors import ExitCode
from wsa_cli.io import save_safetensors

DOC = Path(__file__).parent.parent / "docs" / "exit-codes.md"


def _examples() -> list[tuple[int, str]]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- exit-code-examples:start -->")[1].split("<!-- exit-code-examples:end -->")[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([^`]+)`\s*\|\s*$", block, flags=re.M)
    return [(int(code), cmd) for code, cmd in rows]


def test_the_doc_lists_examples_for_every_code_that_input_can_cause() -> None:
    codes = {code for code, _ in _examples()}
    signals = {ExitCode.INTERRUPTED, ExitCode.HANGUP, ExitCode.TERMINATED}  # tested with real signals in tests/test_signals.py
    assert codes == {c.value for c in ExitCode} - {ExitCode.INTERNAL} - signals


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("exit-codes")
    g = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        save_safetensors({"fc1.weight": torch.randn(8, 4, generator=g), "fc2.weight": torch.randn(3, 8, generator=g)}, d / f"{name}.safetensors")
    save_safetensors({"fc1.weight": torch.randn(16, 4, generator=g), "fc2.weight": torch.randn(3, 16, generator=g)}, d / "wide.safetensors")
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    (d / "exists.json").write_text("{}\n")
    (d / "mismatch.yaml").write_text("models: [a.safetensors, wide.safetensors]\noutput: m.safetensors\n")
    (d / "typo.yaml").write_text("models: [a.safetensors, b.safetensors]\nmethd: linear\noutput: t.safetensors\n")
    (d / "fp.yaml").write_text("models: [a.safetensors, b.safetensors]\nscope: {rescale: fp}\npermutation: {spec: mlp}\n"
                               "output: f.safetensors\n")  # fmt: skip
    return d


@pytest.mark.parametrize(("code", "command"), _examples(), ids=[f"{c}:{cmd}" for c, cmd in _examples()])
def test_documented_example_exits_with_its_code(folder: Path, code: int, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if code == ExitCode.DEVICE and torch.cuda.is_available():
        pytest.skip("the --device cuda example needs a machine without CUDA")
    monkeypatch.chdir(folder)
    args = shlex.split(command)
    assert args[0] == "wsa"
    res = CliRunner().invoke(app, args[1:])
    assert res.exit_code == code, f"{command}: exit {res.exit_code}, stderr: {res.stderr}"
    if code >= 2:  # an error is one line on stderr
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr


def test_the_entry_point_keeps_the_exit_code_and_leaves_live_objects_out_of_the_exit_collection(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """``wsa``'s ``main`` freezes the objects alive at its end (the interpreter's last collection then skips them), whatever the outcome."""
    import gc
    import sys

    from wsa_cli.cli.app import main

    monkeypatch.setattr(sys, "argv", ["wsa", "inspect", str(tmp_path / "missing.safetensors")])
    try:
        assert gc.get_freeze_count() == 0
        with pytest.raises(SystemExit) as stop:
            main()
        assert stop.value.code == ExitCode.NOT_FOUND
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
