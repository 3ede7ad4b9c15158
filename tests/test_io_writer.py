"""The streaming writer: byte-compatible with safetensors, sharded like Hugging Face, atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wsa_cli.errors import ExitCode, InvalidValueError, OutputError
from wsa_cli.io import SafetensorsWriter, TensorInfo, check_output, open_checkpoint, plan_shards, save_safetensors


def _model() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "emb.weight": torch.randn(50, 8, generator=g),
        "fc.weight": torch.randn(8, 8, generator=g).bfloat16(),
        "fc.bias": torch.randn(8, generator=g).half(),
        "bn.num_batches_tracked": torch.tensor(12),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(0.5, dtype=torch.float64),
    }


def test_single_file_reloads_with_plain_safetensors(tmp_path: Path) -> None:
    tensors = _model()
    out = save_safetensors(tensors, tmp_path / "m.safetensors", metadata={"b": "2", "a": "1"})
    loaded = load_file(out)
    assert set(loaded) == set(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t), k
    with safe_open(str(out), "pt") as fh:
        assert fh.metadata() == {"a": "1", "b": "2"}


def test_same_bytes_as_reference_content(tmp_path: Path) -> None:
    """Our bytes decode to exactly what safetensors' own writer stores for the same tensors."""
    tensors = _model()
    save_safetensors(tensors, tmp_path / "ours.safetensors")
    save_file(tensors, tmp_path / "theirs.safetensors")
    ours, theirs = load_file(tmp_path / "ours.safetensors"), load_file(tmp_path / "theirs.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in tensors)


def test_deterministic_bytes(tmp_path: Path) -> None:
    tensors = _model()
    a = save_safetensors(tensors, tmp_path / "a.safetensors", metadata={"x": "1"})
    b = save_safetensors(tensors, tmp_path / "b.safetensors", metadata={"x": "1"})
    assert a.read_bytes() == b.read_bytes()


def test_sharded_folder_with_index(tmp_path: Path) -> None:
    tensors = _model()
    out = save_safetensors(tensors, tmp_path / "merged", max_shard_bytes=1024, metadata={"wsa": "1"})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted({v for v in index["weight_map"].values()})
    assert len(shards) >= 2 and all((out / s).exists() for s in shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    merged: dict[str, torch.Tensor] = {}
    for s in shards:
        merged.update(load_file(out / s))
    assert set(merged) == set(tensors) and all(torch.equal(merged[k], tensors[k]) for k in tensors)
    with open_checkpoint(out) as r:  # and our own reader sees one model
        assert set(r.keys()) == set(tensors)


def test_plan_shards_keeps_order_and_limits() -> None:
    infos = [TensorInfo(str(i), (n,), torch.float32) for i, n in enumerate([10, 10, 30, 5, 5])]
    shards = plan_shards(infos, 80)
    # 40+40 fills the first shard; the 120-byte tensor is alone (bigger than the limit); 20+20 share
    assert [[i.key for i in s] for s in shards] == [["0", "1"], ["2"], ["3", "4"]]
    assert plan_shards(infos, None) == [infos]


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    infos = [TensorInfo("a", (4,), torch.float32), TensorInfo("b", (4,), torch.float32)]
    with pytest.raises(KeyboardInterrupt):
        with SafetensorsWriter(tmp_path / "out.safetensors", infos) as w:
            w.write("a", torch.ones(4))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_missing_tensor_at_commit_leaves_nothing(tmp_path: Path) -> None:
    infos = [TensorInfo("a", (4,), torch.float32), TensorInfo("b", (4,), torch.float32)]
    with pytest.raises(RuntimeError, match="'b'"):  # a bug in the caller: an internal error
        with SafetensorsWriter(tmp_path / "out", infos, max_shard_bytes=16) as w:
            w.write("a", torch.ones(4))
    assert list(tmp_path.iterdir()) == []


def test_wrong_shape_or_order_is_refused(tmp_path: Path) -> None:
    infos = [TensorInfo("a", (4,), torch.float32)]
    with pytest.raises(RuntimeError, match="planned"):
        with SafetensorsWriter(tmp_path / "o.safetensors", infos) as w:
            w.write("a", torch.ones(5))
    with pytest.raises(RuntimeError, match="plan order"):
        with SafetensorsWriter(tmp_path / "o.safetensors", infos) as w:
            w.write("b", torch.ones(4))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path: Path) -> None:
    target = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.zeros(1)}, target)
    with pytest.raises(OutputError, match="pass force to replace it") as info:
        save_safetensors({"w": torch.ones(1)}, target)
    assert info.value.exit_code == ExitCode.OUTPUT_REFUSED
    assert torch.equal(load_file(target)["w"], torch.zeros(1))  # untouched
    save_safetensors({"w": torch.ones(1)}, target, force=True)
    assert torch.equal(load_file(target)["w"], torch.ones(1))


