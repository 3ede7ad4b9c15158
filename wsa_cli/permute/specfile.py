"""The permutation spec file: YAML read with line numbers, validated, and written back.

Written by ``wsa spec infer|guess|template``, read by ``wsa align``, the permuted interpolation
modes and a recipe's ``permutation:`` block. Format (the data model is
:class:`~wsa_cli.permute.spec.PermutationSpec`)::

    format: wsa-permutation-spec
    version: 1
    groups: {P_fc1: 64, P_fc2: 64}        # optional; sizes are checked against checkpoints
    axes:                                 # one entry per axis: a group, "GROUP*K", or null
      fc1.weight: [P_fc1, null]           # (out=64, in=64)
      fc1.bias: [P_fc1]
      fc2.weight: [P_fc2, P_fc1]
      fc2.bias: [P_fc2]
      fc3.weight: [null, P_fc2]           # the output layer keeps its order
      fc3.bias: [null]
    unpermuted: ["*.num_batches_tracked"] # globs (or re:REGEX) of keys copied unchanged
    scaling:                              # optional: function-preserving rescale rules
      fc1.weight: {with: [fc1.bias], inverse: [fc2.weight]}
      fc2.weight: {with: [fc2.bias], inverse: [fc3.weight]}
      fc3.weight: {none: "output layer: nothing downstream absorbs a scale"}

Transformers use factored and segmented axes and ``rope:`` (see :mod:`wsa_cli.permute.spec`)::

    axes:
      q_proj.weight: ["KV_0*QG_0*64", R]        # (kv heads, q heads per kv, head dim) x residual
      c_attn.weight: [R, ["H_0*QK_0", "H_0*QK_0", "H_0*VO_0"]]   # fused QKV: three segments
    rope:
      q_proj.weight: {axis: 0, head_dim: 64, style: half-split}
    attention:                                  # head structure, checked against the axes
      layers.0.self_attn: {q: "q_proj.weight:0", k: "k_proj.weight:0", v: "v_proj.weight:0", o: "o_proj.weight:1",
                           heads: 8, kv_heads: 2, head_dim: 64}

The file is parsed by the same line-aware loader as recipes (:mod:`wsa_cli.yamlnodes`), so a
syntax error or a key given twice is refused at its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wsa_cli.errors import ConfigError, InputNotFoundError
from wsa_cli.permute.spec import (
    DEFAULT_UNPERMUTED, ROPE_STYLES, SPEC_FORMAT, SPEC_VERSION, AttentionRule, AxisEntry, AxisGroup, AxisLayout, PermutationSpec, RopeRule,
    ScaleRule,
)  # fmt: skip
from wsa_cli.yamlnodes import YMap, YNode, load_yaml_text

_ENTRY = re.compile(r"^\s*([A-Za-z_][\w.\-/]*)\s*(?:\*\s*(\d+))?\s*$")


def render_spec(spec: PermutationSpec, header: str | None = None, *, with_sizes: bool = True) -> str:
    """The spec as YAML, one flow-style line per key (diff-friendly).

    ``with_sizes=False`` leaves ``groups:`` empty so the spec fits any width of the architecture.
    """
    lines = []
    if header:
        lines += [f"# {h}" for h in header.splitlines()]
    lines += [f"format: {SPEC_FORMAT}", f"version: {SPEC_VERSION}"]
    sizes = spec.sizes if with_sizes else {}
    lines.append("groups:" + ("" if sizes else " {}"))
    lines += [f"  {_q(g)}: {n}" for g, n in sizes.items()]
    lines.append("axes:")
    for key, entries in spec.axes.items():
        items = ", ".join(_entry_yaml(e) for e in entries)
        lines.append(f"  {_q(key)}: [{items}]")
    lines.append("unpermuted:" + ("" if spec.unpermuted else " []"))
    lines += [f"  - {_q(p)}" for p in spec.unpermuted]
    lines.append("scaling:" + ("" if spec.scaling else " {}"))
    for key, rule in spec.scaling.items():
        d = rule.to_dict()
        parts = []
        for name, value in d.items():
            if isinstance(value, list):
                parts.append(f"{name}: [{', '.join(_q(v) for v in value)}]")
            else:
                parts.append(f"{name}: {_q(value)}")
        lines.append(f"  {_q(key)}: {{{', '.join(parts)}}}")
    if spec.rope:
        lines.append("rope:")
        lines += [f"  {_q(k)}: {{axis: {r.axis}, head_dim: {r.head_dim}, style: {r.style}}}" for k, r in spec.rope.items()]
    if spec.attention:
        lines.append("attention:")
        for name, att in spec.attention.items():
            fields = ", ".join(f"{f}: {_q(v) if isinstance(v, str) else v}" for f, v in att.to_dict().items())
            lines.append(f"  {_q(name)}: {{{fields}}}")
    return "\n".join(lines) + "\n"


def _entry_yaml(e: AxisEntry) -> str:
    if e is None:
        return "null"
    y = e.to_yaml()
    return _q(y) if isinstance(y, str) else "[" + ", ".join(_q(x) for x in y) + "]"


def _q(text: str) -> str:
    """Quote a YAML scalar only when needed."""
    if re.fullmatch(r"[A-Za-z_][\w.\-/]*", text) and text not in ("null", "true", "false", "yes", "no", "on", "off"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- loading -------------------------------------------------------------------------------------
_FACTOR = re.compile(r"^\s*(?:([A-Za-z_][\w.\-/]*)|(\d+))\s*$")


def _parse_segment(raw: Any, *, key: str, axis: int, where: dict[str, Any]) -> tuple[str | int, ...]:
    if not isinstance(raw, str):
        raise ConfigError(f"axis {axis}: expected a group name, 'GROUP*K', 'A*B*...', a list of those, or null, got {raw!r}", key=key, **where)
    factors: list[str | int] = []
    for part in raw.split("*"):
        m = _FACTOR.match(part)
        if not m:
            raise ConfigError(f"axis {axis}: expected a group name or a number for each factor, got {part.strip()!r} in {raw!r}", key=key, **where)
        if m.group(2) is not None and int(m.group(2)) < 1:
            raise ConfigError(f"axis {axis}: factor sizes must be >= 1 in {raw!r}", key=key, **where)
        factors.append(m.group(1) if m.group(1) else int(m.group(2)))
    if not any(isinstance(f, str) for f in factors):
        raise ConfigError(f"axis {axis}: {raw!r} names no group (write null for an axis that keeps its order)", key=key, **where)
    return tuple(factors)


def _parse_entry(raw: Any, *, key: str, axis: int, where: dict[str, Any]) -> AxisEntry:
    if raw is None:
        return None
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"axis {axis}: an empty list of segments", key=key, **where)
        return AxisLayout(tuple(_parse_segment(r, key=key, axis=axis, where=where) for r in raw))
    if isinstance(raw, str) and (m := _ENTRY.match(raw)):
        inner = int(m.group(2)) if m.group(2) else 1
        if inner < 1:
            raise ConfigError(f"axis {axis}: inner size must be >= 1 in {raw!r}", key=key, **where)
        return AxisGroup(m.group(1), inner)
    return AxisLayout((_parse_segment(raw, key=key, axis=axis, where=where),))


def _parse_ref(raw: Any, role: str, *, key: str, where: dict[str, Any]) -> tuple[str, int, int]:
    """``"KEY:AXIS"`` or ``"KEY:AXIS:SEGMENT"`` -> ``(key, axis, segment)``."""
    parts = raw.rsplit(":", 2) if isinstance(raw, str) else []
    while len(parts) > 1 and not all(p.isdigit() for p in parts[1:]):
        parts = [":".join(parts[:2]), *parts[2:]]
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
        raise ConfigError(f"attention rule: {role} must be 'KEY:AXIS' or 'KEY:AXIS:SEGMENT', got {raw!r}", key=key, **where)
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else 0


def _parse_attention(data: Any, where: Any) -> dict[str, AttentionRule]:
    out: dict[str, AttentionRule] = {}
    if data is None:
        return out
    if not isinstance(data, Mapping):
        raise ConfigError("'attention:' must map layer names to {q, k, v, o, heads, kv_heads, head_dim}", **where("_attention"))
    fields = {"q", "k", "v", "o", "heads", "kv_heads", "head_dim"}
    for name, rule in data.items():
        name = str(name)
        w = where(f"attention:{name}")
        if not isinstance(rule, Mapping) or set(rule) != fields:
            raise ConfigError(f"attention rule must have exactly {', '.join(sorted(fields))}", key=name, **w)
        nums = [rule[f] for f in ("heads", "kv_heads", "head_dim")]
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in nums):
            raise ConfigError("attention rule: heads, kv_heads and head_dim must be positive integers", key=name, **w)
        refs = [_parse_ref(rule[r], r, key=name, where=w) for r in ("q", "k", "v", "o")]
        out[name] = AttentionRule(name, *refs, *nums)
    return out


def _parse_rope(data: Any, where: Any) -> dict[str, RopeRule]:
    out: dict[str, RopeRule] = {}
    if data is None:
        return out
    if not isinstance(data, Mapping):
        raise ConfigError("'rope:' must map tensor keys to {axis, head_dim, style}", **where("_rope"))
    for key, rule in data.items():
        key = str(key)
        w = where(f"rope:{key}")
        if not isinstance(rule, Mapping) or set(rule) != {"axis", "head_dim", "style"}:
            raise ConfigError("rope rule must be {axis: N, head_dim: N, style: half-split|interleaved}", key=key, **w)
        axis, hd, style = rule["axis"], rule["head_dim"], rule["style"]
        if not isinstance(axis, int) or isinstance(axis, bool) or not isinstance(hd, int) or isinstance(hd, bool) or hd < 2 or hd % 2:
            raise ConfigError("rope rule: axis must be an integer and head_dim an even integer >= 2", key=key, **w)
        if style not in ROPE_STYLES:
            raise ConfigError(f"rope rule: style must be one of {', '.join(ROPE_STYLES)}, got {style!r}", key=key, **w)
        out[key] = RopeRule(key, axis, hd, style)
    return out


def _str_list(raw: Any, what: str, *, key: str, where: dict[str, Any]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(f"'{what}' must be a list of tensor keys", key=key, **where)
    return tuple(raw)


def spec_from_dict(data: Any, *, path: str | Path | None = None, lines: Mapping[str, int] | None = None) -> PermutationSpec:
    """Validate the parsed YAML structure and build a :class:`PermutationSpec`.

    Example:
        >>> spec_from_dict({"format": "wsa-permutation-spec", "version": 1, "axes": {"w": ["P", None]}}).axes
        {'w': (AxisGroup(group='P', inner=1), None)}
    """
    lines = dict(lines or {})
    p = None if path is None else Path(path)

    def where(k: str) -> dict[str, Any]:
        return {"path": p, "line": lines.get(k)}

    if not isinstance(data, Mapping):
        raise ConfigError("a permutation spec must be a YAML mapping", path=p, line=1)
    if data.get("format") != SPEC_FORMAT:
        raise ConfigError(f"not a permutation spec (expected 'format: {SPEC_FORMAT}')", **where("_format"))
    if data.get("version") != SPEC_VERSION:
        raise ConfigError(f"spec version {data.get('version')!r} is not supported (expected {SPEC_VERSION})", **where("_version"))
    unknown = set(data) - {"format", "version", "groups", "axes", "unpermuted", "scaling", "rope", "attention"}
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"unknown section {name!r} (expected groups, axes, unpermuted, scaling, rope, attention)", **where("_" + name))
    sizes: dict[str, int] = {}
    for g, n in (data.get("groups") or {}).items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"group {g!r}: size must be a positive integer, got {n!r}", **where(f"group:{g}"))
        sizes[str(g)] = n
    raw_axes = data.get("axes")
    if not isinstance(raw_axes, Mapping) or not raw_axes:
        raise ConfigError("spec has no 'axes:' table", **where("_axes"))
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    for key, entries in raw_axes.items():
        key = str(key)
        if not isinstance(entries, list):
            raise ConfigError("axes entry must be a list (one group or null per axis)", key=key, **where(key))
        axes[key] = tuple(_parse_entry(e, key=key, axis=i, where=where(key)) for i, e in enumerate(entries))
    unpermuted = data.get("unpermuted", list(DEFAULT_UNPERMUTED))
    if unpermuted is None:
        unpermuted = []
    if not isinstance(unpermuted, list) or not all(isinstance(x, str) for x in unpermuted):
        raise ConfigError("'unpermuted:' must be a list of key patterns", **where("_unpermuted"))
    scaling: dict[str, ScaleRule] = {}
    for key, rule in (data.get("scaling") or {}).items():
        key = str(key)
        sw = where(f"scaling:{key}")
        if not isinstance(rule, Mapping):
            raise ConfigError("scaling rule must be a mapping (with, inverse, bn, norm or none)", key=key, **sw)
        bad = set(rule) - {"with", "inverse", "bn", "norm", "none"}
        if bad:
            raise ConfigError(f"scaling rule has unknown field {sorted(bad)[0]!r}", key=key, **sw)
        none = rule.get("none")
        if none is not None and len(rule) > 1:
            raise ConfigError("scaling rule with 'none' cannot have other fields", key=key, **sw)
        bn, norm = rule.get("bn"), rule.get("norm")
        if bn is not None and not isinstance(bn, str):
            raise ConfigError("'bn' must be the BatchNorm module name", key=key, **sw)
        if norm is not None and not isinstance(norm, str):
            raise ConfigError("'norm' must be the normalisation module name", key=key, **sw)
        scaling[key] = ScaleRule(
            key,
            _str_list(rule.get("with"), "with", key=key, where=sw),
            _str_list(rule.get("inverse"), "inverse", key=key, where=sw),
            bn,
            None if none is None else str(none),
            norm,
        )
    return PermutationSpec(axes, tuple(unpermuted), sizes, scaling, p, lines, _parse_rope(data.get("rope"), where),
                           _parse_attention(data.get("attention"), where))  # fmt: skip


def _line_map(root: YNode) -> dict[str, int]:
    """1-based lines of top-level sections (``_name``), axes/scaling keys (``scaling:KEY``) and groups (``group:NAME``)."""
    out: dict[str, int] = {}
    if not isinstance(root, YMap):
        return out
    for name, vnode in root.entries.items():
        out["_" + name] = root.key_lines[name]
        if isinstance(vnode, YMap):
            for k2, line in vnode.key_lines.items():
                label = f"{name[:-1] if name == 'groups' else name}:{k2}" if name in ("groups", "scaling", "rope", "attention") else k2
                out.setdefault(label, line)
    return out


def parse_spec_text(text: str, *, path: str | Path | None = None) -> PermutationSpec:
    """Parse YAML text into a spec (structure checks only; see :meth:`PermutationSpec.resolve`).

    Example:
        >>> parse_spec_text("format: wsa-permutation-spec\\nversion: 1\\naxes: {w: [P, null]}\\n").axes
        {'w': (AxisGroup(group='P', inner=1), None)}
    """
    root = load_yaml_text(text, path if path is not None else "<spec>", what="permutation spec")
    return spec_from_dict(root.plain(), path=path, lines=_line_map(root))


def load_spec(source: str | Path, *, shapes: Mapping[str, Sequence[int]] | None = None, checkpoint: str | Path | None = None) -> PermutationSpec:
    """Load a spec from a YAML file, or build a built-in template by name (``digits-mlp``...).

    With ``shapes`` (a checkpoint's ``key -> shape``) the spec is also resolved and validated
    against it; built-in templates need the shapes to size themselves.

    Example:
        >>> spec = load_spec("spec.yaml", shapes={"fc1.weight": (64, 64)})  # doctest: +SKIP
    """
    from wsa_cli.permute.templates import BUILTIN_TEMPLATES, builtin_spec

    name = str(source)
    p = Path(name)
    if name in BUILTIN_TEMPLATES and not p.exists():
        if shapes is None:
            raise ConfigError(f"built-in spec {name!r} needs a checkpoint to size itself")
        spec = builtin_spec(name, shapes)
    else:
        if not p.exists():
            raise InputNotFoundError(
                f"spec file not found (built-in specs: {', '.join(BUILTIN_TEMPLATES)})", path=p
            )
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read spec file ({exc})", path=p) from None
        spec = parse_spec_text(text, path=p)
    if shapes is not None:
        spec = spec.resolve(shapes, checkpoint=checkpoint)
    return spec


def check_spec_source(source: str | Path) -> None:
    """Fail now on a spec file that is missing or broken (a built-in template name is fine).

    Example:
        >>> check_spec_source("digits-mlp")
    """
    from wsa_cli.permute.templates import BUILTIN_TEMPLATES

    if str(source) not in BUILTIN_TEMPLATES or Path(source).exists():
        load_spec(source)
