"""`wsa inspect` end to end: JSON/CSV parsed, comparisons, gates, every error with its exit code."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wsa_cli.errors import ExitCode


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    a = {
        "fc1.weight": torch.randn(32, 16, generator=g) * 0.1,
        "fc1.bias": torch.zeros(32),
        "fc2.weight": torch.randn(10, 32, generator=g) * 0.05,
        "bn.num_batches_tracked": torch.tensor(3),
    }
    b = {
        "fc1.weight": torch.randn(32, 16, generator=g) * 0.4 + 0.02,
        "fc1.bias": torch.zeros(32),
        "fc2.weight": (torch.randn(10, 32, generator=g) * 0.05).half(),
        "only_b.weight": torch.randn(3, 3, generator=g),
    }
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    return tmp_path / "a.safetensors", tmp_path / "b.safetensors"


def test_single_json(pair: tuple[Path, Path], cli) -> None:
    res = cli("inspect", str(pair[0]), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    (ckpt,) = data["checkpoints"]
    assert ckpt["summary"]["tensors"] == 4 and ckpt["summary"]["layers"] == 2
    assert ckpt["summary"]["parameters"] == 32 * 16 + 32 + 10 * 32 + 1
    assert [t["key"] for t in ckpt["tensors"]] == ["fc1.weight", "fc2.weight"]
    fc1 = ckpt["tensors"][0]
    t = load_file(pair[0])["fc1.weight"].double()
    assert fc1["mean"] == pytest.approx(float(t.mean())) and fc1["std"] == pytest.approx(float(t.std(correction=0)))
    assert fc1["shape"] == [32, 16] and fc1["kind"] == "matrix" and fc1["kl_to_target"] is None


def test_all_tensors_and_sort_top(pair: tuple[Path, Path], cli) -> None:
    res = cli("inspect", str(pair[0]), "--all", "--sort", "std", "--top", "2", "--format", "json")
    rows = json.loads(res.stdout)["checkpoints"][0]["tensors"]
    assert len(rows) == 2 and rows[0]["std"] >= rows[1]["std"]
    res = cli("inspect", str(pair[0]), "--all", "--format", "json")
    assert {r["kind"] for r in json.loads(res.stdout)["checkpoints"][0]["tensors"]} == {"matrix", "bias", "integer"}


def test_comparison_ranks_and_reports_mismatches(pair: tuple[Path, Path], cli) -> None:
    res = cli("inspect", str(pair[0]), str(pair[1]), "--format", "json")
    assert res.exit_code == 0, res.output
    cmp = json.loads(res.stdout)["comparison"]
    keys = [layer["key"] for layer in cmp["layers"]]
    assert keys == ["fc1.weight", "fc2.weight"]  # fc1 disagrees most, ranked first by max_kl
    fc1 = cmp["layers"][0]
    assert fc1["std_ratio"] == pytest.approx(max(fc1["stds"]) / min(fc1["stds"]))
    assert fc1["max_kl"] == pytest.approx(max(fc1["kl_to_fused"]))
    problems = {m["key"]: m["problem"] for m in cmp["mismatches"]}
    assert "missing in" in problems["only_b.weight"] and "dtypes differ" in problems["fc2.weight"]
    assert "do not line up" in res.stderr


def test_comparison_csv(pair: tuple[Path, Path], cli) -> None:
    res = cli("inspect", str(pair[0]), str(pair[1]), "--format", "csv", "--target", "0,0.05")
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["key"] for r in rows] == ["fc1.weight", "fc2.weight"]
    assert {"std_0", "std_1", "kl_to_fused_0", "std_ratio", "mean_shift", "max_kl", "kl_to_target_1"} <= set(rows[0])
    assert rows[0]["shape"] == "32x16"


def test_target_kl_and_scope_file(pair: tuple[Path, Path], tmp_path: Path, cli) -> None:
    scopes = {"format": "wsa-scopes", "version": 1, "layers": {"fc1.weight": {"mean": 0.0, "std": 0.1}}}
    (tmp_path / "scopes.json").write_text(json.dumps(scopes))
    res = cli("inspect", str(pair[0]), "--target", str(tmp_path / "scopes.json"), "--json")
    rows = {r["key"]: r for r in json.loads(res.stdout)["checkpoints"][0]["tensors"]}
    assert rows["fc1.weight"]["kl_to_target"] > 0 and rows["fc2.weight"]["kl_to_target"] is None


def test_fail_above_gates(pair: tuple[Path, Path], cli) -> None:
    ok = cli("inspect", str(pair[0]), str(pair[1]), "--json", "--fail-above", "kl_to_fused=100")
    assert ok.exit_code == 0
    bad = cli("inspect", str(pair[0]), str(pair[1]), "--json", "--fail-above", "std_ratio=1.5")
    assert bad.exit_code == ExitCode.GATE_FAILED
    assert "std_ratio" in bad.stderr and json.loads(bad.stdout)["metrics"]["std_ratio"] > 1.5  # data still printed
    typo = cli("inspect", str(pair[0]), "--fail-above", "kl_to_fusd=1")
    assert typo.exit_code == ExitCode.USAGE and "unknown metric" in typo.stderr
    needs_target = cli("inspect", str(pair[0]), "--fail-above", "kl_to_target=1")
    assert needs_target.exit_code == ExitCode.USAGE


def test_histogram_json_and_text(pair: tuple[Path, Path], cli) -> None:
    res = cli("inspect", str(pair[0]), "--histogram", "fc1.weight", "--bins", "10", "--json")
    (h,) = json.loads(res.stdout)["histograms"]
    assert sum(h["counts"]) == 32 * 16 and len(h["edges"]) == 11
    text = cli("inspect", str(pair[0]), "--histogram", "fc1.weight", "--format", "table")
    assert "fc1.weight" in text.stdout and "#" in text.stdout
    missing = cli("inspect", str(pair[0]), "--histogram", "nope")
    assert missing.exit_code == ExitCode.USAGE and "nope" in missing.stderr


def test_nan_and_constant_layers_are_reported_not_fatal(tmp_path: Path, cli) -> None:
    w = torch.randn(8, 8)
    w[0, 0] = float("nan")
    w[1, 1] = float("inf")
    save_file({"bad.weight": w, "const.weight": torch.full((4, 4), 0.5)}, tmp_path / "m.safetensors")
    res = cli("inspect", str(tmp_path / "m.safetensors"), "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    summary = data["checkpoints"][0]["summary"]
    assert (summary["nan_values"], summary["inf_values"]) == (1, 1)
    assert summary["constant_layers"] == ["const.weight"]
    assert "NaN" in res.stderr
    gate = cli("inspect", str(tmp_path / "m.safetensors"), "--json", "--fail-above", "nonfinite=0")
    assert gate.exit_code == ExitCode.GATE_FAILED


@pytest.mark.parametrize(
    ("setup", "code", "message"),
    [
        (lambda p: p / "missing.safetensors", ExitCode.NOT_FOUND, "no such file"),
        (lambda p: _write(p / "x.txt", b"not a model at all"), ExitCode.BAD_CHECKPOINT, "unknown checkpoint format"),
        (lambda p: _write(p / "t.safetensors", b"\x20\x00\x00\x00\x00\x00\x00\x00{\"a\":"), ExitCode.BAD_CHECKPOINT, "corrupt or truncated"),
    ],
)
def test_errors_are_one_line_with_exit_code(tmp_path: Path, setup, code, message, cli) -> None:  # noqa: ANN001
    path = setup(tmp_path)
    res = cli("inspect", str(path))
    assert res.exit_code == code
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and path.name in lines[0] and message in lines[0]
    assert "Traceback" not in res.output


def test_usage_errors(pair: tuple[Path, Path], cli) -> None:
    assert cli("inspect", str(pair[0]), "--sort", "bogus").exit_code == ExitCode.USAGE
    assert cli("inspect", str(pair[0]), str(pair[1]), "--weights", "1").exit_code == ExitCode.USAGE
    assert cli("inspect", str(pair[0]), "--target", "0,-1").exit_code == ExitCode.USAGE
    assert cli("inspect", str(pair[0]), "--format", "xml").exit_code == ExitCode.USAGE


def test_device_cuda_without_cuda(pair: tuple[Path, Path], cli) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the unavailable-device path cannot be exercised here")
    res = cli("inspect", str(pair[0]), "--device", "cuda")
    assert res.exit_code == ExitCode.DEVICE and "CUDA is not available" in res.stderr


def test_internal_error_is_exit_70_and_debug_shows_traceback(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, cli) -> None:
    import wsa_cli.inspection.inspect as report

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(report, "inspect_checkpoint", boom)
    res = cli("inspect", str(pair[0]))
    assert res.exit_code == ExitCode.INTERNAL and "internal error (ZeroDivisionError" in res.stderr
    assert "Traceback" not in res.stderr
    res = cli("--debug", "inspect", str(pair[0]))
    assert res.exit_code == ExitCode.INTERNAL and "Traceback" in res.stderr


def test_inputs_are_not_modified(pair: tuple[Path, Path], cli) -> None:
    before = [p.read_bytes() for p in pair]
    res = cli("inspect", str(pair[0]), str(pair[1]), "--all", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["format"] == "wsa-inspect"  # it really read both files
    assert [p.read_bytes() for p in pair] == before


def test_pipe_gives_json_and_help_does_not_import_torch(pair: tuple[Path, Path]) -> None:
    out = subprocess.run([sys.executable, "-m", "wsa_cli", "inspect", str(pair[0])], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["format"] == "wsa-inspect"  # piped stdout defaults to JSON
    probe = "import sys, wsa_cli.cli.app; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_missing_checkpoint_is_refused_before_torch_is_imported(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    """A bad path is named in one line without paying the torch import (1-2 s); the good one before it is checked too."""
    probe = ("import sys\nfrom wsa_cli.cli.app import main\nsys.argv = ['wsa', 'inspect', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", probe, str(pair[0]), str(tmp_path / "gone.safetensors")], capture_output=True, text=True, check=True)
    assert run.stdout.split() == [str(int(ExitCode.NOT_FOUND)), "False"], run.stdout + run.stderr
    assert run.stderr.strip() == f"error: {tmp_path / 'gone.safetensors'}: no such file or folder"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("args", "where", "what"),
    [
        (["inspect", "x.safetensors", "--format", "xml"], "wsa inspect", "'xml' is not one of"),
        (["inspect", "x.safetensors", "--bogus"], "wsa inspect", r"No such option:? '?--bogus"),
        (["merge"], "wsa merge", r"Missing argument 'RECIPE \| CHECKPOINT\.\.\.'"),
        (["scope", "fuse", "--bogus"], "wsa scope fuse", r"No such option:? '?--bogus"),
        (["spec", "infer", "--model", "digits-mlp", "--input-shape"], "wsa", "requires an argument"),
        (["--bogus"], "wsa", r"No such option:? '?--bogus"),
        (["nosuchcommand"], "wsa", r"No such command '?nosuchcommand"),
    ],
)
def test_click_usage_errors_are_one_line_exit_2(args: list[str], where: str, what: str, cli) -> None:
    # typer's boxed multi-line usage panel is replaced by the house format: error: <where>: <what>
    res = cli(*args)
    assert res.exit_code == ExitCode.USAGE
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    # click 8.5 quotes the option ("No such option '--bogus'"), earlier versions did not
    assert lines[0].startswith(f"error: {where}: ") and re.search(what, lines[0]), lines[0]
    assert res.stdout == ""


def test_no_arguments_still_shows_help(cli) -> None:
    for args in ([], ["scope"], ["spec"]):
        res = cli(*args)
        assert "Usage: wsa" in res.output and "error:" not in res.output


def test_malformed_cuda_device_is_exit_9_with_or_without_cuda(pair: tuple[Path, Path], cli) -> None:
    # torch.device("cuda:x") raises RuntimeError on a CUDA machine; it must not become exit 70
    res = cli("inspect", str(pair[0]), "--device", "cuda:x")
    assert res.exit_code == ExitCode.DEVICE
    assert res.stderr.strip().splitlines() == ["error: --device 'cuda:x': expected one of auto, cpu, cuda, cuda:N"]


def test_complex_tensors_are_listed_not_measured(tmp_path: Path, cli) -> None:
    save_file({"w": torch.randn(4, 4), "freqs": torch.randn(4, 2, dtype=torch.complex64)}, tmp_path / "c.safetensors")
    res = cli("inspect", str(tmp_path / "c.safetensors"), "--all", "--json")
    assert res.exit_code == 0, res.output
    ckpt = json.loads(res.stdout)["checkpoints"][0]
    assert [t["key"] for t in ckpt["tensors"]] == ["w"]
    assert "complex" in ckpt["skipped"]["freqs"] and ckpt["summary"]["kinds"]["complex"] == 1
    assert res.stderr == ""  # no torch warning about discarding imaginary parts
