"""Checkpoint readers: round trips through plain safetensors / torch.save, shards, containers, errors."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wsa_cli.errors import CheckpointError, ExitCode, InputNotFoundError
from wsa_cli.io import SafetensorsReader, ShardedSafetensorsReader, TorchReader, open_checkpoint


def _all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, generator=g)
    tensors = {
        "f32": base,
        "f64": base.double(),
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i8": torch.randint(-100, 100, (5,), dtype=torch.int8, generator=g),
        "i16": torch.randint(-100, 100, (5,), dtype=torch.int16, generator=g),
        "i32": torch.randint(-100, 100, (5,), dtype=torch.int32, generator=g),
        "i64": torch.tensor(7),
        "u8": torch.randint(0, 255, (2, 2), dtype=torch.uint8, generator=g),
        "bool": torch.tensor([True, False, True]),
    }
    for name in ("float8_e4m3fn", "float8_e5m2"):
        if hasattr(torch, name):
            tensors[name] = base.to(getattr(torch, name))
    return tensors


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (fp8 has no torch.equal kernel, so compare raw bytes)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def test_safetensors_round_trip_every_dtype(tmp_path: Path) -> None:
    tensors = _all_dtypes()
    save_file(tensors, tmp_path / "m.safetensors", metadata={"origin": "test"})
    with open_checkpoint(tmp_path / "m.safetensors") as r:
        assert isinstance(r, SafetensorsReader)
        assert set(r.keys()) == set(tensors)
        assert r.metadata == {"origin": "test"}
        for key, t in tensors.items():
            info = r.info(key)
            assert info.shape == tuple(t.shape) and info.dtype == t.dtype
            assert _same(r.get(key), t), key


def test_torch_round_trip_every_dtype(tmp_path: Path) -> None:
    tensors = _all_dtypes()
    torch.save(tensors, tmp_path / "m.pt")
    with open_checkpoint(tmp_path / "m.pt") as r:
        assert isinstance(r, TorchReader)
        for key, t in tensors.items():
            assert _same(r.get(key), t), key


def test_legacy_non_zip_pickle_is_read(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    with open_checkpoint(tmp_path / "old.pth") as r:
        assert torch.equal(r.get("w"), torch.ones(3))


def _write_shards(folder: Path, tensors: dict[str, torch.Tensor], per_shard: int = 2) -> Path:
    keys = list(tensors)
    chunks = [keys[i : i + per_shard] for i in range(0, len(keys), per_shard)]
    weight_map = {}
    for i, chunk in enumerate(chunks):
        name = f"model-{i + 1:05d}-of-{len(chunks):05d}.safetensors"
        save_file({k: tensors[k] for k in chunk}, folder / name)
        weight_map.update({k: name for k in chunk})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (folder / "config.json").write_text("{}")
    return index


def test_hf_sharded_folder_and_index(tmp_path: Path) -> None:
    tensors = {f"layer{i}.weight": torch.randn(3, 2) for i in range(5)}
    index = _write_shards(tmp_path, tensors)
    for path in (tmp_path, index):
        with open_checkpoint(path) as r:
            assert isinstance(r, ShardedSafetensorsReader)
            assert r.keys() == list(tensors)
            assert len(r.files()) == 3
            for k, t in tensors.items():
                assert torch.equal(r.get(k), t)
    with open_checkpoint(tmp_path) as r:
        assert [p.name for p in r.extra_files()] == ["config.json"]


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    index = _write_shards(tmp_path, {"a": torch.ones(1), "b": torch.ones(1), "c": torch.ones(1)}, per_shard=1)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(InputNotFoundError, match="shard 'model-00002-of-00003.safetensors'"):
        open_checkpoint(index)


def test_index_listing_a_key_the_shard_lacks(tmp_path: Path) -> None:
    index = _write_shards(tmp_path, {"a": torch.ones(1), "b": torch.ones(1)})
    data = json.loads(index.read_text())
    data["weight_map"]["ghost"] = data["weight_map"]["a"]
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="ghost"):
        open_checkpoint(index)


def test_folder_of_shards_without_index(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, tmp_path / "part1.safetensors")
    save_file({"b": torch.zeros(2)}, tmp_path / "part2.safetensors")
    with open_checkpoint(tmp_path) as r:
        assert sorted(r.keys()) == ["a", "b"]


def test_folder_with_one_model_file_and_config(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2, 2)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    with open_checkpoint(tmp_path) as r:
        assert r.keys() == ["w"]
        assert sorted(p.name for p in r.extra_files()) == ["config.json", "tokenizer.json"]


def test_lightning_checkpoint_is_unwrapped(tmp_path: Path) -> None:
    sd = {"model.fc.weight": torch.randn(2, 2), "model.fc.bias": torch.zeros(2)}
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": sd,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
        "lr_schedulers": [],
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    with open_checkpoint(tmp_path / "last.ckpt") as r:
        assert r.keys() == ["model.fc.weight", "model.fc.bias"]
    with open_checkpoint(tmp_path / "last.ckpt", strip_prefix="model.") as r:
        assert r.keys() == ["fc.weight", "fc.bias"]
        assert torch.equal(r.get("fc.weight"), sd["model.fc.weight"])


def test_ddp_prefix_removed_and_explicit_container_key(tmp_path: Path) -> None:
    sd = {"module.fc.weight": torch.randn(2, 2)}
    torch.save({"model": {"x": torch.ones(1)}, "ema": {"model": sd}}, tmp_path / "ema.pt")
    with open_checkpoint(tmp_path / "ema.pt") as r:
        assert r.keys() == ["x"]  # the 'model' container wins by default
    with open_checkpoint(tmp_path / "ema.pt", container_key="ema.model") as r:
        assert r.keys() == ["fc.weight"]
    with pytest.raises(CheckpointError, match="no entry 'ema.nope'"):
        open_checkpoint(tmp_path / "ema.pt", container_key="ema.nope")


def test_non_tensor_entries_are_reported_not_fatal(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2), "step": 5, "names": ["a"]}, tmp_path / "m.pt")
    with open_checkpoint(tmp_path / "m.pt") as r:
        assert r.keys() == ["w"]
        assert set(r.skipped) == {"step", "names"}


def test_info_does_not_load_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_file({"w": torch.ones(100, 100)}, tmp_path / "m.safetensors")
    with open_checkpoint(tmp_path / "m.safetensors") as r:
        monkeypatch.setattr(r, "_load", lambda key: pytest.fail("info() must not load tensors"))
        assert r.info("w").nbytes == 40_000


def test_unknown_suffix_is_sniffed(tmp_path: Path) -> None:
    save_file({"w": torch.ones(1)}, tmp_path / "weights.model")
    torch.save({"w": torch.ones(1)}, tmp_path / "weights.data")
    assert open_checkpoint(tmp_path / "weights.model").format_name == "safetensors"
    assert open_checkpoint(tmp_path / "weights.data").format_name == "torch"


# -- error cases: each with its class, exit code and a message naming the file -----------------


class NotATensor:  # a global that weights_only unpickling must refuse
    pass


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: p / "missing.safetensors", InputNotFoundError, "no such file"),
        (lambda p: _bytes(p / "notes.txt", b"hello world, not a model"), CheckpointError, "unknown checkpoint format"),
        (lambda p: _bytes(p / "bad.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"), CheckpointError, "corrupt or truncated"),
        (lambda p: _truncated(p), CheckpointError, "corrupt or truncated"),
        (lambda p: _bytes(p / "tiny.safetensors", b"\x01"), CheckpointError, "corrupt or truncated"),
        (lambda p: _saved(p / "unsafe.pt", {"w": torch.ones(1), "obj": NotATensor()}), CheckpointError, "non-tensor globals"),
        (lambda p: _saved(p / "empty.pt", {}), CheckpointError, "no tensors"),
        (lambda p: _empty_safetensors(p), CheckpointError, "no tensors"),
        (lambda p: _bytes(p / "junk.pt", b"PK\x03\x04 this is no zip"), CheckpointError, "not a readable PyTorch checkpoint"),
        (lambda p: _mkdir(p / "emptydir"), CheckpointError, "folder holds no"),
    ],
    ids=["missing", "unknown", "corrupt-header", "truncated", "too-short", "unsafe-pickle", "empty-pt", "empty-st", "bad-zip", "empty-folder"],
)
def test_reader_errors(tmp_path: Path, make, error, message) -> None:  # noqa: ANN001
    path = make(tmp_path)
    with pytest.raises(error, match=message) as info:
        open_checkpoint(path)
    assert Path(info.value.path or "").name == path.name
    assert info.value.exit_code == (ExitCode.NOT_FOUND if error is InputNotFoundError else ExitCode.BAD_CHECKPOINT)


def test_pickle_counter_is_plain_data(tmp_path: Path) -> None:
    # collections types that torch's weights_only loader allows are fine; they are simply skipped
    torch.save({"w": torch.ones(1), "c": collections.OrderedDict(a=1)}, tmp_path / "m.pt")
    assert open_checkpoint(tmp_path / "m.pt").keys() == ["w"]


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(tmp: Path) -> Path:
    save_file({"w": torch.randn(64, 64)}, tmp / "full.safetensors")
    data = (tmp / "full.safetensors").read_bytes()
    return _bytes(tmp / "cut.safetensors", data[: len(data) // 2])


def _saved(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def _empty_safetensors(tmp: Path) -> Path:
    save_file({}, tmp / "empty.safetensors")
    return tmp / "empty.safetensors"


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_get_into_buffer_matches_plain_get(tmp_path: Path) -> None:
    tensors = _all_dtypes()
    save_file(tensors, tmp_path / "m.safetensors")
    (tmp_path / "sh").mkdir()
    _write_shards(tmp_path / "sh", tensors, per_shard=3)
    for path in (tmp_path / "m.safetensors", tmp_path / "sh"):
        with open_checkpoint(path) as r:
            buf = torch.empty(max(i.nbytes for i in r.infos()) + 5, dtype=torch.uint8)
            for key in r:
                assert _same(r.get(key, out=buf), tensors[key]), key
            with pytest.raises(ValueError, match="uint8 buffer"):
                r.get(r.keys()[0], out=torch.empty(1, dtype=torch.uint8))


def test_prefetch_keeps_order_and_raises_at_the_failing_key() -> None:
    from wsa_cli.io.prefetch import prefetch

    seen = []

    def load(key: str) -> torch.Tensor:
        if key == "bad":
            raise CheckpointError("cannot read", key=key)
        return torch.tensor(float(len(key)))

    gen = prefetch(load, ["a", "bb", "bad", "dddd"], depth=2)
    for key, value in gen:
        seen.append((key, float(value)))
        if key == "bb":
            break
    gen.close()
    assert seen == [("a", 1.0), ("bb", 2.0)]
    with pytest.raises(CheckpointError, match="'bad'"):
        list(prefetch(load, ["a", "bad", "c"], depth=1))
    assert [k for k, _ in prefetch(load, ["x", "yy", "zzz"], depth=0)] == ["x", "yy", "zzz"]


def test_corrupt_pickle_is_one_clean_error_without_torch_warnings(tmp_path: Path) -> None:
    # a raw pickle torch cannot read: no "needs non-tensor globals" (there is no global), and
    # torch's protocol UserWarning must not reach stderr next to our one-line error
    import warnings

    path = _bytes(tmp_path / "garbage.pt", b"\x80\x04garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match=r"corrupt or unsupported pickle \(Unsupported operand") as info:
            open_checkpoint(path)
    assert "globals" not in str(info.value)
    assert [str(w.message) for w in caught] == []


def test_prefixes_are_stripped_for_every_format(tmp_path: Path) -> None:
    sd = {"module.fc.weight": torch.randn(2, 2), "module.fc.bias": torch.zeros(2)}
    save_file(sd, tmp_path / "ddp.safetensors")
    torch.save(sd, tmp_path / "ddp.pt")
    for name in ("ddp.safetensors", "ddp.pt"):
        with open_checkpoint(tmp_path / name) as r:  # module. is always removed
            assert sorted(r.keys()) == ["fc.bias", "fc.weight"]
            assert torch.equal(r.get("fc.weight"), sd["module.fc.weight"])
            buf = torch.empty(64, dtype=torch.uint8)
            assert torch.equal(r.get("fc.weight", out=buf), sd["module.fc.weight"])
            assert set(r.state_dict()) == {"fc.bias", "fc.weight"}
        with open_checkpoint(tmp_path / name, strip_prefix="fc.") as r:
            assert sorted(r.keys()) == ["bias", "weight"]
        with pytest.raises(CheckpointError, match="prefix 'zz.' to strip") as info:
            open_checkpoint(tmp_path / name, strip_prefix="zz.")
        assert info.value.key == "fc.weight" or info.value.key == "fc.bias"


def test_container_key_on_safetensors_is_a_usage_error(tmp_path: Path) -> None:
    from wsa_cli.errors import InvalidValueError

    save_file({"w": torch.ones(1)}, tmp_path / "m.safetensors")
    with pytest.raises(InvalidValueError, match="pickled checkpoint"):
        open_checkpoint(tmp_path / "m.safetensors", container_key="state_dict")


def test_views_equal_reads_for_every_dtype_shard_and_prefix(tmp_path: Path) -> None:
    tensors = _all_dtypes()
    save_file({f"module.{k}": v for k, v in tensors.items()}, str(tmp_path / "m.safetensors"))
    folder = tmp_path / "sharded"
    folder.mkdir()
    keys = list(tensors)
    save_file({k: tensors[k] for k in keys[:4]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in keys[4:]}, str(folder / "model-00002-of-00002.safetensors"))
    for path in (tmp_path / "m.safetensors", folder):
        with open_checkpoint(path) as r:
            views = {k: r.view(k) for k in r}
            for k, v in views.items():
                r.will_need(k)
                assert _same(v, tensors[k]) and _same(v, r.get(k)), (path, k)
                r.release(k)  # unmapped, not lost: the next touch reads the page cache again
                assert _same(v, tensors[k]), (path, k)
        assert _same(views["f32"], tensors["f32"])  # a view outlives its reader (the map stays while it does)


def test_unaligned_tensor_is_copied_not_viewed(tmp_path: Path) -> None:
    """safetensors does not promise aligned offsets: a float32 at an odd offset is read, not viewed."""
    import struct

    header = json.dumps({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}).encode()  # fmt: skip
    header += b" " * (-len(header) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x07" + struct.pack("<2f", 1.5, -2.0))
    with SafetensorsReader(path) as r:
        b = r.view("b")
        assert b.tolist() == [1.5, -2.0] and r.view("a").tolist() == [7]
        assert b.untyped_storage().nbytes() == 8  # its own memory, not the map


def test_release_unmaps_the_pages_of_a_view(tmp_path: Path) -> None:
    """After release the process no longer holds the tensor's pages (its RSS drops back)."""

    def rss_kib() -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))

    save_file({"w": torch.ones(16 << 20, dtype=torch.uint8)}, str(tmp_path / "big.safetensors"))  # 16 MiB
    with SafetensorsReader(tmp_path / "big.safetensors") as r:
        v = r.view("w")
        before = rss_kib()
        assert int(v.sum()) == 16 << 20  # touches every page
        touched = rss_kib()
        r.release("w")
        released = rss_kib()
    assert touched - before > 12 << 10  # most of the 16 MiB became resident
    assert touched - released > 12 << 10  # and most of it went again
    assert int(v.sum()) == 16 << 20  # still readable after release


