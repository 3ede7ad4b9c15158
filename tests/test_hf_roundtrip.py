"""Round trips through transformers: merged folders load with ``AutoModel.from_pretrained``.

Tiny random BERT and Llama models are built from configs with fixed seeds and saved the ways people
have them: one safetensors file, safetensors shards with an index, a ``pytorch_model.bin`` and a
Trainer checkpoint (the model next to its training state). Each pair is merged with ``wsa merge A B
-o OUT --no-align`` (so the result is a plain average), loaded back with transformers, and run on a
fixed input next to a model holding the independently averaged state dict (marker ``hf``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.hf

#: the keyword ``from_pretrained`` takes the dtype by (``torch_dtype`` before transformers 4.56)
DTYPE_KW = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
FORMATS = ("safetensors", "sharded", "bin", "trainer")
SHARD = 20_000  # bytes: the tiny models (~80 KB in float32) go into 3+ shards


def _config(arch: str):  # noqa: ANN202
    if arch == "bert":
        return transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                       vocab_size=100, max_position_embeddings=64)  # fmt: skip
    return transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=64, vocab_size=100, max_position_embeddings=64)  # fmt: skip


def _model_class(arch: str):  # noqa: ANN202
    return transformers.BertModel if arch == "bert" else transformers.LlamaForCausalLM


def _build(arch: str, seed: int):  # noqa: ANN202
    torch.manual_seed(seed)
    return _model_class(arch)(_config(arch)).eval()


def _save(model, folder: Path, fmt: str) -> Path:  # noqa: ANN001
    """``model`` saved into ``folder`` as ``fmt`` (see FORMATS)."""
    if fmt == "sharded":
        model.save_pretrained(folder, max_shard_size=SHARD)
        assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 3 and (folder / "model.safetensors.index.json").is_file()
        return folder
    model.save_pretrained(folder)
    if fmt == "bin":  # transformers 5 writes safetensors only; older versions wrote this with safe_serialization=False
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    if fmt == "trainer":
        torch.save({"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}, folder / "optimizer.pt")
        torch.save({"learning_rate": 1e-4, "seed": 42}, folder / "training_args.bin")
        torch.save({"python": 1, "cpu": torch.zeros(8, dtype=torch.uint8)}, folder / "rng_state.pth")
        (folder / "trainer_state.json").write_text('{"global_step": 10, "log_history": []}\n')
    return folder


def _averaged(arch: str, a, b, dtype: torch.dtype = torch.float32):  # noqa: ANN001, ANN202
    """A model holding the average of ``a``'s and ``b``'s state dicts, computed here with torch."""
    sa, sb = a.state_dict(), b.state_dict()
    avg = {k: ((sa[k].double() + sb[k].double()) / 2).to(sa[k].dtype) if sa[k].is_floating_point() else sa[k] for k in sa}
    ref = _model_class(arch)(_config(arch))
    ref.load_state_dict(avg)
    return ref.to(dtype).eval()


def _run(model, arch: str) -> torch.Tensor:  # noqa: ANN001
    ids = torch.tensor([[1, 5, 17, 42, 99, 3, 0, 64]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.last_hidden_state if arch == "bert" else out.logits


def _load(cls, folder: Path, headless: bool = False):  # noqa: ANN001, ANN202
    """``cls.from_pretrained(folder)``: every key it expects is there, and none it does not know (but a causal
    LM's ``lm_head.weight``, which ``AutoModel`` -- the model without its head -- rightly leaves out)."""
    model, info = cls.from_pretrained(folder, output_loading_info=True, **{DTYPE_KW: "auto"})
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert set(info["unexpected_keys"]) <= ({"lm_head.weight"} if headless else set()), info
    return model.eval()


@pytest.fixture(scope="module")
def pairs():  # noqa: ANN201
    return {arch: (_build(arch, 0), _build(arch, 1)) for arch in ("bert", "llama")}


def _merge(cli, a: Path, b: Path, out: Path, *extra: str) -> Path:  # noqa: ANN001
    res = cli("merge", str(a), str(b), "-o", str(out), "--no-align", "--device", "cpu", "--quiet", *extra)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_merged_folder_loads_and_equals_the_average(arch, fmt, pairs, tmp_path, cli):  # noqa: ANN001
    a, b = pairs[arch]
    out = _merge(cli, _save(a, tmp_path / "a", fmt), _save(b, tmp_path / "b", fmt), tmp_path / "merged")
    ref = _averaged(arch, a, b)
    want = _run(ref, arch)
    classes = [transformers.AutoModel] + ([transformers.AutoModelForCausalLM] if arch == "llama" else [])
    for cls in classes:
        model = _load(cls, out, headless=cls is transformers.AutoModel and arch == "llama")
        assert model.dtype == torch.float32
        if cls is transformers.AutoModel and arch == "llama":  # the base model: compare hidden states
            with torch.no_grad():
                ids = torch.tensor([[1, 5, 17, 42, 99, 3, 0, 64]])
                got, exp = model(input_ids=ids).last_hidden_state, ref.model(input_ids=ids).last_hidden_state
        else:
            got, exp = _run(model, arch), want
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
    names = {p.name for p in out.iterdir()}
    assert not names & {"optimizer.pt", "training_args.bin", "rng_state.pth", "trainer_state.json", "pytorch_model.bin"}
    if fmt == "sharded":  # sharded like the inputs: about the same pieces, with an index transformers reads
        shards_in = sorted((tmp_path / "a").glob("model-*-of-*.safetensors"))
        shards_out = sorted(out.glob("model-*-of-*.safetensors"))
        assert len(shards_out) >= 3 and abs(len(shards_out) - len(shards_in)) <= 1, (shards_in, shards_out)
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == {p.name for p in shards_out}
        assert "model.safetensors" not in names
    else:
        assert "model.safetensors" in names and not any(n.startswith("model-") for n in names)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_bfloat16_merge_loads_as_bfloat16(arch, pairs, tmp_path, cli):  # noqa: ANN001
    a, b = pairs[arch]
    out = _merge(cli, _save(a, tmp_path / "a", "sharded"), _save(b, tmp_path / "b", "sharded"), tmp_path / "merged",
                 "--dtype", "bfloat16")  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert "bfloat16" in {config.get("torch_dtype"), config.get("dtype")}
    cls = transformers.AutoModelForCausalLM if arch == "llama" else transformers.AutoModel
    model = _load(cls, out)
    assert model.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in model.parameters())
    got, want = _run(model, arch), _run(_averaged(arch, a, b, torch.bfloat16), arch)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    # bfloat16 halves the bytes: about half as many shards of the inputs' largest size
    n_in, n_out = (len(list(f.glob("model-*-of-*.safetensors"))) for f in (tmp_path / "a", out))
    assert 2 <= n_out < n_in, (n_in, n_out)


def test_shard_size_overrides_the_inputs_sharding(pairs, tmp_path, cli):  # noqa: ANN001
    a, b = pairs["bert"]
    out = _merge(cli, _save(a, tmp_path / "a", "sharded"), _save(b, tmp_path / "b", "sharded"), tmp_path / "merged")
    body = "models: [a, b]\nscope: {align: false}\noutput: {path: one, shard_size: 1GB}\n"
    (tmp_path / "r.yaml").write_text(body)
    res = cli("merge", str(tmp_path / "r.yaml"), "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "one").glob("*.safetensors")) == ["model.safetensors"]
    torch.testing.assert_close(_run(_load(transformers.AutoModel, tmp_path / "one"), "bert"),
                               _run(_load(transformers.AutoModel, out), "bert"), rtol=0, atol=0)  # fmt: skip
