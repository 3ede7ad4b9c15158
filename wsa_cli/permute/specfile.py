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

The file is parsed by the same line-aware loader as recipes (:mod:`wsa_cli.yamlnodes`), so a
syntax error or a key given twice is refused at its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wsa_cli.errors import ConfigError, InputNotFoundError
from wsa_cli.permute.spec import DEFAULT_UNPERMUTED, SPEC_FORMAT, SPEC_VERSION, AxisEntry, AxisGroup, PermutationSpec, ScaleRule
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
        items = ", ".join("null" if e is None else _q(e.to_yaml()) for e in entries)
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
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """Quote a YAML scalar only when needed."""
    if re.fullmatch(r"[A-Za-z_][\w.\-/]*", text) and text not in ("null", "true", "false", "yes", "no", "on", "off"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- loading -------------------------------------------------------------------------------------
def _parse_entry(raw: Any, *, key: str, axis: int, where: dict[str, Any]) -> AxisEntry:
    if raw is None:
        return None
    if not isinstance(raw, str) or not (m := _ENTRY.match(raw)):
        raise ConfigError(f"axis {axis}: expected a group name, 'GROUP*K' or null, got {raw!r}", key=key, **where)
    inner = int(m.group(2)) if m.group(2) else 1
    if inner < 1:
        raise ConfigError(f"axis {axis}: inner size must be >= 1 in {raw!r}", key=key, **where)
    return AxisGroup(m.group(1), inner)


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
    unknown = set(data) - {"format", "version", "groups", "axes", "unpermuted", "scaling"}
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"unknown section {name!r} (expected groups, axes, unpermuted, scaling)", **where("_" + name))
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
    return PermutationSpec(axes, tuple(unpermuted), sizes, scaling, p, lines)


def _line_map(root: YNode) -> dict[str, int]:
    """1-based lines of top-level sections (``_name``), axes/scaling keys (``scaling:KEY``) and groups (``group:NAME``)."""
    out: dict[str, int] = {}
    if not isinstance(root, YMap):
        return out
    for name, vnode in root.entries.items():
        out["_" + name] = root.key_lines[name]
        if isinstance(vnode, YMap):
            for k2, line in vnode.key_lines.items():
                label = f"{name[:-1] if name == 'groups' else name}:{k2}" if name in ("groups", "scaling") else k2
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