def test_file_truncated_before_mapping_is_a_clean_error(tmp_path: Path) -> None:
    save_file({"w": torch.ones(1024)}, str(tmp_path / "m.safetensors"))
    r = SafetensorsReader(tmp_path / "m.safetensors")
    with open(tmp_path / "m.safetensors", "r+b") as fh:
        fh.truncate(200)
    with pytest.raises(CheckpointError, match="truncated"):
        r.view("w")
    r.close()


# -- hostile or broken inputs: each class is one clean error (exit 3 or 4), never a crash or a hang ----


def _zip_with_pickle(tmp: Path, name: str, body: bytes) -> Path:
    """A real torch.save zip whose data.pkl is replaced by ``body`` (how a corrupt pickle reaches torch)."""
    import zipfile

    torch.save({"w": torch.ones(2)}, tmp / "base.pt")
    out = tmp / name
    with zipfile.ZipFile(tmp / "base.pt") as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.namelist():
            zout.writestr(item, body if item.endswith("/data.pkl") else zin.read(item))
    return out


def _legacy_mutant(tmp: Path, cut: int) -> Path:
    """A legacy (non-zip) torch.save file truncated inside its pickles: the unpickler meets raw garbage."""
    torch.save({"fc.weight": torch.randn(3, 2), "fc.bias": torch.zeros(3)}, tmp / "l.pt", _use_new_zipfile_serialization=False)
    data = (tmp / "l.pt").read_bytes()
    return _bytes(tmp / f"cut{cut}.pt", data[:cut])


