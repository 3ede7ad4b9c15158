"""The permutation spec: which tensor axes share a permutation, and how layers may be rescaled.

Hidden units of a network can be reordered without changing what it computes, as long as every
tensor axis that indexes those units is reordered the same way. A *group* names one such set of
units; the spec says, for every tensor key, which group (or none) each axis belongs to. The file
is YAML (written by ``wsa spec infer|guess|template``, read by ``wsa align``)::

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

``"P*K"`` says the axis has ``size(P) * K`` entries laid out as ``(size(P), K)``: a flatten of
``(C, H, W)`` channels into a Linear input gives ``P_conv*HW``.

BatchNorm running statistics move with their channels: ``X.running_mean`` / ``X.running_var``
not listed in ``axes`` follow ``X.weight`` when that is listed. ``num_batches_tracked`` is always
copied. Every checkpoint key must be covered (listed, following, or matching ``unpermuted``);
otherwise :meth:`PermutationSpec.resolve` raises a :class:`~wsa_cli.errors.ConfigError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsa_cli.errors import ConfigError, InputNotFoundError
from wsa_cli.scope.selection import matches_any

SPEC_FORMAT = "wsa-permutation-spec"
SPEC_VERSION = 1
DEFAULT_UNPERMUTED = ("*.num_batches_tracked",)
_ENTRY = re.compile(r"^\s*([A-Za-z_][\w.\-/]*)\s*(?:\*\s*(\d+))?\s*$")
_BN_STATS = ("running_mean", "running_var")


@dataclass(frozen=True)
class AxisGroup:
    """One axis entry: the axis is indexed by ``group`` (outer) times ``inner`` contiguous values.

    Example:
        >>> AxisGroup("P_conv2", 16).to_yaml()
        'P_conv2*16'
    """

    group: str
    inner: int = 1

    def to_yaml(self) -> str:
        return self.group if self.inner == 1 else f"{self.group}*{self.inner}"


AxisEntry = AxisGroup | None


@dataclass(frozen=True)
class ScaleRule:
    """How the weight ``key`` can be scaled by ``c > 0`` without changing the function.

    ``with_``: tensors scaled by ``c`` together with ``key`` (its bias). ``inverse``: tensors scaled
    by ``1/c`` (the next layers' input weights, valid after positively homogeneous activations such
    as ReLU). ``bn``: the BatchNorm module that follows; its running mean is scaled by ``c`` and its
    running variance by ``c**2`` (BatchNorm makes the layer scale-invariant). ``norm``: the
    normalisation without running statistics that follows (LayerNorm, GroupNorm): the layer is
    scale-invariant and nothing else changes. ``none``: why no function-preserving scale exists.
    """

    key: str
    with_: tuple[str, ...] = ()
    inverse: tuple[str, ...] = ()
    bn: str | None = None
    none: str | None = None
    norm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.none is not None:
            return {"none": self.none}
        out: dict[str, Any] = {}
        if self.with_:
            out["with"] = list(self.with_)
        if self.inverse:
            out["inverse"] = list(self.inverse)
        if self.bn is not None:
            out["bn"] = self.bn
        if self.norm is not None:
            out["norm"] = self.norm
        return out

    def tensors(self) -> list[str]:
        """Every key this rule touches (to check they exist)."""
        extra = [f"{self.bn}.{s}" for s in _BN_STATS] if self.bn else []
        return [*self.with_, *self.inverse, *extra]


@dataclass
class PermutationSpec:
    """Axes-to-groups table plus unpermuted patterns and optional scaling rules.

    ``lines`` maps keys (and ``group:NAME``) to their line in the YAML file, for error messages.

    Example:
        >>> spec = PermutationSpec({"fc1.weight": (AxisGroup("P"), None), "fc2.weight": (None, AxisGroup("P"))})
        >>> spec.group_axes()["P"]
        [('fc1.weight', 0, 1), ('fc2.weight', 1, 1)]
    """

    axes: dict[str, tuple[AxisEntry, ...]]
    unpermuted: tuple[str, ...] = DEFAULT_UNPERMUTED
    sizes: dict[str, int] = field(default_factory=dict)
    scaling: dict[str, ScaleRule] = field(default_factory=dict)
    path: Path | None = None
    lines: dict[str, int] = field(default_factory=dict)

    # -- views ---------------------------------------------------------------------------------
    def group_names(self) -> list[str]:
        """Groups in order of first appearance."""
        seen: dict[str, None] = {}
        for entries in self.axes.values():
            for e in entries:
                if e is not None:
                    seen.setdefault(e.group, None)
        for g in self.sizes:
            seen.setdefault(g, None)
        return list(seen)

    def group_axes(self) -> dict[str, list[tuple[str, int, int]]]:
        """``group -> [(key, axis, inner), ...]``: every place a group's permutation acts."""
        out: dict[str, list[tuple[str, int, int]]] = {g: [] for g in self.group_names()}
        for key, entries in self.axes.items():
            for axis, e in enumerate(entries):
                if e is not None:
                    out[e.group].append((key, axis, e.inner))
        return out

    def _where(self, key: str) -> dict[str, Any]:
        return {"path": self.path, "line": self.lines.get(key)}

    # -- validation against a checkpoint --------------------------------------------------------
    def resolve(self, shapes: Mapping[str, Sequence[int]], *, checkpoint: str | Path | None = None) -> PermutationSpec:
        """Check the spec against a checkpoint's ``key -> shape`` and return the completed spec.

        Completes BatchNorm running statistics that follow their ``.weight``; fills ``sizes``.
        Raises :class:`ConfigError` naming the key: a checkpoint key not covered, a spec key the
        checkpoint lacks, a wrong number of axis entries, or a group with two sizes.

        Example:
            >>> spec = PermutationSpec({"fc.weight": (AxisGroup("P"), None)})
            >>> spec.resolve({"fc.weight": (4, 3)}).sizes
            {'P': 4}
        """
        ckpt = f" of {checkpoint}" if checkpoint is not None else ""
        axes = dict(self.axes)
        for key in shapes:
            if key in axes or matches_any(key, self.unpermuted):
                continue
            stem, _, leaf = key.rpartition(".")
            weight = axes.get(f"{stem}.weight")
            if leaf in _BN_STATS and weight is not None and len(weight) == 1 and len(shapes[key]) == 1:
                axes[key] = weight  # BatchNorm running statistics move with their channels
                continue
            raise ConfigError(
                f"checkpoint key{ckpt} is not covered by the spec (list it under 'axes:' or match it in 'unpermuted:')",
                path=self.path,
                key=key,
            )
        for key in axes:
            if key not in shapes:
                raise ConfigError(f"spec lists a key that the checkpoint{ckpt} does not have", key=key, **self._where(key))
        sizes: dict[str, int] = {}
        first: dict[str, str] = {}
        for key, entries in axes.items():
            shape = tuple(shapes[key])
            if len(entries) != len(shape):
                raise ConfigError(
                    f"spec gives {len(entries)} axis entries but the tensor has {len(shape)} axes (shape {shape})",
                    key=key,
                    **self._where(key),
                )
            for axis, e in enumerate(entries):
                if e is None:
                    continue
                if shape[axis] % e.inner:
                    raise ConfigError(
                        f"axis {axis} has {shape[axis]} entries, not a multiple of {e.inner} ({e.to_yaml()})",
                        key=key,
                        **self._where(key),
                    )
                n = shape[axis] // e.inner
                declared = self.sizes.get(e.group)
                if declared is not None and declared != n:
                    raise ConfigError(
                        f"group {e.group!r} is declared with size {declared} but has size {n} on axis {axis}",
                        key=key,
                        **self._where(key),
                    )
                if e.group in sizes and sizes[e.group] != n:
                    raise ConfigError(
                        f"group {e.group!r} has inconsistent sizes: {sizes[e.group]} on {first[e.group]} but {n} on axis {axis}",
                        key=key,
                        **self._where(key),
                    )
                sizes.setdefault(e.group, n)
                first.setdefault(e.group, f"{key!r}")
        for g, n in self.sizes.items():
            sizes.setdefault(g, n)
        for rule in self.scaling.values():
            if rule.none is None and rule.key not in shapes:
                raise ConfigError("scaling rule names a key the checkpoint does not have", key=rule.key, **self._where(f"scaling:{rule.key}"))
            for t in rule.tensors() if rule.none is None else ():
                if t not in shapes:
                    raise ConfigError(f"scaling rule for {rule.key!r} names a key the checkpoint does not have", key=t, **self._where(f"scaling:{rule.key}"))
        return PermutationSpec(axes, self.unpermuted, sizes, dict(self.scaling), self.path, dict(self.lines))

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "groups": dict(self.sizes),
            "axes": {k: [None if e is None else e.to_yaml() for e in v] for k, v in self.axes.items()},
            "unpermuted": list(self.unpermuted),
            "scaling": {k: r.to_dict() for k, r in self.scaling.items()},
        }

    def to_yaml(self, header: str | None = None, *, with_sizes: bool = True) -> str:
        """Render as YAML with one flow-style line per key (diff-friendly).

        ``with_sizes=False`` leaves ``groups:`` empty so the spec fits any width of the architecture.
        """
        lines = []
        if header:
            lines += [f"# {h}" for h in header.splitlines()]
        lines += [f"format: {SPEC_FORMAT}", f"version: {SPEC_VERSION}"]
        sizes = self.sizes if with_sizes else {}
        lines.append("groups:" + ("" if sizes else " {}"))
        lines += [f"  {_q(g)}: {n}" for g, n in sizes.items()]
        lines.append("axes:")
        for key, entries in self.axes.items():
            items = ", ".join("null" if e is None else _q(e.to_yaml()) for e in entries)
            lines.append(f"  {_q(key)}: [{items}]")
        lines.append("unpermuted:" + ("" if self.unpermuted else " []"))
        lines += [f"  - {_q(p)}" for p in self.unpermuted]
        lines.append("scaling:" + ("" if self.scaling else " {}"))
        for key, rule in self.scaling.items():
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


