"""Streaming merge: output layout, dtypes, report, provenance, determinism, atomicity, prefetch, stages."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from wsa_cli.errors import MismatchError
from wsa_cli.io import save_safetensors
from wsa_cli.merge.executor import merge_recipe
from wsa_cli.io.prefetch import prefetch as read_ahead
from wsa_cli.scope import tensor_scope


def _model(seed: int, dtype=torch.float32, scale=1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": (scale * torch.randn(16, 8, generator=g) + 0.1 * seed).to(dtype),
        "fc1.bias": torch.randn(16, generator=g).to(dtype),
        "bn1.running_mean": torch.randn(16, generator=g).to(dtype),
        "bn1.num_batches_tracked": torch.tensor(100 + seed),
        "fc2.weight": (scale * torch.randn(4, 16, generator=g)).to(dtype),
    }


@pytest.fixture
def models(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(3):
        p = tmp_path / f"m{i}.safetensors"
        save_safetensors(_model(i, scale=1 + i), p)
        paths.append(p)
    return paths


def _recipe(tmp_path: Path, body: str, name: str = "recipe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


def test_integer_tensors_copied_and_report_written(tmp_path, models, cli):
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors, m2.safetensors]\noutput: out.safetensors\n")
    res = cli("merge", str(r), "--format", "json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["stages"][0]
    assert summary["copied"] == 1 and summary["merged"] == 4 and summary["aligned"] == 2
    out = load_file(tmp_path / "out.safetensors")
    assert out["bn1.num_batches_tracked"].item() == 100 and out["bn1.num_batches_tracked"].dtype == torch.int64
    ins = [load_file(p) for p in models]
    torch.testing.assert_close(out["bn1.running_mean"], sum(m["bn1.running_mean"] for m in ins) / 3)
    report = json.loads((tmp_path / "out.wsa-merge-report.json").read_text())
    assert report["format"] == "wsa-merge-report" and report["counts"]["copied"] == 1
    assert report["copied_not_merged"][0]["key"] == "bn1.num_batches_tracked"
    rec = {t["key"]: t for t in report["tensors"]}
    before = rec["fc1.weight"]["before"]
    assert [round(b["std"], 5) for b in before] == [round(tensor_scope(m["fc1.weight"]).std, 5) for m in ins]
    assert rec["fc1.weight"]["aligned"] and "target" in rec["fc1.weight"] and "after" in rec["fc1.weight"]
    assert "before" not in rec["fc1.bias"]  # not a layer by default
    meta = safe_open(str(tmp_path / "out.safetensors"), "pt").metadata()
    assert meta["format"] == "pt" and meta["wsa_method"] == "linear"
    assert meta["wsa_recipe_sha256"] == report["recipe_sha256"]
    inputs = json.loads(meta["wsa_inputs"])
    assert [i["input"] for i in inputs] == ["m0.safetensors", "m1.safetensors", "m2.safetensors"]
    assert inputs[0]["files"][0]["bytes"] == models[0].stat().st_size


def test_report_false_warns_about_an_earlier_report_and_leaves_it(tmp_path, models, cli):
    """A report left by an earlier merge is the user's file: kept, but the merge says it no longer describes the output."""
    _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\noutput: out.safetensors\n")
    assert cli("merge", str(tmp_path / "recipe.yaml")).exit_code == 0
    old = (tmp_path / "out.wsa-merge-report.json").read_text()
    r = _recipe(tmp_path, "models: [m0.safetensors, m2.safetensors]\noutput: {path: out.safetensors, report: false}\n", "r2.yaml")
    res = cli("merge", str(r), "--force", "--format", "json")
    assert res.exit_code == 0, res.output
    assert any("out.wsa-merge-report.json is left from an earlier merge" in w for w in json.loads(res.stdout)["stages"][0]["warnings"])
    assert (tmp_path / "out.wsa-merge-report.json").read_text() == old