@pytest.mark.parametrize("cut", [40, 120, 200, 300, 400])
def test_truncated_legacy_pickle_is_a_checkpoint_error(tmp_path: Path, cut: int) -> None:
    # before: IndexError / struct.error / KeyError from torch's unpickler reached exit 70
    path = _legacy_mutant(tmp_path, cut)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint|corrupt|pickle") as info:
        with open_checkpoint(path) as r:
            r.state_dict()
    assert info.value.path == str(path) and info.value.exit_code == ExitCode.BAD_CHECKPOINT
    expected = {40: "corrupt pickle: EOFError", 120: "corrupt pickle: IndexError", 200: "corrupt pickle: struct.error"}
    assert expected.get(cut, "") in str(info.value)


def test_unpickler_exceptions_name_their_type(tmp_path: Path) -> None:
    # a storage key that no storage record has: torch raises KeyError/AssertionError deep inside
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    import zipfile

    with zipfile.ZipFile(tmp_path / "ok.pt") as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    body = pkl.replace(b"X\x01\x00\x00\x000q", b"X\x01\x00\x00\x009q")  # storage '0' -> '9' (absent)
    assert body != pkl
    with pytest.raises(CheckpointError, match=r"not a readable PyTorch checkpoint \((corrupt pickle: )?\w+"):
        open_checkpoint(_zip_with_pickle(tmp_path, "missing-storage.pt", body))


