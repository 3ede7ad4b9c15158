"""wsa align on transformers: a randomly permuted model is put back exactly (real MiniLM; GPT-2 and GQA Llama shapes)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from wsa_cli.io import save_safetensors
from wsa_cli.permute import apply_permutation, random_perms, weight_matching
from wsa_cli.permute.hf_templates import bert_template, config_spec, gpt2_template, llama_template


def _random_state(builder, cfg, seed):
    """Every tensor of the template's key set, random (so no zero bias or unit norm hides a wrong match)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=gen) for k, s in builder(cfg).shapes.items()}


GPT2 = {"model_type": "gpt2", "n_embd": 48, "n_head": 4, "n_layer": 2, "vocab_size": 50, "n_positions": 16}
LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 2,
         "intermediate_size": 80, "vocab_size": 50, "tie_word_embeddings": False}  # fmt: skip
BERT = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 64, "num_attention_heads": 8, "num_hidden_layers": 2,
        "intermediate_size": 80, "vocab_size": 50, "max_position_embeddings": 16, "type_vocab_size": 2}  # fmt: skip


@pytest.mark.parametrize(("name", "builder", "cfg"), [("gpt2", gpt2_template, GPT2), ("llama", llama_template, LLAMA), ("bert", bert_template, BERT)])
def test_a_permuted_copy_is_recovered_exactly(name, builder, cfg):
    a = _random_state(builder, cfg, 0)
    spec = config_spec(name, cfg, {k: v.shape for k, v in a.items()})
    b = apply_permutation(spec, a, random_perms(spec, 3))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    res = weight_matching(spec, a, b, seed=0)
    back = apply_permutation(spec, b, res.perms)
    assert max(float((a[k] - back[k]).abs().max()) for k in a) == 0.0
    assert res.objective[-1] > res.objective[0]


def test_heads_are_matched_on_block_costs_blind_to_the_order_inside():
    # with heads and head dimensions both shuffled, an identity start on the dimensions would make a
    # head's plain inner product noise; the forward pass still finds the heads (objective[1] is the optimum)
    # (BERT layout: every head site has a permuted group inside it; without block costs this start reaches ~84%)
    a = _random_state(bert_template, BERT, 1)
    spec = config_spec("bert", BERT, {k: v.shape for k, v in a.items()})
    b = apply_permutation(spec, a, random_perms(spec, 5))
    res = weight_matching(spec, a, b, seed=0, max_sweeps=1)
    total = sum(float((t * t).sum(dtype=torch.float64)) for t in a.values())
    assert res.objective[1] == pytest.approx(total, rel=1e-6)


@pytest.mark.hf
def test_wsa_align_recovers_a_permuted_real_minilm(minilm_folder, tmp_path, cli):
    ref = minilm_folder / "model.safetensors"
    spec_file = tmp_path / "minilm.spec.yaml"
    assert cli("spec", "template", "bert", str(ref), "-o", str(spec_file)).exit_code == 0
    from wsa_cli.permute.specfile import load_spec

    a = load_file(str(ref))
    spec = load_spec(spec_file, shapes={k: v.shape for k, v in a.items()})
    b = apply_permutation(spec, a, random_perms(spec, 11))
    b_path = tmp_path / "b.safetensors"
    save_safetensors(b, b_path)
    out = tmp_path / "b_al.safetensors"
    res = cli("align", str(ref), str(b_path), "--spec", str(spec_file), "-o", str(out), "--model", f"hf:{minilm_folder}", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)["models"][0]
    assert report["max_abs_diff"] < 1e-4 * report["output_max_abs"]  # the aligned B computes what B computed
    back = load_file(str(out))
    assert max(float((a[k].float() - back[k].float()).abs().max()) for k in a) < 1e-5
    # and its outputs are the reference's, in the reference's order
    from wsa_cli.permute.hf_model import hf_model_source

    src = hf_model_source(minilm_folder)
    x = src.example(0)
    with torch.no_grad():
        ya, yb = src.build(a)(x).last_hidden_state, src.build(back)(x).last_hidden_state
    assert float((ya - yb).abs().max()) < 1e-5