def test_aligned_layers_land_on_fused_scope_with_identical_models(tmp_path, cli):
    # the same layer at different scales: after alignment all K copies are identical, so the
    # average has exactly the target scope. Moment matching is the fusion here because the plain
    # average of w and 3w (std 2 s) misses it (sqrt(5) s): only a real rescale lands there.
    base = _model(0)
    scaled = [{k: (v * s if v.is_floating_point() else v) for k, v in base.items()} for s in (1.0, 3.0)]
    for i, sd in enumerate(scaled):
        save_safetensors(sd, tmp_path / f"s{i}.safetensors")
    r = _recipe(tmp_path, "models: [s0.safetensors, s1.safetensors]\nscope: {fusion: moments}\noutput: out.safetensors\n")
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out.wsa-merge-report.json").read_text())
    records = {rec["key"]: rec for rec in report["tensors"]}
    assert {k for k, rec in records.items() if rec.get("aligned")} == {"fc1.weight", "fc2.weight"}  # the layers
    merged = load_file(tmp_path / "out.safetensors")
    for key in ("fc1.weight", "fc2.weight"):
        scopes = [tensor_scope(sd[key]) for sd in scaled]
        mean = sum(s.mean for s in scopes) / 2
        std = (sum(s.std**2 + (s.mean - mean) ** 2 for s in scopes) / 2) ** 0.5
        assert abs(std - 2 * scopes[0].std) > 0.1 * std  # plain averaging would not get there
        got = tensor_scope(merged[key])
        assert got.std == pytest.approx(std, rel=1e-5) and got.mean == pytest.approx(mean, abs=1e-6), key
        assert records[key]["target"]["std"] == pytest.approx(std, rel=1e-5)  # and the report says so
        assert records[key]["after"]["std"] == pytest.approx(std, rel=1e-5)


def test_constant_layer_is_not_rescaled_and_reported(tmp_path, cli):
    a, b = _model(1), _model(2)
    a["fc2.weight"] = torch.zeros_like(a["fc2.weight"])
    save_safetensors(a, tmp_path / "a.safetensors")
    save_safetensors(b, tmp_path / "b.safetensors")
    r = _recipe(tmp_path, "models: [a.safetensors, b.safetensors]\noutput: out.safetensors\n")
    res = cli("merge", str(r), "--format", "json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["stages"][0]["constant_not_rescaled"] == ["fc2.weight"]
    report = json.loads((tmp_path / "out.wsa-merge-report.json").read_text())
    assert report["constant_not_rescaled"] == [{"key": "fc2.weight", "models": [0], "why": "constant layer (std 0) cannot be rescaled"}]


def test_output_dtype_follows_inputs_or_recipe(tmp_path, cli):
    for i in range(2):
        save_safetensors(_model(i, dtype=torch.bfloat16), tmp_path / f"h{i}.safetensors")
    r = _recipe(tmp_path, "models: [h0.safetensors, h1.safetensors]\noutput: out.safetensors\n")
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0
    out = load_file(tmp_path / "out.safetensors")
    assert out["fc1.weight"].dtype == torch.bfloat16 and out["bn1.num_batches_tracked"].dtype == torch.int64
    # math in float32: equals the float32 average rounded once to bf16
    ins = [load_file(tmp_path / f"h{i}.safetensors") for i in range(2)]
    want = ((ins[0]["fc1.bias"].float() + ins[1]["fc1.bias"].float()) / 2).to(torch.bfloat16)
    assert torch.equal(out["fc1.bias"], want)
    r = _recipe(tmp_path, "models: [h0.safetensors, h1.safetensors]\noutput: {path: out32.safetensors, dtype: float32}\n")
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0
    assert load_file(tmp_path / "out32.safetensors")["fc1.weight"].dtype == torch.float32


def test_mixed_dtypes_need_output_dtype(tmp_path, cli):
    save_safetensors(_model(0, dtype=torch.float16), tmp_path / "a.safetensors")
    save_safetensors(_model(1, dtype=torch.bfloat16), tmp_path / "b.safetensors")
    r = _recipe(tmp_path, "models: [a.safetensors, b.safetensors]\noutput: out.safetensors\n")
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 5 and "dtype bfloat16, expected float16" in res.stderr and "output.dtype" in res.stderr
    r = _recipe(tmp_path, "models: [a.safetensors, b.safetensors]\noutput: {path: out.safetensors, dtype: float32}\n")
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0


def test_sharded_folder_output_with_config_files(tmp_path, cli):
    src = tmp_path / "hf_model"
    src.mkdir()
    save_safetensors(_model(0), src / "model.safetensors")
    (src / "config.json").write_text('{"model_type": "toy"}\n')
    (src / "tokenizer.json").write_text("{}\n")
    save_safetensors(_model(1), tmp_path / "b.safetensors")
    r = _recipe(tmp_path, "models: [hf_model, b.safetensors]\noutput: {path: merged, shard_size: 300}\n")
    res = cli("merge", str(r), "--device", "cpu", "--format", "json")
    assert res.exit_code == 0, res.output
    out = tmp_path / "merged"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    merged = {}
    for s in shards:
        merged.update(load_file(out / s))
    assert set(merged) == set(_model(0))
    assert (out / "config.json").read_text() == '{"model_type": "toy"}\n' and (out / "tokenizer.json").exists()
    assert (out / "wsa-merge-report.json").exists()
    # and the folder is itself a valid input (the report is not mistaken for a model file)
    r2 = _recipe(tmp_path, "models: [merged, b.safetensors]\noutput: again.safetensors\n", "r2.yaml")
    assert cli("merge", str(r2), "--device", "cpu").exit_code == 0


def test_deterministic_byte_identical(tmp_path, models, cli):
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors, m2.safetensors]\nbase: m0.safetensors\n"
                          "method: dare_ties\nparameters: {drop_rate: 0.5}\nseed: 7\noutput: {path: o, shard_size: 400}\n")  # fmt: skip
    runs = []
    for _ in range(2):
        assert cli("merge", str(r), "--device", "cpu", "--force").exit_code == 0
        runs.append({p.name: p.read_bytes() for p in sorted((tmp_path / "o").iterdir())})
    assert len(runs[0]) > 2 and runs[0] == runs[1]  # shards, index and report: byte for byte
    # a different seed changes the DARE masks, so the test can fail
    r2 = _recipe(tmp_path, r.read_text().replace("seed: 7", "seed: 8"), "r2.yaml")
    assert cli("merge", str(r2), "--device", "cpu", "--force").exit_code == 0
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "o").iterdir())} != runs[0]