def _line_map(text: str) -> dict[str, int]:
    """1-based lines of top-level sections (``_name``), axes/scaling keys and groups."""
    import yaml

    out: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out
    if not isinstance(root, yaml.MappingNode):
        return out
    for knode, vnode in root.value:
        name = str(knode.value)
        out["_" + name] = knode.start_mark.line + 1
        if isinstance(vnode, yaml.MappingNode):
            for k2, _ in vnode.value:
                label = f"{name[:-1] if name == 'groups' else name}:{k2.value}" if name in ("groups", "scaling") else str(k2.value)
                out.setdefault(label, k2.start_mark.line + 1)
    return out


def parse_spec_text(text: str, *, path: str | Path | None = None) -> PermutationSpec:
    """Parse YAML text into a spec (structure checks only; see :meth:`PermutationSpec.resolve`)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML ({problem})", path=path, line=line) from None
    return spec_from_dict(data, path=path, lines=_line_map(text))


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


def shapes_of(infos: Iterable[Any]) -> dict[str, tuple[int, ...]]:
    """``key -> shape`` from TensorInfos or a state dict's items."""
    out: dict[str, tuple[int, ...]] = {}
    if isinstance(infos, Mapping):
        return {k: tuple(v.shape) for k, v in infos.items()}
    for info in infos:
        out[info.key] = tuple(info.shape)
    return out
