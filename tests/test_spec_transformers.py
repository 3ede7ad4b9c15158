"""Transformer specs: factored/segmented axes, templates from config.json, RoPE and GQA refusals, function preservation."""

from __future__ import annotations

import json

import pytest
import torch

from wsa_cli.errors import ConfigError
from wsa_cli.permute import apply_permutation, random_perms
from wsa_cli.permute.hf_templates import BUFFERS, config_spec, read_config
from wsa_cli.permute.specfile import load_spec, parse_spec_text, render_spec
from wsa_cli.scope.selection import matches_any

#: small configs of the three families (random weights; nothing is downloaded)
CONFIGS = {
    "gpt2": ("gpt2", {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_head": 4, "n_layer": 2,
                      "vocab_size": 120, "n_positions": 64}),
    "llama-gqa": ("llama", {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 8,
                            "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 120,
                            "max_position_embeddings": 64, "tie_word_embeddings": False}),
    "mistral": ("llama", {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
                          "num_key_value_heads": 4, "num_hidden_layers": 1, "intermediate_size": 96, "vocab_size": 120,
                          "max_position_embeddings": 64}),
    "qwen2-tied": ("llama", {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 120,
                             "max_position_embeddings": 64, "tie_word_embeddings": True}),
}  # fmt: skip


def _saved_keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Each config's model built by transformers from the config (seeded random weights) and saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    out = {}
    for name, (_, cfg) in CONFIGS.items():
        d = dict(cfg)
        mt, arch = d.pop("model_type"), d.pop("architectures")[0]
        torch.manual_seed(0)
        model = getattr(transformers, arch)(transformers.AutoConfig.for_model(mt, **d))
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = folder
    return out


# -- the format ----------------------------------------------------------------------------------
HEADS = """format: wsa-permutation-spec
version: 1
groups: {H: 2, D: 3}
axes:
  qkv: [R, ["H*D", "H*D", "H*E"]]
  o: ["H*E", R]
"""


def test_segments_and_factors_round_trip_and_permute(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(HEADS)
    spec = load_spec(p, shapes={"qkv": (5, 18), "o": (6, 5)})
    assert spec.sizes == {"R": 5, "H": 2, "D": 3, "E": 3}
    again = parse_spec_text(render_spec(spec)).resolve({"qkv": (5, 18), "o": (6, 5)})
    assert again.axes == spec.axes
    perms = {"R": torch.arange(5), "H": torch.tensor([1, 0]), "D": torch.tensor([2, 0, 1]), "E": torch.arange(3)}
    row = apply_permutation(spec, {"qkv": torch.arange(18.0).expand(5, 18), "o": torch.zeros(6, 5)}, perms)["qkv"][0]
    # Q segment: head 1 first, inside it D's order 2,0,1; the V segment (H*E) moves whole heads
    assert row[:6].tolist() == [5, 3, 4, 2, 0, 1]
    assert row[12:].tolist() == [15, 16, 17, 12, 13, 14]


def test_a_layout_that_does_not_add_up_is_refused_at_its_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(HEADS.replace('"H*E"]]', '"H*E", "H*D"]]'))
    with pytest.raises(ConfigError, match="lay out") as exc:
        load_spec(p, shapes={"qkv": (5, 18), "o": (6, 5)})
    assert exc.value.line == 5 and exc.value.key == "qkv"


# -- templates cover every key ---------------------------------------------------------------------
def test_bert_template_from_config_covers_every_key_of_minilm(minilm_folder):
    cfg = read_config(minilm_folder / "config.json")
    saved = _saved_keys(minilm_folder)
    spec = config_spec("bert", cfg)  # from the config alone
    assert set(spec.axes) == {k for k in saved if not matches_any(k, BUFFERS)}
    resolved = config_spec("bert", cfg, saved)
    assert resolved.sizes["R"] == 384 and resolved.sizes["H_0"] == 12 and resolved.sizes["QK_0"] == 32 and resolved.sizes["F_5"] == 1536
    assert resolved.axes["encoder.layer.3.attention.self.query.weight"][0].to_yaml() == "H_3*QK_3"


@pytest.mark.hf
@pytest.mark.parametrize("name", list(CONFIGS))
def test_templates_cover_every_key_of_saved_models(name, hf_folders):
    template, cfg = CONFIGS[name]
    saved = _saved_keys(hf_folders[name])
    spec = config_spec(template, cfg)
    assert set(spec.axes) == {k for k in saved if not matches_any(k, BUFFERS)}
    config_spec(template, cfg, saved)  # resolves against the real shapes


def test_template_cli_from_config(tmp_path, cli):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIGS["llama-gqa"][1]))
    out = tmp_path / "llama.spec.yaml"
    res = cli("spec", "template", "llama", "--config", str(cfg), "-o", str(out))
    assert res.exit_code == 0, res.stderr
    text = out.read_text()
    assert '"KV_0*QG_0*8"' in text and "style: half-split" in text and "kv_heads: 2" in text
    assert cli("spec", "template", "llama").exit_code == 2  # no config, no checkpoint
    res = cli("spec", "template", "gpt2", "--config", str(cfg))
    assert res.exit_code == 6 and "model_type" in res.stderr


