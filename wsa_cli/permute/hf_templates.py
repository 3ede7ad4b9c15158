"""Spec templates for transformers, filled from a Hugging Face ``config.json``.

``wsa spec template NAME --config config.json [CKPT]``. Three families, by their state-dict names:

* ``bert``: BERT-family encoders (``embeddings.*``, ``encoder.layer.N.attention.self.query`` ...,
  post-LayerNorm; MiniLM, BERT, RoBERTa names with their ``bert.``/``roberta.`` prefix).
* ``gpt2``: GPT-2 (``transformer.h.N.attn.c_attn``: one fused QKV Conv1D stored ``(in, out)``).
* ``llama``: Llama, Mistral and Qwen2 (``model.layers.N.self_attn.q_proj`` ..., RMSNorm, SwiGLU,
  grouped-query attention from ``num_key_value_heads``, half-split rotary pairs).

Every template uses the same groups:

* ``R``: the residual stream, one permutation shared by the embeddings, every block's input
  projections (columns) and output projections (rows, biases), every norm, the final norm and the
  head (tied embeddings included: the embedding matrix is the head).
* ``H_l`` (``KV_l`` with grouped-query attention): the heads of layer ``l``; whole heads move.
  With GQA the query heads are laid out ``KV_l * QG_l`` (each K/V head followed by the query heads
  that read it), so a K/V head moves with its group and ``QG_l`` reorders the query heads within
  every group alike.
* ``QK_l``: inside every head, the dimensions Q and K share (their dot product is what counts).
  Not with rotary embeddings (Llama): there every rotary pair of a head (half-split: ``i`` with
  ``i + d/2``) turns at its own frequency, so a pair may move only with its head, never to
  another pair's place; the Q/K head dimension is then a plain number (``KV_l*QG_l*64``) and a
  ``rope:`` rule per Q/K tensor says so, which makes any inner Q/K permutation a refused spec.
* ``VO_l``: inside every head, the dimensions V writes and O reads.
* ``F_l``: the MLP's hidden units (GELU MLP; or SwiGLU's gate and up, which share them, and down's
  columns).

The inner permutations are shared by every head of a layer (one ``QK_l``, one ``VO_l``), which is
function-preserving and keeps the spec small; per-head inner orders are not expressible yet.

Scaling rules (for ``permuted+fp``): Q x c with K x 1/c (scores unchanged), V x c with O x 1/c,
and in pre-norm models each norm's gamma x c with the projections that read it x 1/c (SwiGLU's
up x c with down x 1/c). Post-norm BERT's norms feed the residual stream and cannot be scaled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wsa_cli.errors import ConfigError, InputNotFoundError
from wsa_cli.permute.spec import AttentionRule, AxisEntry, AxisGroup, AxisLayout, PermutationSpec, RopeRule, ScaleRule

Shapes = Mapping[str, Sequence[int]]
BUFFERS = ("*.num_batches_tracked", "*.position_ids", "*.token_type_ids", "*.attn.bias", "*.attn.masked_bias", "*.rotary_emb.inv_freq")


def read_config(path: str | Path) -> dict[str, Any]:
    """A ``config.json`` (or the folder holding one) as a dict (InputNotFoundError / ConfigError naming it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise InputNotFoundError("model config not found (a config.json next to the checkpoint, or --config FILE)", path=p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read model config ({exc})", path=p) from None
    if not isinstance(data, dict):
        raise ConfigError("model config must be a JSON object", path=p)
    return data


def _int(cfg: Mapping[str, Any], *names: str, default: int | None = None) -> int:
    for n in names:
        v = cfg.get(n)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    if default is not None:
        return default
    raise ConfigError(f"model config has no positive integer {names[0]!r}", key=names[0])


def _g(name: str) -> AxisGroup:
    return AxisGroup(name)


def _lay(*segments: tuple[str | int, ...]) -> AxisLayout:
    return AxisLayout(tuple(segments))


class _Builder:
    """Collects ``key -> (axis entries, shape)``; optional keys are dropped when the checkpoint lacks them."""

    def __init__(self) -> None:
        self.axes: dict[str, tuple[AxisEntry, ...]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.optional: dict[str, bool] = {}  # key -> kept without a checkpoint to ask
        self.scaling: dict[str, ScaleRule] = {}
        self.rope: dict[str, RopeRule] = {}
        self.sizes: dict[str, int] = {}
        self.attention: dict[str, AttentionRule] = {}

    def add(self, key: str, shape: tuple[int, ...], *entries: AxisEntry, optional: bool | None = None) -> None:
        """``optional``: None (always there), or whether the key is there when no checkpoint says."""
        self.axes[key] = tuple(entries)
        self.shapes[key] = shape
        if optional is not None:
            self.optional[key] = optional


def _prefix(shapes: Shapes | None, anchor: str, candidates: Sequence[str], default: str) -> str:
    """The key prefix (``""``, ``"bert."``, ``"model."``...): from the checkpoint when given, else the config's class."""
    if shapes is None:
        return default
    for c in candidates:
        if f"{c}{anchor}" in shapes:
            return c
    for k in shapes:
        if k.endswith(anchor):
            return k[: -len(anchor)]
    raise ConfigError(f"the checkpoint has no {anchor!r} tensor (under any prefix): not this template's family", key=anchor)


def _arch(cfg: Mapping[str, Any]) -> str:
    a = cfg.get("architectures") or [""]
    return str(a[0]) if isinstance(a, list) and a else ""


def headless(cfg: Mapping[str, Any]) -> bool:
    """``BertModel``, ``LlamaModel``, ``GPT2Model``: no head, so the output is the residual stream (group ``R``)."""
    arch = _arch(cfg)
    return not arch or (arch.endswith("Model") and "For" not in arch and "LMHead" not in arch)


def bert_template(cfg: Mapping[str, Any], shapes: Shapes | None = None) -> _Builder:
    """BERT-family encoder (post-LayerNorm, GELU MLP, learned positions)."""
    d, nh = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads")
    layers, ff, vocab = _int(cfg, "num_hidden_layers"), _int(cfg, "intermediate_size"), _int(cfg, "vocab_size")
    if d % nh:
        raise ConfigError(f"hidden_size {d} is not a multiple of num_attention_heads {nh}", key="hidden_size")
    hd = d // nh
    mt = str(cfg.get("model_type", "bert"))
    default = "" if headless(cfg) else f"{mt.replace('-', '_')}."
    p = _prefix(shapes, "embeddings.word_embeddings.weight", ("", "bert.", "roberta.", f"{mt}."), default)
    b = _Builder()
    e = f"{p}embeddings."
    b.add(f"{e}word_embeddings.weight", (vocab, d), None, _g("R"))
    if cfg.get("position_embedding_type", "absolute") == "absolute":
        b.add(f"{e}position_embeddings.weight", (_int(cfg, "max_position_embeddings"), d), None, _g("R"))
    if _int(cfg, "type_vocab_size", default=0):
        b.add(f"{e}token_type_embeddings.weight", (_int(cfg, "type_vocab_size"), d), None, _g("R"))
    b.add(f"{e}LayerNorm.weight", (d,), _g("R"))
    b.add(f"{e}LayerNorm.bias", (d,), _g("R"))
    for i in range(layers):
        L, H, QK, VO, F = f"{p}encoder.layer.{i}.", f"H_{i}", f"QK_{i}", f"VO_{i}", f"F_{i}"
        qk, vo = _lay((H, QK)), _lay((H, VO))
        b.sizes.update({H: nh, QK: hd, VO: hd})
        for name, lay in (("query", qk), ("key", qk), ("value", vo)):
            b.add(f"{L}attention.self.{name}.weight", (d, d), lay, _g("R"))
            b.add(f"{L}attention.self.{name}.bias", (d,), lay)
        b.add(f"{L}attention.output.dense.weight", (d, d), _g("R"), vo)
        b.add(f"{L}attention.output.dense.bias", (d,), _g("R"))
        for leaf in ("weight", "bias"):
            b.add(f"{L}attention.output.LayerNorm.{leaf}", (d,), _g("R"))
        b.add(f"{L}intermediate.dense.weight", (ff, d), _g(F), _g("R"))
        b.add(f"{L}intermediate.dense.bias", (ff,), _g(F))
        b.add(f"{L}output.dense.weight", (d, ff), _g("R"), _g(F))
        b.add(f"{L}output.dense.bias", (d,), _g("R"))
        for leaf in ("weight", "bias"):
            b.add(f"{L}output.LayerNorm.{leaf}", (d,), _g("R"))
        a = f"{L}attention.self."
        b.attention[f"{L}attention"] = AttentionRule(f"{L}attention", (f"{a}query.weight", 0, 0), (f"{a}key.weight", 0, 0),
                                                     (f"{a}value.weight", 0, 0), (f"{L}attention.output.dense.weight", 1, 0), nh, nh, hd)
        b.scaling[f"{a}query.weight"] = ScaleRule(f"{a}query.weight", with_=(f"{a}query.bias",), inverse=(f"{a}key.weight", f"{a}key.bias"))
        b.scaling[f"{a}value.weight"] = ScaleRule(f"{a}value.weight", with_=(f"{a}value.bias",), inverse=(f"{L}attention.output.dense.weight",))
        b.scaling[f"{L}intermediate.dense.weight"] = ScaleRule(f"{L}intermediate.dense.weight", none="GELU follows: not positively homogeneous")
    pooled = headless(cfg)  # BertModel has a pooler; the task heads' own layers are not covered
    b.add(f"{p}pooler.dense.weight", (d, d), None, _g("R"), optional=pooled)
    b.add(f"{p}pooler.dense.bias", (d,), None, optional=pooled)
    return b


def gpt2_template(cfg: Mapping[str, Any], shapes: Shapes | None = None) -> _Builder:
    """GPT-2: pre-LayerNorm, fused QKV ``c_attn`` (Conv1D, weights stored ``(in, out)``), GELU MLP, tied head."""
    d, nh, layers = _int(cfg, "n_embd", "hidden_size"), _int(cfg, "n_head", "num_attention_heads"), _int(cfg, "n_layer", "num_hidden_layers")
    vocab, npos = _int(cfg, "vocab_size"), _int(cfg, "n_positions", "max_position_embeddings")
    ff = _int(cfg, "n_inner", default=4 * d)
    if d % nh:
        raise ConfigError(f"n_embd {d} is not a multiple of n_head {nh}", key="n_embd")
    default = "" if headless(cfg) else "transformer."
    p = _prefix(shapes, "wte.weight", ("transformer.", ""), default)
    b = _Builder()
    b.add(f"{p}wte.weight", (vocab, d), None, _g("R"))
    b.add(f"{p}wpe.weight", (npos, d), None, _g("R"))
    for i in range(layers):
        L, H, QK, VO, F = f"{p}h.{i}.", f"H_{i}", f"QK_{i}", f"VO_{i}", f"F_{i}"
        qkv = _lay((H, QK), (H, QK), (H, VO))
        b.sizes.update({H: nh, QK: d // nh, VO: d // nh})
        for ln in ("ln_1", "ln_2"):
            b.add(f"{L}{ln}.weight", (d,), _g("R"))
            b.add(f"{L}{ln}.bias", (d,), _g("R"))
        b.add(f"{L}attn.c_attn.weight", (d, 3 * d), _g("R"), qkv)
        b.add(f"{L}attn.c_attn.bias", (3 * d,), qkv)
        b.add(f"{L}attn.c_proj.weight", (d, d), _lay((H, VO)), _g("R"))
        w = f"{L}attn.c_attn.weight"
        b.attention[f"{L}attn"] = AttentionRule(f"{L}attn", (w, 1, 0), (w, 1, 1), (w, 1, 2), (f"{L}attn.c_proj.weight", 0, 0), nh, nh, d // nh)
        b.add(f"{L}attn.c_proj.bias", (d,), _g("R"))
        b.add(f"{L}mlp.c_fc.weight", (d, ff), _g("R"), _g(F))
        b.add(f"{L}mlp.c_fc.bias", (ff,), _g(F))
        b.add(f"{L}mlp.c_proj.weight", (ff, d), _g(F), _g("R"))
        b.add(f"{L}mlp.c_proj.bias", (d,), _g("R"))
        for ln, nxt in (("ln_1", "attn.c_attn.weight"), ("ln_2", "mlp.c_fc.weight")):
            b.scaling[f"{L}{ln}.weight"] = ScaleRule(f"{L}{ln}.weight", with_=(f"{L}{ln}.bias",), inverse=(f"{L}{nxt}",))
        b.scaling[f"{L}mlp.c_fc.weight"] = ScaleRule(f"{L}mlp.c_fc.weight", none="GELU follows: not positively homogeneous")
    b.add(f"{p}ln_f.weight", (d,), _g("R"))
    b.add(f"{p}ln_f.bias", (d,), _g("R"))
    tied = cfg.get("tie_word_embeddings", True)
    b.add("lm_head.weight", (vocab, d), None, _g("R"), optional=not tied and bool(p))
    if not tied and p:
        b.scaling[f"{p}ln_f.weight"] = ScaleRule(f"{p}ln_f.weight", with_=(f"{p}ln_f.bias",), inverse=("lm_head.weight",))
    else:
        b.scaling[f"{p}ln_f.weight"] = ScaleRule(f"{p}ln_f.weight", none="the head is the tied embedding matrix, which also feeds the residual stream")
    return b


def llama_template(cfg: Mapping[str, Any], shapes: Shapes | None = None) -> _Builder:
    """Llama / Mistral / Qwen2: pre-RMSNorm, GQA, half-split RoPE, SwiGLU; Qwen2's Q/K/V biases."""
    d, nh = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads")
    layers, ff, vocab = _int(cfg, "num_hidden_layers"), _int(cfg, "intermediate_size"), _int(cfg, "vocab_size")
    nkv = _int(cfg, "num_key_value_heads", default=nh)
    hd = _int(cfg, "head_dim", default=d // nh)
    if nh % nkv:
        raise ConfigError(f"num_attention_heads {nh} is not a multiple of num_key_value_heads {nkv}", key="num_key_value_heads")
    if hd % 2 or (cfg.get("head_dim") is None and d % nh):
        raise ConfigError(f"head dimension {hd} must be even (rotary pairs) and hidden_size a multiple of the heads", key="head_dim")
    prf = cfg.get("partial_rotary_factor", 1.0)
    if prf not in (None, 1, 1.0):
        raise ConfigError(f"partial_rotary_factor {prf}: only full-width rotary embeddings are supported", key="partial_rotary_factor")
    qg = nh // nkv
    mt = str(cfg.get("model_type", "llama"))
    qkv_bias = bool(cfg.get("attention_bias", mt == "qwen2"))
    o_bias = bool(cfg.get("attention_bias", False)) and mt != "qwen2"
    mlp_bias = bool(cfg.get("mlp_bias", False))
    default = "" if headless(cfg) else "model."
    p = _prefix(shapes, "embed_tokens.weight", ("model.", ""), default)
    b = _Builder()
    b.add(f"{p}embed_tokens.weight", (vocab, d), None, _g("R"))
    for i in range(layers):
        L, VO, F = f"{p}layers.{i}.", f"VO_{i}", f"F_{i}"
        KV = f"KV_{i}" if qg > 1 else f"H_{i}"
        heads: tuple[str | int, ...] = (KV, f"QG_{i}") if qg > 1 else (KV,)
        # rotary: every pair of a head dimension has its own frequency, so Q/K dims stay in place inside a head
        q, k = _lay((*heads, hd)), _lay((KV, hd))
        b.sizes.update({KV: nkv, VO: hd, **({f"QG_{i}": qg} if qg > 1 else {})})
        v, o = _lay((KV, VO)), _lay((*heads, VO))
        a = f"{L}self_attn."
        b.add(f"{L}input_layernorm.weight", (d,), _g("R"))
        for name, lay, n in (("q_proj", q, nh * hd), ("k_proj", k, nkv * hd), ("v_proj", v, nkv * hd)):
            b.add(f"{a}{name}.weight", (n, d), lay, _g("R"))
            if qkv_bias:
                b.add(f"{a}{name}.bias", (n,), lay)
        for name in ("q_proj", "k_proj"):
            for leaf in ("weight", "bias") if qkv_bias else ("weight",):
                b.rope[f"{a}{name}.{leaf}"] = RopeRule(f"{a}{name}.{leaf}", 0, hd, "half-split")
        b.add(f"{a}o_proj.weight", (d, nh * hd), _g("R"), o)
        b.attention[f"{L}self_attn"] = AttentionRule(f"{L}self_attn", (f"{a}q_proj.weight", 0, 0), (f"{a}k_proj.weight", 0, 0),
                                                     (f"{a}v_proj.weight", 0, 0), (f"{a}o_proj.weight", 1, 0), nh, nkv, hd)
        if o_bias:
            b.add(f"{a}o_proj.bias", (d,), _g("R"))
        b.add(f"{L}post_attention_layernorm.weight", (d,), _g("R"))
        m = f"{L}mlp."
        for name in ("gate_proj", "up_proj"):
            b.add(f"{m}{name}.weight", (ff, d), _g(F), _g("R"))
            if mlp_bias:
                b.add(f"{m}{name}.bias", (ff,), _g(F))
        b.add(f"{m}down_proj.weight", (d, ff), _g("R"), _g(F))
        if mlp_bias:
            b.add(f"{m}down_proj.bias", (d,), _g("R"))
        bias = (lambda name: (f"{a}{name}.bias",) if qkv_bias else ())  # noqa: E731
        b.scaling[f"{L}input_layernorm.weight"] = ScaleRule(f"{L}input_layernorm.weight", inverse=tuple(f"{a}{n}.weight" for n in ("q_proj", "k_proj", "v_proj")))
        b.scaling[f"{a}q_proj.weight"] = ScaleRule(f"{a}q_proj.weight", with_=bias("q_proj"), inverse=(f"{a}k_proj.weight", *bias("k_proj")))
        b.scaling[f"{a}v_proj.weight"] = ScaleRule(f"{a}v_proj.weight", with_=bias("v_proj"), inverse=(f"{a}o_proj.weight",))
        b.scaling[f"{L}post_attention_layernorm.weight"] = ScaleRule(
            f"{L}post_attention_layernorm.weight", inverse=(f"{m}gate_proj.weight", f"{m}up_proj.weight")
        )
        up_bias = (f"{m}up_proj.bias",) if mlp_bias else ()
        b.scaling[f"{m}up_proj.weight"] = ScaleRule(f"{m}up_proj.weight", with_=up_bias, inverse=(f"{m}down_proj.weight",))
    b.add(f"{p}norm.weight", (d,), _g("R"))
    tied = bool(cfg.get("tie_word_embeddings", False))
    if p:
        b.add("lm_head.weight", (vocab, d), None, _g("R"), optional=not tied)
    if tied or not p:
        b.scaling[f"{p}norm.weight"] = ScaleRule(f"{p}norm.weight", none="the head is the tied embedding matrix (or absent)")
    else:
        b.scaling[f"{p}norm.weight"] = ScaleRule(f"{p}norm.weight", inverse=("lm_head.weight",))
    return b


#: name -> (model_type values it fits, one-line description, builder)
CONFIG_TEMPLATES: dict[str, tuple[tuple[str, ...], str, Callable[[Mapping[str, Any], Shapes | None], _Builder]]] = {
    "bert": (("bert", "roberta", "xlm-roberta"), "BERT-family encoder (MiniLM, BERT, RoBERTa) from config.json: residual, heads, MLP", bert_template),
    "gpt2": (("gpt2",), "GPT-2 from config.json: residual, heads in the fused c_attn, MLP, tied head", gpt2_template),
    "llama": (("llama", "mistral", "qwen2"), "Llama/Mistral/Qwen2 from config.json: residual, GQA heads, RoPE pairs, SwiGLU", llama_template),
}


def config_spec(name: str, cfg: Mapping[str, Any], shapes: Shapes | None = None, *, config_path: str | Path | None = None) -> PermutationSpec:
    """The ``name`` template for a model config, resolved against ``shapes`` (a checkpoint) or the config's own shapes.

    Example:
        >>> cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        ...        "num_hidden_layers": 1, "intermediate_size": 128, "vocab_size": 100}
        >>> config_spec("llama", cfg).axes["model.layers.0.self_attn.q_proj.weight"][0].to_yaml()
        'KV_0*QG_0*16'
    """
    if name not in CONFIG_TEMPLATES:
        raise ConfigError(f"unknown transformer template {name!r}; choose from {', '.join(CONFIG_TEMPLATES)}")
    types, _, fn = CONFIG_TEMPLATES[name]
    mt = cfg.get("model_type")
    if mt is not None and mt not in types:
        raise ConfigError(f"the {name} template fits model_type {', '.join(types)}, but the config says {mt!r}", path=config_path, key="model_type")
    b = fn(cfg, shapes)
    # optional keys (a tied head, a pooler): kept when the checkpoint has them, else as the config's class saves them
    axes = {k: v for k, v in b.axes.items() if k not in b.optional or (k in shapes if shapes is not None else b.optional[k])}
    scaling = {k: r for k, r in b.scaling.items() if all(t in axes for t in (r.key, *r.tensors()))}
    spec = PermutationSpec(axes, unpermuted=BUFFERS, sizes=dict(b.sizes), scaling=scaling, rope={k: r for k, r in b.rope.items() if k in axes},
                           attention=dict(b.attention))
    own = {k: b.shapes[k] for k in axes}
    try:
        resolved = spec.resolve(own)
        if shapes is not None:
            resolved = spec.resolve(shapes)
    except ConfigError as exc:
        raise ConfigError(f"the {name} template does not fit this checkpoint: {exc.message}", key=exc.key, path=config_path) from None
    return resolved