def test_interrupted_write_leaves_no_output(tmp_path, models, monkeypatch, cli):
    import wsa_cli.merge.executor as executor

    real = executor.merge_tensor
    calls = {"n": 0}

    def boom(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # tensors 1 and 2 are already written to the temporary file
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-merge
        return real(*args, **kwargs)

    monkeypatch.setattr(executor, "merge_tensor", boom)
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\noutput: out.safetensors\n")
    with pytest.raises(KeyboardInterrupt):
        merge_recipe(r, device="cpu")
    r2 = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\noutput: {path: outdir, shard_size: 300}\n", "r2.yaml")
    calls["n"] = 0
    res = cli("merge", str(r2), "--device", "cpu")
    assert res.exit_code == 130 and calls["n"] == 3
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == sorted(["m0.safetensors", "m1.safetensors", "m2.safetensors", "recipe.yaml", "r2.yaml"])


def test_refuses_existing_output_and_input_overwrite(tmp_path, models, cli):
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\noutput: m0.safetensors\n")
    res = cli("merge", str(r), "--device", "cpu", "--force")
    assert res.exit_code == 7 and "overwrite input" in res.stderr
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\noutput: out.safetensors\n")
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0
    before = (tmp_path / "out.safetensors").read_bytes()
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 7 and "--force" in res.stderr
    assert cli("merge", str(r), "--device", "cpu", "--force").exit_code == 0
    assert (tmp_path / "out.safetensors").read_bytes() == before


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, models, cli):
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\noverrides:\n  - match: fc2.*\n    method: copy\n"
                          "    parameters: {model: 1}\n    align: false\noutput: out.safetensors\n")  # fmt: skip
    res = cli("merge", str(r), "--dry-run", "--format", "json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["dry_run"] is True
    rows = {t["key"]: t for t in plan["stages"][0]["tensors"]}
    assert rows["fc2.weight"]["method"] == "copy" and rows["fc2.weight"]["align"] is False and rows["fc2.weight"]["override"] == 0
    assert rows["fc1.weight"]["align"] is True and rows["bn1.num_batches_tracked"]["action"] == "copy"
    assert not (tmp_path / "out.safetensors").exists()
    res = cli("merge", str(r), "--dry-run", "--format", "csv", "--device", "cpu")
    assert res.exit_code == 0 and res.stdout.splitlines()[0].startswith("stage,key,shape")
    # the override really copies model 1's tensor bit for bit
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0
    assert torch.equal(load_file(tmp_path / "out.safetensors")["fc2.weight"], load_file(models[1])["fc2.weight"])


def test_multi_stage_merges_an_earlier_output(tmp_path, models, cli):
    r = _recipe(tmp_path, """
stages:
  - name: pair
    models: [m0.safetensors, m1.safetensors]
    scope: {align: false}
  - name: final
    models:
      - stage: pair
        weight: 2
      - m2.safetensors
    scope: {align: false}
    output: final.safetensors
""")
    res = cli("merge", str(r), "--device", "cpu", "--format", "json")
    assert res.exit_code == 0, res.output
    stages = json.loads(res.stdout)["stages"]
    assert [s["name"] for s in stages] == ["pair", "final"] and stages[0]["temporary"]
    ins = [load_file(p) for p in models]
    out = load_file(tmp_path / "final.safetensors")
    want = (2 * (ins[0]["fc1.weight"] + ins[1]["fc1.weight"]) / 2 + ins[2]["fc1.weight"]) / 3
    torch.testing.assert_close(out["fc1.weight"], want)
    assert not list(tmp_path.glob(".wsa-stage-*"))  # intermediate removed


def test_permutation_block_is_validated(tmp_path, models, cli):
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\npermutation:\n  spec: missing.yaml\noutput: out.safetensors\n")
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 3 and "recipe.yaml:3:" in res.stderr
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\npermutation:\n  spec: digits-mlp\n  reference: 5\noutput: out.safetensors\n")
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 6 and "recipe.yaml:4:" in res.stderr and "out of range" in res.stderr


def test_scope_file_target_and_missing_entry(tmp_path, models, cli):
    res = cli("scope", "fuse", str(models[0]), str(models[1]), "-o", str(tmp_path / "scopes.json"), "--weights", "1,3",
               "--format", "json", "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "scopes.json").read_text())
    assert data["format"] == "wsa-scopes" and set(data["layers"]) == {"fc1.weight", "fc2.weight"}
    assert data["weights"] == [0.25, 0.75]
    r = _recipe(tmp_path, "models: [m0.safetensors, m2.safetensors]\nscope: {target: scopes.json}\noutput: out.safetensors\n")
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0
    report = json.loads((tmp_path / "out.wsa-merge-report.json").read_text())
    rec = {t["key"]: t for t in report["tensors"]}
    assert rec["fc1.weight"]["target"]["std"] == pytest.approx(data["layers"]["fc1.weight"]["std"])
    r = _recipe(tmp_path, "models: [m0.safetensors, m2.safetensors]\nscope: {target: scopes.json, include: ['*.bias']}\n"
                          "output: out2.safetensors\n")  # fmt: skip
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 5 and "no entry" in res.stderr and "fc1.bias" in res.stderr
    # refuses to overwrite without --force
    res = cli("scope", "fuse", str(models[0]), "-o", str(tmp_path / "scopes.json"))
    assert res.exit_code == 7


# -- prefetch ------------------------------------------------------------------------------------------------


def test_read_ahead_is_bounded_ordered_and_raises_at_the_key():
    loaded: list[str] = []
    lock = threading.Lock()

    def load(k: str) -> str:
        with lock:
            loaded.append(k)
        return k * 2

    keys = [f"k{i}" for i in range(20)]
    it = read_ahead(load, keys, depth=2)
    first = next(it)
    time.sleep(0.2)  # give the loader time to run ahead as far as it can
    with lock:
        ahead = len(loaded)
    assert first == ("k0", "k0k0")
    assert ahead <= 1 + 2  # the key being consumed + depth (what the depth + 2 read-buffer sets rely on)
    assert [k for k, _ in it] == keys[1:]

    def bad(k: str) -> str:
        if k == "k3":
            raise MismatchError("boom", key=k)
        return k

    got = []
    with pytest.raises(MismatchError, match="boom"):
        for k, _ in read_ahead(bad, keys, depth=2):
            got.append(k)
    assert got == ["k0", "k1", "k2"]


def test_read_ahead_stops_when_the_consumer_leaves():
    loaded: list[str] = []
    for k, _ in read_ahead(lambda k: loaded.append(k) or k, [str(i) for i in range(1000)], depth=1):
        if k == "2":
            break
    n = len(loaded)
    time.sleep(0.1)
    assert n == len(loaded) <= 4  # nothing loads after the loop is left
def test_merge_tensor_cpu_equals_float64_reference():
    # the device path: same function with an explicit device; CPU here, CUDA on a GPU machine
    from wsa_cli.fusion.pipeline import ScopeOptions
    from wsa_cli.merge.executor import merge_tensor
    from wsa_cli.merge.plan import TensorPlan

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(32, 16, generator=g) * (i + 1) for i in range(3)]
    entry = TensorPlan("w", (32, 16), torch.float32, torch.float32, "merge", "linear", {"normalize": True}, True, True, "affine")
    got = merge_tensor(entry, xs, None, scope=ScopeOptions(), weights=[1, 1, 1], seed=0, device=torch.device("cpu")).tensor
    want = merge_tensor(entry, [x.double() for x in xs], None, scope=ScopeOptions(), weights=[1, 1, 1], seed=0,
                        device=torch.device("cpu")).tensor  # fmt: skip
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)


