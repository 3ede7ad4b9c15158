"""The hf-* evaluators on tiny random models built from configs (offline) and on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.hf
transformers = pytest.importorskip("transformers")

from wsa_cli.errors import InvalidValueError, MismatchError  # noqa: E402
from wsa_cli.interpolate.evaluators import resolve_evaluator  # noqa: E402
from wsa_cli.io import open_checkpoint, save_safetensors  # noqa: E402

TEXT = """the cat sat on the mat
a dog ran in the park and barked
merging models is cheaper than training them
we measure perplexity on a small local file
one more line of text for the tiny model
"""


def _tokenizer_files(minilm: Path, folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)


def _noisy_copy(src: Path, dst: Path, seed: int, scale: float = 0.01) -> Path:
    shutil.copytree(src, dst)
    g = torch.Generator().manual_seed(seed)
    with open_checkpoint(src / "model.safetensors") as r:
        sd = {k: (v + scale * v.float().std() * torch.randn(v.shape, generator=g)).to(v.dtype) if v.is_floating_point() and v.ndim >= 2
              else v.clone() for k, v in r.state_dict().items()}  # fmt: skip
    (dst / "model.safetensors").unlink()
    save_safetensors(sd, dst / "model.safetensors")
    return dst


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory, minilm_folder: Path) -> Path:
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=30522, n_positions=64, n_embd=16, n_layer=2, n_head=2, bos_token_id=101, eos_token_id=102)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    _tokenizer_files(minilm_folder, folder)
    return folder


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory, minilm_folder: Path) -> Path:
    folder = tmp_path_factory.mktemp("cls")
    torch.manual_seed(1)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=64, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    _tokenizer_files(minilm_folder, folder)
    return folder


def _state(folder: Path) -> dict[str, torch.Tensor]:
    with open_checkpoint(folder) as r:
        return {k: v.clone() for k, v in r.state_dict().items()}


def test_perplexity_matches_transformers_loss(tiny_gpt2: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    ev = resolve_evaluator(f"hf-perplexity:{text}", model_folder=tiny_gpt2)
    got = ev(_state(tiny_gpt2), torch.device("cpu"))
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_gpt2)
    total = count = 0.0
    with torch.no_grad():
        for line in TEXT.splitlines():  # one example at a time: no padding at all
            ids = tok(line, return_tensors="pt")["input_ids"]
            n = ids.shape[1] - 1
            total += float(model(ids, labels=ids).loss) * n
            count += n
    assert got["tokens"] == count
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["perplexity"] == pytest.approx(torch.exp(torch.tensor(total / count)).item(), rel=1e-5)
    again = ev(_state(tiny_gpt2), torch.device("cpu"))
    assert again == got  # deterministic, and the model built once is reused
    short = resolve_evaluator(f"hf-perplexity:{text}", model_folder=tiny_gpt2, limit=2)(_state(tiny_gpt2), torch.device("cpu"))
    assert short["tokens"] < got["tokens"]


def test_classify_accuracy_and_label_names(tiny_classifier: Path, tmp_path: Path) -> None:
    rows = [("great movie", "pos"), ("awful film", "neg"), ("fine", "pos"), ("bad", "neg"), ("not good at all", "neg")]
    csv = tmp_path / "data.csv"
    csv.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": 1 if lab == "pos" else 0}) + "\n" for t, lab in rows))
    sd = _state(tiny_classifier)
    a = resolve_evaluator(f"hf-classify:{csv}", model_folder=tiny_classifier)(sd, torch.device("cpu"))
    b = resolve_evaluator(f"hf-classify:{jsonl}", model_folder=tiny_classifier)(sd, torch.device("cpu"))
    assert a == pytest.approx(b)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_classifier)
    with torch.no_grad():
        preds = [int(model(**tok(t, return_tensors="pt")).logits.argmax()) for t, _ in rows]
    assert a["accuracy"] == sum(p == (1 if lab == "pos" else 0) for p, (_, lab) in zip(preds, rows, strict=True)) / len(rows)
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,maybe\n")
    with pytest.raises(Exception, match="label 'maybe'"):
        resolve_evaluator(f"hf-classify:{bad}", model_folder=tiny_classifier)(sd, torch.device("cpu"))


def test_similarity_on_real_minilm_agrees_with_sentence_transformers(minilm_folder: Path, tmp_path: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    pairs = [("A man plays a guitar.", "Someone plays music.", 4.0), ("A dog runs.", "Stocks fell today.", 0.2),
             ("Kids play football.", "Children play soccer.", 4.8), ("It rains.", "The weather is wet.", 3.5)]
    f = tmp_path / "pairs.tsv"
    f.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
    got = resolve_evaluator(f"hf-similarity:{f}", model_folder=minilm_folder)(_state(minilm_folder), torch.device("cpu"))
    model = st.SentenceTransformer(str(minilm_folder), device="cpu")
    ea = model.encode([a for a, _, _ in pairs], convert_to_tensor=True, normalize_embeddings=True)
    eb = model.encode([b for _, b, _ in pairs], convert_to_tensor=True, normalize_embeddings=True)
    assert got["mean_cosine"] == pytest.approx(float((ea * eb).sum(-1).mean()), abs=1e-5)
    cos = (ea * eb).sum(-1).double().numpy()
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # noqa: E731 - no ties here
    expected = float(np.corrcoef(rank(cos), rank(np.array([s for _, _, s in pairs])))[0, 1])
    assert got["agreement"] == pytest.approx(1.0, abs=1e-9) and got["spearman"] == pytest.approx(expected)
    assert got["loss"] == pytest.approx(1.0 - expected)
    noisy = {k: v + 0.05 * v.std() * torch.randn_like(v) if v.is_floating_point() and v.ndim >= 2 else v for k, v in _state(minilm_folder).items()}
    worse = resolve_evaluator(f"hf-similarity:{f}", model_folder=minilm_folder)(noisy, torch.device("cpu"))
    assert worse["agreement"] < 1.0


def test_sweep_and_interpolate_take_hf_evaluators(tiny_gpt2: Path, tmp_path: Path, cli) -> None:  # noqa: ANN001
    a = _noisy_copy(tiny_gpt2, tmp_path / "ft-a", 1, 0.2)
    b = _noisy_copy(tiny_gpt2, tmp_path / "ft-b", 2, 0.2)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"models:\n  - {a}\n  - {b}\nmethod: linear\noutput: {tmp_path / 'merged'}\n")
    res = cli("sweep", str(recipe), "--grid", "models[1].weight=0,1,3", "--eval", f"hf-perplexity:{text}", "--limit", "3",
              "--front", "loss,tokens", "--direction", "tokens=max", "--write", "best:loss", "--device", "cpu", "--json")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["model_folder"] == str(a) and doc["evaluated"] == 3
    assert all("perplexity" in r["metrics"] for r in doc["points"])
    out = Path(doc["written"][0]["output"])
    assert (out / "config.json").is_file() and (out / "wsa-recipe.yaml").is_file()
    direct = resolve_evaluator(f"hf-perplexity:{text}", model_folder=a, limit=3)(_state(out), torch.device("cpu"))
    assert direct == doc["points"][doc["best"]["loss"]]["metrics"]
    res = cli("interpolate", str(a), str(b), "--alphas", "0,0.5,1", "--eval", f"hf-perplexity:{text}", "--limit", "2", "--modes", "naive",
              "--device", "cpu", "--json")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    curve = json.loads(res.stdout)["modes"][0]["curve"]
    assert len(curve) == 3 and all("perplexity" in r for r in curve)


def test_errors(tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    with pytest.raises(InvalidValueError, match="needs the model's folder"):
        resolve_evaluator(f"hf-perplexity:{text}")
    with pytest.raises(InvalidValueError, match="unknown Hugging Face evaluator"):
        resolve_evaluator(f"hf-nope:{text}", model_folder=tiny_gpt2)
    with pytest.raises(Exception, match="not found"):
        resolve_evaluator(f"hf-perplexity:{tmp_path / 'missing.txt'}", model_folder=tiny_gpt2)
    ev = resolve_evaluator(f"hf-perplexity:{text}", model_folder=tiny_gpt2)
    sd = _state(tiny_gpt2)
    sd.pop(next(k for k in sd if k.endswith("ln_f.weight")))
    with pytest.raises(MismatchError, match="lack 1 tensor"):
        ev(sd, torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the hf extra were not installed
    with pytest.raises(InvalidValueError, match=r"pip install 'wsa\[hf\]'"):
        resolve_evaluator(f"hf-perplexity:{text}", model_folder=tiny_gpt2)


def test_similarity_on_a_tiny_random_encoder_without_scores(tiny_classifier: Path, tmp_path: Path) -> None:
    """AutoModel from a classifier's config: the encoder's keys are found under the ``bert.`` prefix; no scores: loss = 1 - agreement."""
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"sentence1": a, "sentence2": b}) + "\n" for a, b in [("a cat", "a dog"), ("red car", "blue car"),
                                                                                        ("hello there", "good bye")]))  # fmt: skip
    ev = resolve_evaluator(f"hf-similarity:{f}", model_folder=tiny_classifier, limit=2)
    own = ev(_state(tiny_classifier), torch.device("cpu"))
    assert "spearman" not in own and own["agreement"] == pytest.approx(1.0) and own["loss"] == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(3)
    moved = {k: v + 0.5 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in _state(tiny_classifier).items()}
    other = ev(moved, torch.device("cpu"))
    assert other["loss"] == pytest.approx(1.0 - other["agreement"]) and other["agreement"] < 0.999


def test_recipe_sweep_block_paths_are_relative_to_the_recipe(tiny_gpt2: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    work = tmp_path / "work"
    work.mkdir()
    (work / "text.txt").write_text(TEXT)
    a = _noisy_copy(tiny_gpt2, work / "a", 1, 0.1)
    _noisy_copy(tiny_gpt2, work / "b", 2, 0.1)
    (work / "r.yaml").write_text("models: [a, b]\noutput: merged\nsweep:\n  grid:\n    models[1].weight: [0.5, 1]\n"
                                 "  eval: [ppl=hf-perplexity:text.txt]\n  limit: 2\n  eval_model: a\n")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    res = cli("sweep", "work/r.yaml", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert Path(doc["model_folder"]).resolve() == (work / "a").resolve() and doc["metrics"][:2] == ["loss", "perplexity"] and doc["evaluated"] == 2
    direct = resolve_evaluator(f"hf-perplexity:{work / 'text.txt'}", model_folder=a, limit=2)
    assert direct(_state(a), torch.device("cpu"))["tokens"] == doc["points"][0]["metrics"]["tokens"]
