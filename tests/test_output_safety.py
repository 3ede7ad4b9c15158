"""Nothing lost, ever: every path a run writes is checked, commits are race-free, a full disk leaves nothing.

One class per test group: the one output check (report, stage temporaries, input model folders),
model and report committed as a pair, the commit-time re-check (a concurrent run), a full disk at
every write size, orphaned temporaries of dead runs, key sets of ``scope fuse``, bounded YAML,
NaN/Inf in a merge.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from wsa_cli.errors import ExitCode, OutputError
from wsa_cli.io import SafetensorsWriter, TensorInfo, save_safetensors
from wsa_cli.io import writer as writer_mod


def _model(seed: int, n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"l{i}.weight": torch.randn(4, 3, generator=g) for i in range(n)}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i in range(2):
        save_safetensors(_model(i), tmp_path / f"m{i}.safetensors")
    return tmp_path


def _recipe(folder: Path, body: str, name: str = "r.yaml") -> Path:
    p = folder / name
    p.write_text(body)
    return p


def _one_line_error(res, code: int) -> str:  # noqa: ANN001
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _no_temporaries(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if "wsa-" in p.name and p.name.endswith((".wsa-tmp", ".wsa-old"))]
    assert left == [], left


# -- 1. one output check for every path a run creates, replaces or deletes ---------------------------


def test_existing_report_needs_force_and_an_input_named_like_the_report_is_refused_even_with_force(folder, cli):
    r = _recipe(folder, "models: [m0.safetensors, m1.safetensors]\noutput: out.safetensors\n")
    report = folder / "out.wsa-merge-report.json"
    report.write_text("mine")
    line = _one_line_error(cli("merge", str(r)), ExitCode.OUTPUT_REFUSED)
    assert "out.wsa-merge-report.json" in line and "--force" in line
    assert report.read_text() == "mine" and not (folder / "out.safetensors").exists()
    # an input that has the report's name: never overwritten, not even with --force
    save_safetensors(_model(5), report.with_name("x.wsa-merge-report.json"))
    r2 = _recipe(folder, "models: [m0.safetensors, x.wsa-merge-report.json]\noutput: x.safetensors\n", "r2.yaml")
    line = _one_line_error(cli("merge", str(r2), "--force"), ExitCode.OUTPUT_REFUSED)
    assert "would overwrite input" in line and "x.wsa-merge-report.json" in line
    _no_temporaries(folder)


def test_stage_temporaries_cannot_touch_a_user_file_and_are_removed(folder, cli):
    mine = folder / ".wsa-stage-first.safetensors"
    mine.write_bytes(b"user data")
    r = _recipe(folder, "stages:\n  - name: first\n    models: [m0.safetensors, m1.safetensors]\n"
                        "  - name: second\n    models: [{stage: first}, m1.safetensors]\n    output: out.safetensors\n")  # fmt: skip
    res = cli("merge", str(r), "--json")
    assert res.exit_code == 0, res.output
    assert mine.read_bytes() == b"user data"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".wsa-stage-first.safetensors", "m0.safetensors", "m1.safetensors", "out.safetensors", "out.wsa-merge-report.json", "r.yaml"]
    )
    plan = json.loads(cli("merge", str(r), "--dry-run", "--json", "--force").stdout)
    tmp = Path(plan["stages"][0]["output"])
    assert f"wsa-{os.getpid()}@" in tmp.parent.name and tmp.parent.name.endswith(".wsa-tmp")


def test_output_inside_an_input_model_folder_is_refused(folder, cli):
    model = folder / "model-a"
    model.mkdir()
    save_safetensors(_model(0), model / "model.safetensors")
    for body in ("output: model-a/merged.safetensors\n", "output: model-a/sub\n"):
        r = _recipe(folder, "models: [model-a, m1.safetensors]\n" + body)
        line = _one_line_error(cli("merge", str(r), "--force"), ExitCode.OUTPUT_REFUSED)
        assert "inside the input model folder" in line
    assert sorted(p.name for p in model.iterdir()) == ["model.safetensors"]


def test_check_outputs_names_the_path() -> None:
    with pytest.raises(OutputError, match="would overwrite input"):
        writer_mod.check_outputs(["a/b.json"], ["a/b.json"], force=True)
    with pytest.raises(OutputError, match="folder holding|would overwrite input"):
        writer_mod.check_outputs(["a"], ["a/b.json"], force=True)


# -- 2./3. model and report commit as a pair; the commit re-checks without a race ----------------------


def test_model_and_report_carry_the_same_merge_id(folder, cli):
    r = _recipe(folder, "models: [m0.safetensors, m1.safetensors]\noutput: out.safetensors\n")
    assert cli("merge", str(r)).exit_code == 0
    with safe_open(folder / "out.safetensors", "pt") as f:
        model_id = f.metadata()["wsa_merge_id"]
    assert json.loads((folder / "out.wsa-merge-report.json").read_text())["merge_id"] == model_id


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_output_appearing_during_the_merge_is_not_replaced(folder, cli, monkeypatch, kind):
    """Another run commits first (injected just before our commit): we exit 7, leave its output and nothing of ours."""
    out = folder / ("out.safetensors" if kind == "file" else "out")
    real_commit = SafetensorsWriter._commit

    def racing(self):  # noqa: ANN001, ANN202
        if kind == "file":
            out.write_bytes(b"the other run's model")
        else:
            out.mkdir()
            (out / "model.safetensors").write_bytes(b"the other run's model")
        return real_commit(self)

    monkeypatch.setattr(SafetensorsWriter, "_commit", racing)
    r = _recipe(folder, f"models: [m0.safetensors, m1.safetensors]\noutput: {out.name}\n")
    line = _one_line_error(cli("merge", str(r)), ExitCode.OUTPUT_REFUSED)
    assert "appeared while this run was writing" in line
    model = out if kind == "file" else out / "model.safetensors"
    assert model.read_bytes() == b"the other run's model"
    assert not (folder / "out.wsa-merge-report.json").exists()
    _no_temporaries(folder)


# -- 5. a full disk, at every write size --------------------------------------------------------------


class _FullDisk(io.RawIOBase):
    """A real file that takes ``room`` bytes, then fails with ENOSPC (like a disk that fills up)."""

    opened: list[_FullDisk] = []

    def __init__(self, path: str, room: int) -> None:
        self.raw = open(path, "wb", buffering=0)  # noqa: SIM115
        self.room = room
        _FullDisk.opened.append(self)

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001
        n = min(len(b), self.room)
        if n == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= n
        return self.raw.write(memoryview(b)[:n])

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()
        super().close()


def test_disk_full_at_every_write_size_is_exit_7_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # many small tensors (they sit in Python's write buffer) and one larger one
    tensors = {f"t{i}": torch.full((3,), float(i)) for i in range(40)} | {"big": torch.zeros(3000)}
    infos = [TensorInfo(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    total = save_safetensors(tensors, tmp_path / "ref.safetensors").stat().st_size
    (tmp_path / "ref.safetensors").unlink()
    sizes = sorted({*range(0, 64), *range(64, total, 97), total - 1})
    for room in sizes:
        monkeypatch.setattr(writer_mod, "open", lambda path, mode, room=room: io.BufferedWriter(_FullDisk(path, room), 8192),
                            raising=False)  # fmt: skip
        with pytest.raises(OutputError, match="No space left on device") as caught:
            with SafetensorsWriter(tmp_path / "m.safetensors", infos) as w:
                for k, v in tensors.items():
                    w.write(k, v)
        assert caught.value.exit_code == ExitCode.OUTPUT_REFUSED and "\n" not in str(caught.value)
        assert list(tmp_path.iterdir()) == [], room
        assert all(f.raw.closed for f in _FullDisk.opened), room  # no descriptor keeps the space in use
    _FullDisk.opened.clear()


def test_disk_full_in_a_merge_is_one_line_exit_7(folder, cli, monkeypatch):
    monkeypatch.setattr(writer_mod, "open", lambda path, mode: io.BufferedWriter(_FullDisk(path, 200), 8192), raising=False)
    r = _recipe(folder, "models: [m0.safetensors, m1.safetensors]\noutput: out.safetensors\n")
    line = _one_line_error(cli("merge", str(r)), ExitCode.OUTPUT_REFUSED)
    assert "No space left on device" in line
    assert sorted(p.name for p in folder.iterdir()) == ["m0.safetensors", "m1.safetensors", "r.yaml"]


# -- 4. temporaries of dead runs ----------------------------------------------------------------------


def test_orphans_of_dead_runs_are_removed_and_live_runs_kept(folder, cli):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    host = writer_mod._HOST
    orphan = folder / f".out.safetensors.wsa-{dead_pid}@{host}.abc123.wsa-tmp"
    orphan.mkdir()
    (orphan / "out.safetensors").write_bytes(b"x" * 100)
    live = folder / f".out.safetensors.wsa-{os.getppid()}@{host}.def456.wsa-tmp"  # our parent: alive
    live.mkdir()
    other_host = folder / f".out.safetensors.wsa-{dead_pid}@000000.aaa.wsa-tmp"
    other_host.mkdir()
    r = _recipe(folder, "models: [m0.safetensors, m1.safetensors]\noutput: out.safetensors\n")
    res = cli("merge", str(r), "--json")
    assert res.exit_code == 0, res.output
    assert not orphan.exists() and live.exists() and other_host.exists()
    assert any("killed wsa runs" in w for w in json.loads(res.stdout)["stages"][-1]["warnings"])


# -- 6. scope fuse: the same layers in every model ---------------------------------------------------


def test_scope_fuse_refuses_a_layer_only_the_second_model_has(folder, cli):
    save_safetensors(_model(1, n=4), folder / "more.safetensors")
    line = _one_line_error(cli("scope", "fuse", str(folder / "m0.safetensors"), str(folder / "more.safetensors"),
                               "-o", str(folder / "s.json")), ExitCode.MISMATCH)  # fmt: skip
    assert "more.safetensors" in line and "'l3.weight'" in line
    assert not (folder / "s.json").exists()


# -- 7. bounded YAML -----------------------------------------------------------------------------------

_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9)
)


@pytest.mark.parametrize(("text", "what"), [
    (_LAUGHS, "expands to more than"),
    ("models: &x [*x]\noutput: o.safetensors\n", "nests deeper"),
    ("models: " + "[" * 50_000 + "]" * 50_000 + "\noutput: o.safetensors\n", "nests deeper"),
])  # fmt: skip
def test_yaml_bombs_are_config_errors_at_a_line(folder, cli, text, what):
    r = _recipe(folder, text)
    line = _one_line_error(cli("merge", str(r)), ExitCode.BAD_CONFIG)
    assert what in line and f"{r}:" in line


# -- 8. NaN/Inf --------------------------------------------------------------------------------------


def test_nonfinite_weights_warn_and_can_be_refused(folder, cli):
    bad = _model(0)
    bad["l1.weight"] = torch.full((4, 3), float("nan"))
    bad["l2.weight"][0, 0] = float("inf")
    save_safetensors(bad, folder / "bad.safetensors")
    r = _recipe(folder, "models: [bad.safetensors, m1.safetensors]\noutput: out.safetensors\n")
    res = cli("merge", str(r), "--json")
    assert res.exit_code == 0, res.output
    warnings = json.loads(res.stdout)["stages"][-1]["warnings"]
    assert any("NaN/Inf" in w for w in warnings) and "NaN/Inf" in res.stderr
    report = json.loads((folder / "out.wsa-merge-report.json").read_text())
    rec = {t["key"]: t for t in report["tensors"]}
    assert rec["l1.weight"]["nonfinite"] == 12 and rec["l1.weight"]["nonfinite_inputs"] == [12, 0]
    assert rec["l2.weight"]["nonfinite"] >= 1 and "nonfinite" not in rec["l0.weight"]
    assert all(c["key"] != "l1.weight" for c in report["constant_not_rescaled"])  # all-NaN is not a constant layer
    r2 = _recipe(folder, "models: [bad.safetensors, m1.safetensors]\noutput: {path: out2.safetensors, nonfinite: error}\n", "r2.yaml")
    line = _one_line_error(cli("merge", str(r2)), ExitCode.OUTPUT_REFUSED)
    assert "'l1.weight'" in line and "NaN/Inf" in line
    assert not (folder / "out2.safetensors").exists()
    _no_temporaries(folder)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_count_nonfinite_is_exact_whatever_the_chunk_sums_do(dtype: torch.dtype) -> None:
    """The cheap screen (a finite chunk sum) never hides a NaN/Inf, and an overflowing sum of finite
    values is not counted as one."""
    from wsa_cli.merge.executor import count_nonfinite

    big = torch.finfo(dtype).max
    clean = torch.full((1000,), big / 2, dtype=dtype)  # the chunk sum overflows; no value is non-finite
    assert count_nonfinite(clean, chunk=64) == 0
    dirty = torch.randn(1000).to(dtype)
    dirty[[3, 500, 999]] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    for chunk in (1, 7, 64, 4096):
        assert count_nonfinite(dirty, chunk=chunk) == 3