def test_cuda_path_matches_cpu_when_available(tmp_path, models):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\noutput: cpu.safetensors\n")
    merge_recipe(r, device="cpu")
    r = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\noutput: gpu.safetensors\n", "g.yaml")
    merge_recipe(r, device="cuda")
    a, b = load_file(tmp_path / "cpu.safetensors"), load_file(tmp_path / "gpu.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)


def test_streaming_holds_only_a_few_keys_at_once(tmp_path, monkeypatch):
    """Reads run ahead of writes by at most prefetch + 2 keys, and every mapped tensor is released
    once merged (a copied one once written: the output may be its pages): memory is bounded by
    tensors, not models."""
    import wsa_cli.merge.executor as executor
    from wsa_cli.io.base import CheckpointReader

    g = torch.Generator().manual_seed(0)
    for i in range(3):
        tensors = {f"layer{j:02d}.weight": torch.randn(8, 8, generator=g) for j in range(40)}
        tensors["layer20.steps"] = torch.arange(64)  # an integer tensor: copied, not merged
        save_safetensors(tensors, tmp_path / f"s{i}.safetensors")
    lock = threading.Lock()
    read_keys: set[str] = set()
    written: list[str] = []
    merging: list[str] = []
    merged: list[str] = []
    released: list[str] = []
    worst = {"ahead": 0}
    real_view, real_release, real_merge = CheckpointReader.view, CheckpointReader.release, executor.merge_planned

    def merge_planned(entry, *args, **kw):
        with lock:
            merging.append(entry.key)
        res = real_merge(entry, *args, **kw)
        with lock:
            merged.append(entry.key)
        return res

    def view(self, key):
        with lock:
            read_keys.add(key)
            worst["ahead"] = max(worst["ahead"], len(read_keys) - len(written))
        return real_view(self, key)

    def release(self, key, upto=None):
        with lock:
            # a merged key's pages go while it is merged (behind its passes) or after; a copy's only once its output is on disk
            assert key in (written if key.endswith(".steps") else merging)
            if key not in merged:
                return real_release(self, key, upto)  # during its merge: not counted below
            released.append(key)
        real_release(self, key, upto)

    class Writer(executor.SafetensorsWriter):
        def write(self, key, tensor):
            with lock:
                written.append(key)
            super().write(key, tensor)

    monkeypatch.setattr(CheckpointReader, "view", view)
    monkeypatch.setattr(CheckpointReader, "release", release)
    monkeypatch.setattr(executor, "SafetensorsWriter", Writer)
    monkeypatch.setattr(executor, "merge_planned", merge_planned)
    r = _recipe(tmp_path, "models: [s0.safetensors, s1.safetensors, s2.safetensors]\noutput: out.safetensors\n")
    merge_recipe(r, device="cpu")
    assert len(written) == 41 and read_keys == set(written)
    assert sorted(released) == sorted(written * 3)  # each key, once per input model
    assert 1 <= worst["ahead"] <= 1 + 2  # default prefetch depth 1, plus the key being merged and the one being read


def test_float8_models_merge_like_their_float32_values(tmp_path, cli):
    # torch never promotes float8 implicitly: the accumulation converts it explicitly, also for
    # tensors larger than one CPU block
    from safetensors.torch import save_file

    from wsa_cli.scope.stats import SCOPE_CHUNK

    g = torch.Generator().manual_seed(0)
    big = (SCOPE_CHUNK // 64 + 1, 64)
    models = [{"w": torch.randn(*big, generator=g).to(torch.float8_e4m3fn), "s": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn)} for _ in range(2)]
    for i, m in enumerate(models):
        save_file(m, str(tmp_path / f"m{i}.safetensors"))
    recipe = _recipe(tmp_path, "models: [m0.safetensors, m1.safetensors]\nmethod: linear\nscope: {align: false}\noutput: out.safetensors\n")
    res = cli("merge", str(recipe))
    assert res.exit_code == 0, res.output
    out = load_file(tmp_path / "out.safetensors")
    for k in ("w", "s"):
        assert out[k].dtype == torch.float8_e4m3fn
        expected = ((models[0][k].float() + models[1][k].float()) / 2).to(torch.float8_e4m3fn)
        assert torch.equal(out[k].float(), expected.float())