@pytest.mark.parametrize("shape", ["list", "dict"])
def test_deeply_nested_pickle_is_not_a_crash(tmp_path: Path, shape: str) -> None:
    n = 100_000
    deep = b"]" * n + b"a" * (n - 1) if shape == "list" else b"}" + b"X\x01\x00\x00\x00k}" * n + b"s" * n
    body = b"\x80\x02}X\x01\x00\x00\x00x" + deep + b"s."  # {'x': [[[...]]]}: no tensor at all
    with pytest.raises(CheckpointError, match="no tensors found") as info:
        open_checkpoint(_zip_with_pickle(tmp_path, f"deep-{shape}.pt", body))
    assert info.value.exit_code == ExitCode.BAD_CHECKPOINT


def test_parameters_read_as_plain_tensors(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    torch.save(dict(model.named_parameters()), tmp_path / "params.pt")
    torch.save({"w": torch.ones(2, 2, requires_grad=True), "c": torch.ones(2, dtype=torch.complex64).conj()}, tmp_path / "grad.pt")
    with open_checkpoint(tmp_path / "params.pt") as r:
        assert r.keys() == ["0.weight", "0.bias", "1.weight", "1.bias"]
        for key in r:
            t = r.get(key)
            assert type(t) is torch.Tensor and not t.requires_grad, key
            assert torch.equal(t, dict(model.named_parameters())[key].detach())
    with open_checkpoint(tmp_path / "grad.pt") as r:
        assert type(r.get("w")) is torch.Tensor and not r.get("w").requires_grad
        assert not r.get("c").is_conj() and torch.equal(r.get("c"), torch.ones(2, dtype=torch.complex64).conj())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (lambda: torch.eye(3).to_sparse(), "sparse tensors are not supported"),
        (lambda: torch.eye(3).to_sparse_csr(), "sparse tensors are not supported"),
        (lambda: torch.empty(3, 2, device="meta"), "meta tensor has no data"),
        (lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8), "quantized tensors are not supported"),
    ],
    ids=["sparse-coo", "sparse-csr", "meta", "quantized"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: sparse CSR is beta, quantized is deprecated
def test_tensors_without_dense_data_are_refused_by_key(tmp_path: Path, value, message: str) -> None:  # noqa: ANN001
    torch.save({"ok": torch.ones(2), "w": value()}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=message) as info:
        open_checkpoint(tmp_path / "m.pt")
    assert info.value.key == "w" and info.value.path == str(tmp_path / "m.pt")
    assert str(info.value).startswith(f"{tmp_path / 'm.pt'}: key 'w': ")


def test_keys_that_collide_as_text_are_refused(tmp_path: Path) -> None:
    torch.save({1: torch.ones(1), "1": torch.zeros(1)}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="stored twice") as info:
        open_checkpoint(tmp_path / "m.pt")
    assert info.value.key == "1"


def test_container_key_through_a_tensor_names_what_it_found(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1)}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"no entry 'w.x' in the checkpoint \('w' holds a Tensor\)"):
        open_checkpoint(tmp_path / "m.pt", container_key="w.x")


