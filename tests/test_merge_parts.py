"""A merge split into parts (``--part i/N``, ``--parts N``, ``--assemble``): byte-identical to one run, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wsa_cli.errors import InvalidValueError, OutputError
from wsa_cli.io import save_safetensors
from wsa_cli.merge.executor import merge_recipe
from wsa_cli.merge.parts import Split, parse_part, parts_folder, split_parts
from wsa_cli.merge.plan import plan_recipe
from wsa_cli.recipe import load_recipe


def make_models(folder: Path, *, layers: int = 12, width: int = 128, k: int = 2, base: bool = False) -> None:
    """K (and a base) random models with ``layers`` (width, width) weights and biases, plus an int buffer."""
    g = torch.Generator().manual_seed(0)
    for name in [*"abcdefgh"[:k], *(["base"] if base else [])]:
        sd = {}
        for i in range(layers):
            sd[f"layers.{i}.weight"] = torch.randn(width, width, generator=g)
            sd[f"layers.{i}.bias"] = torch.randn(width, generator=g)
        sd["steps"] = torch.tensor([3], dtype=torch.int64)
        save_safetensors(sd, folder / f"{name}.safetensors")


def write_recipe(folder: Path, *, method: str = "linear", k: int = 2, base: bool = False, shard: int = 150_000, out: str = "out",
                 name: str = "r.yaml") -> Path:
    models = "".join(f"  - path: {m}.safetensors\n" for m in "abcdefgh"[:k])
    text = f"models:\n{models}" + ("base: base.safetensors\n" if base else "") + f"method: {method}\noutput:\n  path: {out}\n  shard_size: {shard}\n"
    (folder / name).write_text(text)
    return folder / name


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def case(tmp_path: Path) -> Path:
    make_models(tmp_path, base=True)
    write_recipe(tmp_path, method="ties", base=True)
    return tmp_path


def _single(case: Path) -> dict[str, bytes]:
    merge_recipe(case / "r.yaml")
    ref = tree(case / "out")
    os.rename(case / "out", case / "out.single")
    return ref


def test_parse_part() -> None:
    assert parse_part("3/4") == (3, 4)
    for bad in ("0/4", "5/4", "x", "1-2"):
        with pytest.raises(InvalidValueError):
            parse_part(bad)


def test_parts_are_balanced_contiguous_and_cover_every_shard(case: Path) -> None:
    plan = plan_recipe(load_recipe(case / "r.yaml"))[0]
    for n in (1, 2, 3, 5):
        parts, notes = split_parts(plan, n)
        assert [s for p in parts for s in p.shards] == list(range(len(plan.out_infos) and max(s for p in parts for s in p.shards) + 1))
        assert [k for p in parts for k in p.keys] == [t.key for t in plan.tensors]
        sizes = [p.nbytes for p in parts]
        biggest_shard = max(sum(i.nbytes for i in s) for s in __import__("wsa_cli.io.writer", fromlist=["x"]).plan_shards(plan.out_infos, plan.max_shard_bytes))
        assert max(sizes) - min(sizes) <= 2 * biggest_shard  # balanced by bytes, to within a shard or two
        assert not notes


def test_parts_then_assemble_is_byte_identical_in_any_order(case: Path, cli) -> None:  # noqa: ANN001
    ref = _single(case)
    for i in (3, 1, 2):
        res = merge_recipe(case / "r.yaml", split=Split(part=(i, 3)))
        assert res.final["part"]["part"] == i and not res.final["part"]["skipped"]
        manifest = json.loads((parts_folder(plan_recipe(load_recipe(case / "r.yaml"))[0]) / f"part-0000{i}-of-00003.json").read_text())
        assert manifest["format"] == "wsa-merge-part" and all(len(s["sha256"]) == 64 and s["keys"] for s in manifest["shards"])
        assert all("before" in r and "after" in r for r in manifest["records"] if r["key"].endswith("weight"))  # the scopes travel with the part
    assert not (case / "out").exists()  # nothing at the output until assembled
    again = merge_recipe(case / "r.yaml", split=Split(part=(2, 3)))
    assert again.final["part"]["skipped"]  # verified: not recomputed
    r = cli("merge", str(case / "r.yaml"), "--assemble", "--json")
    assert r.exit_code == 0, r.stderr
    assert tree(case / "out") == ref
    assert not (case / "out.wsa-parts").exists()


def test_parts_in_one_process_match_the_plain_merge(case: Path) -> None:
    ref = _single(case)
    res = merge_recipe(case / "r.yaml", split=Split(parts=4))
    assert res.final["parts"] == 4 and res.final["parts_skipped"] == []
    assert tree(case / "out") == ref


def test_assemble_refuses_a_missing_or_tampered_part(case: Path, cli) -> None:  # noqa: ANN001
    for i in (1, 2):
        merge_recipe(case / "r.yaml", split=Split(part=(i, 3)))
    r = cli("merge", str(case / "r.yaml"), "--assemble")
    assert r.exit_code == 7 and "part 3/3" in r.stderr and "--part 3/3" in r.stderr
    merge_recipe(case / "r.yaml", split=Split(part=(3, 3)))
    shard = sorted((case / "out.wsa-parts").glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    r = cli("merge", str(case / "r.yaml"), "--assemble")
    assert r.exit_code == 7 and "SHA-256" in r.stderr and not (case / "out").exists()
    merge_recipe(case / "r.yaml", split=Split(part=(1, 3)))  # the failing part is recomputed, not skipped
    assert cli("merge", str(case / "r.yaml"), "--assemble").exit_code == 0


def test_permutation_stage_is_never_split() -> None:
    plan = plan_recipe(load_recipe("recipes/permuted.yaml"), force=True)[0]
    parts, notes = split_parts(plan, 3)
    assert [len(p.keys) for p in parts] == [len(plan.tensors), 0, 0]
    assert "not split" in notes[0]


def test_multi_stage_recipe_is_refused(cli) -> None:  # noqa: ANN001
    r = cli("merge", "recipes/multi-stage.yaml", "--part", "1/2", "--dry-run")
    assert r.exit_code == 2 and "one-stage recipe" in r.stderr


def test_ray_missing_names_the_extra(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(InvalidValueError, match=r"pip install 'wsa\[ray\]'"):
        merge_recipe(case / "r.yaml", split=Split(parts=2, executor="ray"))
    assert not (case / "out").exists()


def test_sigkill_mid_merge_then_resume_is_byte_identical(tmp_path: Path) -> None:
    make_models(tmp_path, layers=16, width=1024)  # 4 MB per weight: each part takes a while
    write_recipe(tmp_path, shard=8_500_000)
    ref = _single(tmp_path)
    folder = tmp_path / "out.wsa-parts"
    env = {**os.environ, "WSA_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "wsa_cli", "merge", str(tmp_path / "r.yaml"), "--parts", "8", "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (folder / "part-00002-of-00008.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the merge finished before it could be killed; make the test models bigger"
    assert not (tmp_path / "out").exists()
    res = merge_recipe(tmp_path / "r.yaml", split=Split(parts=8))
    assert 1 in res.final["parts_skipped"] and 2 in res.final["parts_skipped"]
    assert len(res.final["parts_skipped"]) < 8
    assert tree(tmp_path / "out") == ref
    assert not folder.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the killed run's temporaries are gone


def test_other_merge_id_is_not_resumed(case: Path) -> None:
    merge_recipe(case / "r.yaml", split=Split(part=(1, 2)))
    os.utime(case / "a.safetensors", ns=(1, 1))  # an input changed (fast provenance: size and mtime)
    res = merge_recipe(case / "r.yaml", split=Split(part=(1, 2)))
    assert not res.final["part"]["skipped"]


def test_refused_output_refuses_parts_too(case: Path) -> None:
    (case / "out").mkdir()
    (case / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError):
        merge_recipe(case / "r.yaml", split=Split(part=(1, 2)))