# -- RoPE and GQA constraints ------------------------------------------------------------------------
def _llama_text(**edits: str) -> tuple[str, dict]:
    cfg = CONFIGS["llama-gqa"][1]
    spec = config_spec("llama", cfg)
    shapes = dict(config_spec_shapes(cfg))
    text = render_spec(spec)
    for old, new in edits.items():
        assert old in text
        text = text.replace(old, new)
    return text, shapes


def config_spec_shapes(cfg):
    from wsa_cli.permute.hf_templates import llama_template

    return llama_template(cfg).shapes


def _refused(tmp_path, text, shapes):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_spec(p, shapes=shapes)
    line = exc.value.line
    assert line is not None and text.splitlines()[line - 1].strip().startswith(exc.value.key), (line, exc.value.key)
    return exc.value


def test_rope_pairs_may_not_move_inside_a_head(tmp_path):
    q = "model.layers.0.self_attn.q_proj.weight"
    text, shapes = _llama_text(**{'"KV_0*QG_0*8"': '"KV_0*QG_0*2*QK_0"', '"KV_0*8"': '"KV_0*2*QK_0"', "  R: 64\n": "  R: 64\n  QK_0: 4\n"})
    err = _refused(tmp_path, text, shapes)
    assert err.key == q and "own frequency" in err.message


def test_rope_pairs_may_not_be_split(tmp_path):
    text, shapes = _llama_text(**{'"KV_0*QG_0*8"': '"KV_0*QG_0*QK_0*2"', '"KV_0*8"': '"KV_0*QK_0*2"', "  R: 64\n": "  R: 64\n  QK_0: 4\n"})
    err = _refused(tmp_path, text, shapes)
    assert "splits the rotary pair" in err.message


def test_a_kv_head_must_move_with_its_group_of_query_heads(tmp_path):
    # query heads as one free group of 8: a query head could land in another K/V head's group
    text, shapes = _llama_text(**{'"KV_0*QG_0*8"': '"Q8_0*8"', '"KV_0*QG_0*VO_0"': '"Q8_0*VO_0"', "  R: 64\n": "  R: 64\n  Q8_0: 8\n"})
    err = _refused(tmp_path, text, shapes)
    assert "K/V head moves with its group" in err.message


def test_v_heads_must_move_with_k_heads(tmp_path):
    text, shapes = _llama_text(**{'"KV_0*VO_0"': '"KV2_0*VO_0"', "  R: 64\n": "  R: 64\n  KV2_0: 2\n"})
    err = _refused(tmp_path, text, shapes)
    assert err.key == "model.layers.0.self_attn.v_proj.weight" and "V's heads" in err.message