def _raw_safetensors(path: Path, header: str, data: bytes) -> Path:
    import struct

    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_safetensors_header_with_a_key_twice_is_refused(tmp_path: Path) -> None:
    entry = '{"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}'
    # json.loads (and safe_open) keep the last entry silently: both readers would "work"
    path = _raw_safetensors(tmp_path / "dup.safetensors", f'{{"w": {entry}, "w": {entry}}}', bytes(16))
    with pytest.raises(CheckpointError, match="appears twice in the safetensors header") as info:
        open_checkpoint(path)
    assert info.value.key == "w" and info.value.exit_code == ExitCode.BAD_CHECKPOINT
    twice = '{"w": {"dtype": "F32", "dtype": "I32", "shape": [4], "data_offsets": [0, 16]}}'
    field = _raw_safetensors(tmp_path / "f.safetensors", twice, bytes(16))
    with pytest.raises(CheckpointError, match="field 'dtype' twice"):
        open_checkpoint(field)
    meta = _raw_safetensors(tmp_path / "m.safetensors", f'{{"__metadata__": {{"a": "1", "a": "2"}}, "w": {entry}}}', bytes(16))
    with pytest.raises(CheckpointError, match="field 'a' twice"):
        open_checkpoint(meta)


def test_deeply_nested_safetensors_header_is_a_clean_error(tmp_path: Path) -> None:
    path = _raw_safetensors(tmp_path / "deep.safetensors", "[" * 100_000 + "]" * 100_000, b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        open_checkpoint(path)
    index = tmp_path / "deep.safetensors.index.json"
    index.write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        open_checkpoint(index)


@pytest.mark.parametrize("where", ["../outside.safetensors", "/abs/model.safetensors", "sub/../../x.safetensors"])
def test_index_pointing_outside_its_folder_is_refused(tmp_path: Path, where: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    save_file({"a": torch.ones(1)}, tmp_path / "outside.safetensors")  # exists: refused for where it is
    index = model / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": where}}))
    with pytest.raises(CheckpointError, match="outside the model folder") as info:
        open_checkpoint(model)
    assert info.value.key == "a" and info.value.path == str(index) and where in str(info.value)


def test_index_through_symlinked_shards_still_reads(tmp_path: Path) -> None:
    # the Hugging Face cache: snapshots/<rev>/model-*.safetensors -> ../../blobs/<hash>
    (tmp_path / "blobs").mkdir()
    snap = tmp_path / "snapshots" / "rev"
    snap.mkdir(parents=True)
    save_file({"a": torch.ones(2)}, tmp_path / "blobs" / "abc")
    (snap / "model.safetensors").symlink_to("../../blobs/abc")
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model.safetensors"}}))
    with open_checkpoint(snap / "model.safetensors.index.json") as r:
        assert torch.equal(r.get("a"), torch.ones(2))


def _fifo(tmp: Path, name: str) -> Path:
    import os

    os.mkfifo(tmp / name)
    return tmp / name


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "model.weights"])
def test_fifo_named_like_a_checkpoint_does_not_hang(tmp_path: Path, name: str) -> None:
    path = _fifo(tmp_path, name)  # opening it for reading would block until a writer comes: forever
    with pytest.raises(CheckpointError, match=r"is a named pipe \(FIFO\), not a regular file") as info:
        open_checkpoint(path)
    assert info.value.path == str(path)