def test_folder_replaced_whole_with_force(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    save_safetensors({"a": torch.ones(4), "b": torch.ones(4)}, out, max_shard_bytes=16)
    save_safetensors({"c": torch.zeros(2)}, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temp leftovers


def test_check_output_refuses_inputs(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(OutputError, match="overwrite input"):
        check_output(model / "model.safetensors", [model / "model.safetensors"], force=True)
    with pytest.raises(OutputError, match="overwrite input"):
        check_output(model, [model / "model.safetensors"], force=True)
    assert check_output(tmp_path / "new.safetensors", [model]) == tmp_path / "new.safetensors"


def test_side_files_committed_with_model(tmp_path: Path) -> None:
    src = tmp_path / "config.json"
    src.write_text('{"hidden": 8}')
    infos = [TensorInfo("w", (2,), torch.float32)]
    with SafetensorsWriter(tmp_path / "out", infos) as w:
        w.write("w", torch.ones(2))
        w.add_copy("config.json", src)
        w.add_text("report.json", "{}")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors", "report.json"]


def test_outputs_get_ordinary_permissions(tmp_path: Path) -> None:
    """Temp files/dirs are private (0600/0700); what lands at the output follows the umask."""
    import os
    import stat

    from wsa_cli.io import atomic_write_text

    old = os.umask(0o022)
    try:
        save_safetensors({"w": torch.ones(2)}, tmp_path / "m.safetensors")
        save_safetensors({"a": torch.ones(4), "b": torch.ones(4)}, tmp_path / "folder", max_shard_bytes=16)
        atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "m.safetensors") == 0o644
    assert mode(tmp_path / "r.json") == 0o644
    assert mode(tmp_path / "folder") == 0o755
    assert all(mode(p) == 0o644 for p in (tmp_path / "folder").iterdir())


def test_unwritable_output_is_output_error_not_internal(tmp_path: Path) -> None:
    # a parent that is a file cannot be created (works as root too, unlike a read-only folder)
    from wsa_cli.io import atomic_write_text

    blocker = tmp_path / "file"
    blocker.write_text("x")
    infos = [TensorInfo("w", (2, 2), torch.float32)]
    with pytest.raises(OutputError, match="cannot write the output") as info:
        SafetensorsWriter(blocker / "sub" / "m.safetensors", infos)
    assert info.value.exit_code == ExitCode.OUTPUT_REFUSED
    with pytest.raises(OutputError, match="cannot write the output"):
        atomic_write_text(blocker / "r.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_disk_full_while_streaming_is_output_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from wsa_cli.io import writer as writer_mod

    def full(self, key, tensor):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_mod._ShardFile, "write", full)
    out = tmp_path / "m.safetensors"
    with pytest.raises(OutputError, match="No space left on device"):
        with SafetensorsWriter(out, [TensorInfo("w", (2, 2), torch.float32)]) as w:
            w.write("w", torch.zeros(2, 2))
    assert list(tmp_path.iterdir()) == []


def test_scope_fuse_into_unwritable_place_exits_7(tmp_path: Path) -> None:
    # /proc exists but takes no new files, even for root: the temporary file cannot be created
    from typer.testing import CliRunner

    from wsa_cli.cli.app import app

    if not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc as an unwritable folder")
    a = tmp_path / "a.safetensors"
    save_file(_model(), str(a))
    out = "/proc/wsa-review-scopes.json"
    res = CliRunner().invoke(app, ["scope", "fuse", str(a), str(a), "-o", out])
    assert res.exit_code == ExitCode.OUTPUT_REFUSED, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: cannot write the output (")


@pytest.mark.parametrize("name", ["m.pt", "m.pth", "m.bin", "m.ckpt"])
def test_pickle_suffix_output_is_refused_not_turned_into_a_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidValueError, match="wsa writes safetensors"):
        SafetensorsWriter(tmp_path / name, [TensorInfo("w", (2, 2), torch.float32)])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidValueError, match="wsa writes safetensors"):
        check_output(tmp_path / name)  # commands check before computing (e.g. before training)


def test_missing_output_folders_are_created_and_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    from wsa_cli.io import atomic_write_text

    atomic_write_text(tmp_path / "new" / "deeper" / "r.json", "{}")
    assert (tmp_path / "new" / "deeper" / "r.json").read_text() == "{}"
    assert check_output(tmp_path / "other" / "m.safetensors") == tmp_path / "other" / "m.safetensors"
    (tmp_path / "blocker").write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(tmp_path / "blocker" / "m.safetensors")


def test_background_flushes_leave_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a flush after every few bytes, the file is byte-identical and every flush ran."""
    from wsa_cli.io import writer as writer_mod

    calls = []
    real = writer_mod._datasync
    monkeypatch.setattr(writer_mod, "_datasync", lambda fd: (calls.append(fd), real(fd)))
    tensors = _model()
    a = save_safetensors(tensors, tmp_path / "a.safetensors", metadata={"x": "1"})
    monkeypatch.setattr(writer_mod, "FLUSH_BYTES", 16)
    b = save_safetensors(tensors, tmp_path / "b.safetensors", metadata={"x": "1"})
    assert a.read_bytes() == b.read_bytes()
    assert calls  # at least one background flush (they never overlap, so some writes skip one)


def test_failed_background_flush_is_output_error_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from wsa_cli.io import writer as writer_mod

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer_mod, "_datasync", broken)
    monkeypatch.setattr(writer_mod, "FLUSH_BYTES", 1)
    infos = [TensorInfo(f"w{i}", (4,), torch.float32) for i in range(3)]
    out = tmp_path / "m.safetensors"
    with pytest.raises(OutputError, match="Input/output error"):
        with SafetensorsWriter(out, infos) as w:
            for info in infos:
                w.write(info.key, torch.zeros(4))
    assert list(tmp_path.iterdir()) == []