def test_the_template_spec_itself_passes_and_permutes_consistently():
    cfg = CONFIGS["llama-gqa"][1]
    spec = config_spec("llama", cfg, config_spec_shapes(cfg))
    assert "QK_0" not in spec.sizes and spec.sizes["KV_0"] == 2 and spec.sizes["QG_0"] == 4
    assert random_perms(spec, 1).keys() == spec.sizes.keys()


# -- function preservation on the real architectures ----------------------------------------------------
@pytest.mark.hf
@pytest.mark.parametrize("name", list(CONFIGS))
def test_spec_check_preserves_the_function_of_each_family(name, hf_folders, tmp_path, cli):
    template, _ = CONFIGS[name]
    ckpt = hf_folders[name] / "model.safetensors"
    spec = tmp_path / "spec.yaml"
    assert cli("spec", "template", template, str(ckpt), "-o", str(spec)).exit_code == 0
    res = cli("spec", "check", str(spec), str(ckpt), "--model", "hf", "--json")
    assert res.exit_code == 0, res.stderr
    f = json.loads(res.stdout)["functional"]
    assert f["ok"] and f["permutation_max_abs_diff"] < 1e-5 and f["rescale_max_abs_diff"] < 1e-5


@pytest.mark.hf
def test_spec_check_on_real_minilm(minilm_folder, tmp_path, cli):
    ckpt = minilm_folder / "model.safetensors"
    spec = tmp_path / "minilm.yaml"
    assert cli("spec", "template", "bert", str(ckpt), "-o", str(spec)).exit_code == 0
    res = cli("spec", "check", str(spec), str(ckpt), "--model", "hf", "--json")
    assert res.exit_code == 0, res.stderr
    f = json.loads(res.stdout)["functional"]
    assert f["permutation_max_abs_diff"] < 1e-4 * f["output_max_abs"]


@pytest.mark.hf
def test_spec_check_names_a_wrong_group_on_a_real_model(hf_folders, tmp_path, cli):
    ckpt = hf_folders["gpt2"] / "model.safetensors"
    spec = tmp_path / "spec.yaml"
    assert cli("spec", "template", "gpt2", str(ckpt), "-o", str(spec)).exit_code == 0
    # (biases start at zero and norms at one in a fresh model, so the wrong group goes on a weight)
    text = spec.read_text().replace("transformer.h.0.mlp.c_proj.weight: [F_0, R]", "transformer.h.0.mlp.c_proj.weight: [F_0, X]")
    assert "[F_0, X]" in text
    spec.write_text(text)
    res = cli("spec", "check", str(spec), str(ckpt), "--model", "hf")
    assert res.exit_code == 6 and "changes the model's outputs" in res.stderr


# -- spec infer on attention --------------------------------------------------------------------------
ATTENTION_MODEL = """
import torch
from torch import nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, split: bool):
        super().__init__()
        self.split = split
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))

    def forward(self, x):
        if not self.split:
            return self.o(torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), -1) @ self.v(x))
        b, t, d = x.shape
        q, k, v = (f(x).view(b, t, 4, 4).transpose(1, 2) for f in (self.q, self.k, self.v))
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))


def heads():
    return Attention(True)


def single_head():
    return Attention(False)
"""


def test_spec_infer_traces_heads_and_names_the_attention_it_cannot_trace(tmp_path, cli, monkeypatch):
    (tmp_path / "att.py").write_text(ATTENTION_MODEL)
    monkeypatch.chdir(tmp_path)
    res = cli("spec", "infer", "--model", "att.py:heads", "--input-shape", "5,16")
    assert res.exit_code == 0, res.output
    assert '["H_0*QK_0", null]' in res.stdout and '[null, "H_0*VO_0"]' in res.stdout  # q.weight, o.weight
    res = cli("spec", "infer", "--model", "att.py:single_head", "--input-shape", "5,16")  # no split into heads
    assert res.exit_code == 6
    assert "cannot handle node 'matmul" in res.stderr and "wsa spec template bert|gpt2|llama" in res.stderr