def test_fifo_shard_in_an_index_does_not_hang(tmp_path: Path) -> None:
    _fifo(tmp_path, "model-1.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="named pipe"):
        open_checkpoint(tmp_path)


def test_fifo_in_a_model_folder_is_ignored(tmp_path: Path) -> None:
    save_file({"a": torch.ones(1)}, tmp_path / "model.safetensors")
    _fifo(tmp_path, "other.safetensors")
    with open_checkpoint(tmp_path) as r:
        assert r.keys() == ["a"]


def test_symlinks_loop_and_dangling(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").symlink_to("b.safetensors")
    (tmp_path / "b.safetensors").symlink_to("a.safetensors")
    with pytest.raises(CheckpointError, match="symlink loop") as info:
        open_checkpoint(tmp_path / "a.safetensors")
    assert info.value.exit_code == ExitCode.BAD_CHECKPOINT and info.value.path == str(tmp_path / "a.safetensors")
    (tmp_path / "gone.pt").symlink_to("nowhere.pt")
    with pytest.raises(InputNotFoundError, match="broken symlink .*'nowhere.pt'"):
        open_checkpoint(tmp_path / "gone.pt")


def test_null_byte_in_a_path(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="null byte") as info:
        open_checkpoint(str(tmp_path / "m\0.safetensors"))
    assert "\0" not in str(info.value) and "m\\0.safetensors" in str(info.value)


def test_character_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="character device"):
        open_checkpoint("/dev/zero")  # would never end


class _AsNobody:
    """Drop the effective uid to nobody (only root can, and come back): root reads every file anyway."""

    def __enter__(self) -> None:
        import os

        self.root = os.geteuid() == 0
        if self.root:
            os.seteuid(65534)

    def __exit__(self, *exc: object) -> None:
        import os

        if self.root:
            os.seteuid(0)


def test_permission_denied_is_named(tmp_path: Path) -> None:
    import os
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="wsa-perm-"))  # pytest's tmp tree is 0700: nobody could not enter it
    try:
        folder.chmod(0o755)
        save_file({"w": torch.ones(1)}, folder / "m.safetensors")
        torch.save({"w": torch.ones(1)}, folder / "m.pt")
        (folder / "locked").mkdir()
        save_file({"w": torch.ones(1)}, folder / "locked" / "m.safetensors")
        for name in ("m.safetensors", "m.pt"):
            (folder / name).chmod(0o000)
        (folder / "locked").chmod(0o000)
        for path in (folder / "m.safetensors", folder / "m.pt", folder / "locked", folder / "locked" / "m.safetensors"):
            with _AsNobody():
                if os.geteuid() == 0 or os.access(path, os.R_OK, effective_ids=os.access in os.supports_effective_ids):
                    pytest.skip("this user can read files without permission")
                with pytest.raises(CheckpointError, match="permission denied") as info:
                    open_checkpoint(path)
            assert info.value.exit_code == ExitCode.BAD_CHECKPOINT and info.value.path == str(path)
    finally:
        (folder / "locked").chmod(0o755)
        shutil.rmtree(folder)


def test_too_many_open_files_is_one_clear_error(tmp_path: Path) -> None:
    import os
    import resource

    for i in range(40):
        save_file({"w": torch.ones(1)}, tmp_path / f"m{i}.safetensors")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else 32
    readers = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 12, hard))
    try:
        with pytest.raises(CheckpointError, match=r"too many open files: \d+ are open and this process may hold \d+") as info:
            for i in range(40):
                readers.append(open_checkpoint(tmp_path / f"m{i}.safetensors"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for r in readers:
            r.close()
    assert info.value.exit_code == ExitCode.BAD_CHECKPOINT and f"m{len(readers)}.safetensors" in str(info.value)
    assert 0 < len(readers) < 40
