"""The permutation spec: which tensor axes share a permutation, and how layers may be rescaled.

Hidden units of a network can be reordered without changing what it computes, as long as every
tensor axis that indexes those units is reordered the same way. A *group* names one such set of
units; the spec says, for every tensor key, which group (or none) each axis belongs to. This
module is the data model and its validation against a checkpoint
(:meth:`PermutationSpec.resolve`); the YAML file that holds a spec is read and written by
:mod:`wsa_cli.permute.specfile`, which documents the format.

``"P*K"`` on an axis says it has ``size(P) * K`` entries laid out as ``(size(P), K)``: a flatten
of ``(C, H, W)`` channels into a Linear input gives ``P_conv*HW``. More generally an axis is a
product of *factors*, outermost first, each a group (permuted on its own) or a number (kept in
order): ``"H_0*QK_0"`` is attention's ``heads x head_dim`` (whole heads move by ``H_0``; inside
every head the same ``QK_0`` moves the dimensions), ``"KV_0*QG_0*64"`` a grouped-query Q
projection (a K/V head moves with its group of query heads; rotary dims stay in place). A list of such products is a concatenation of
*segments* (a fused QKV projection): ``["H_0*QK_0", "H_0*QK_0", "H_0*VO_0"]``
(:class:`AxisLayout`). ``rope:`` rules (:class:`RopeRule`) name axes that carry rotary pairs; a
spec whose permutations could split a pair or move it inside its head is refused at the key's line.

BatchNorm running statistics move with their channels: ``X.running_mean`` / ``X.running_var``
not listed in ``axes`` follow ``X.weight`` when that is listed. ``num_batches_tracked`` is always
copied. Every checkpoint key must be covered (listed, following, or matching ``unpermuted``);
otherwise :meth:`PermutationSpec.resolve` raises a :class:`~wsa_cli.errors.ConfigError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsa_cli.errors import ConfigError
from wsa_cli.scope.kinds import BN_RUNNING_STATS
from wsa_cli.scope.selection import matches_any

SPEC_FORMAT = "wsa-permutation-spec"
SPEC_VERSION = 1
DEFAULT_UNPERMUTED = ("*.num_batches_tracked",)


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


Factor = str | int
Segment = tuple[Factor, ...]


@dataclass(frozen=True)
class AxisLayout:
    """An axis made of segments (concatenated), each a product of factors (outermost first).

    A factor is a group name (that group's permutation reorders it) or an int (kept in order).

    Example:
        >>> AxisLayout((("H", "QK"), ("H", "VO"))).to_yaml()
        ['H*QK', 'H*VO']
        >>> AxisLayout((("KV", "QG", 2, "QK"),)).groups()
        ['KV', 'QG', 'QK']
    """

    segments: tuple[Segment, ...]

    def to_yaml(self) -> str | list[str]:
        texts = ["*".join(str(f) for f in seg) for seg in self.segments]
        return texts[0] if len(texts) == 1 else texts

    def groups(self) -> list[str]:
        return [f for seg in self.segments for f in seg if isinstance(f, str)]


AxisEntry = AxisGroup | AxisLayout | None


def segments_of(entry: AxisGroup | AxisLayout) -> tuple[Segment, ...]:
    """Any entry as segments of factors: ``AxisGroup("P", 16)`` is ``(("P", 16),)``."""
    if isinstance(entry, AxisLayout):
        return entry.segments
    return ((entry.group,),) if entry.inner == 1 else ((entry.group, entry.inner),)


def entry_groups(entry: AxisEntry) -> list[str]:
    """The groups an axis entry names, in factor order (repeats kept)."""
    if entry is None:
        return []
    return [entry.group] if isinstance(entry, AxisGroup) else entry.groups()


@dataclass(frozen=True)
class Site:
    """One place a group acts: factor ``pos`` of segment ``seg`` of axis ``axis`` of tensor ``key``."""

    key: str
    axis: int
    seg: int
    pos: int


ROPE_STYLES = ("half-split", "interleaved")


@dataclass(frozen=True)
class RopeRule:
    """Axis ``axis`` of ``key`` holds heads of ``head_dim`` rotary dimensions paired by ``style``.

    ``half-split`` (Hugging Face's ``rotate_half``): dimension ``i`` pairs with ``i + head_dim/2``;
    ``interleaved`` (GPT-J, Meta's original Llama): ``2i`` pairs with ``2i + 1``. Each pair turns at
    its own frequency, so a permutation may move a pair only with its whole head: never split it,
    never put it at another pair's place inside the head.
    """

    key: str
    axis: int
    head_dim: int
    style: str

    def to_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "head_dim": self.head_dim, "style": self.style}

    def pairs(self, n: int) -> list[tuple[int, int]]:
        """Every (first, second) rotary pair among ``n`` entries (``n`` heads of ``head_dim``)."""
        d, half = self.head_dim, self.head_dim // 2
        out = []
        for h in range(n // d):
            for i in range(half):
                out.append((h * d + i, h * d + i + half) if self.style == "half-split" else (h * d + 2 * i, h * d + 2 * i + 1))
        return out


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
        extra = [f"{self.bn}.{s}" for s in BN_RUNNING_STATS] if self.bn else []
        return [*self.with_, *self.inverse, *extra]


@dataclass(frozen=True)
class AttentionRule:
    """One attention layer: where its Q, K, V and O head axes are, and its head counts.

    Each of ``q``, ``k``, ``v``, ``o`` is ``(key, axis, segment)`` (the segment of a fused QKV axis,
    else 0). :meth:`PermutationSpec.resolve` refuses a spec under which some permutation splits a
    head, moves a K/V head without its group of query heads (grouped-query attention: query head
    ``j`` reads K/V head ``j // (heads / kv_heads)``), moves V or O heads differently from K or Q, or
    reorders Q's dimensions unlike K's (or O's unlike V's).
    """

    name: str
    q: tuple[str, int, int]
    k: tuple[str, int, int]
    v: tuple[str, int, int]
    o: tuple[str, int, int]
    heads: int
    kv_heads: int
    head_dim: int

    def to_dict(self) -> dict[str, Any]:
        def ref(r: tuple[str, int, int]) -> str:
            return f"{r[0]}:{r[1]}" + (f":{r[2]}" if r[2] else "")

        return {"q": ref(self.q), "k": ref(self.k), "v": ref(self.v), "o": ref(self.o),
                "heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim}  # fmt: skip


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
    rope: dict[str, RopeRule] = field(default_factory=dict)
    attention: dict[str, AttentionRule] = field(default_factory=dict)

    # -- views ---------------------------------------------------------------------------------
    def group_names(self) -> list[str]:
        """Groups in order of first appearance."""
        seen: dict[str, None] = {}
        for entries in self.axes.values():
            for e in entries:
                for g in entry_groups(e):
                    seen.setdefault(g, None)
        for g in self.sizes:
            seen.setdefault(g, None)
        return list(seen)

    def group_axes(self) -> dict[str, list[tuple[str, int, int]]]:
        """``group -> [(key, axis, inner), ...]``: every place a group's permutation acts."""
        out: dict[str, list[tuple[str, int, int]]] = {g: [] for g in self.group_names()}
        for key, entries in self.axes.items():
            for axis, e in enumerate(entries):
                if isinstance(e, AxisGroup):
                    out[e.group].append((key, axis, e.inner))
        return out

    def sites(self) -> dict[str, list[Site]]:
        """``group -> [Site, ...]``: every factor of every axis a group's permutation acts on.

        Example:
            >>> spec = PermutationSpec({"q.weight": (AxisLayout((("H", "D"),)), None)})
            >>> spec.sites()["D"]
            [Site(key='q.weight', axis=0, seg=0, pos=1)]
        """
        out: dict[str, list[Site]] = {g: [] for g in self.group_names()}
        for key, entries in self.axes.items():
            for axis, e in enumerate(entries):
                if e is None:
                    continue
                for si, seg in enumerate(segments_of(e)):
                    for pos, f in enumerate(seg):
                        if isinstance(f, str):
                            out[f].append(Site(key, axis, si, pos))
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
            if leaf in BN_RUNNING_STATS and weight is not None and len(weight) == 1 and len(shapes[key]) == 1:
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
                if not isinstance(e, AxisGroup):
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
        self._resolve_layouts(axes, shapes, sizes)
        for rule in self.rope.values():
            self._check_rope(rule, axes, shapes, sizes)
        for att in self.attention.values():
            self._check_attention(att, axes, shapes, sizes)
        for rule in self.scaling.values():
            if rule.none is None and rule.key not in shapes:
                raise ConfigError("scaling rule names a key the checkpoint does not have", key=rule.key, **self._where(f"scaling:{rule.key}"))
            for t in rule.tensors() if rule.none is None else ():
                if t not in shapes:
                    raise ConfigError(f"scaling rule for {rule.key!r} names a key the checkpoint does not have", key=t, **self._where(f"scaling:{rule.key}"))
        return PermutationSpec(axes, self.unpermuted, sizes, dict(self.scaling), self.path, dict(self.lines), dict(self.rope), dict(self.attention))

    def _resolve_layouts(self, axes: Mapping[str, tuple[AxisEntry, ...]], shapes: Mapping[str, Sequence[int]], sizes: dict[str, int]) -> None:
        """Size the groups of factored/segmented axes and check every such axis adds up.

        A group whose size no plain entry and no ``groups:`` line gives is solved from an axis where
        it is the only unknown (appearing once per segment); the rest must then add up exactly.
        """
        todo = [(k, a, e) for k, v in axes.items() for a, e in enumerate(v) if isinstance(e, AxisLayout)]
        progress = True
        while todo and progress:
            progress, left = False, []
            for key, axis, e in todo:
                n = tuple(shapes[key])[axis]
                unknown = {g for g in e.groups() if g not in sizes}
                if len(unknown) > 1:
                    left.append((key, axis, e))
                    continue
                known, coef = 0, 0
                for seg in e.segments:
                    prod, has = 1, False
                    for f in seg:
                        if isinstance(f, str) and f in unknown:
                            has = True
                        else:
                            prod *= f if isinstance(f, int) else sizes[f]
                    if has:
                        coef += prod
                    else:
                        known += prod
                if unknown:
                    g = unknown.pop()
                    if coef == 0 or n <= known or (n - known) % coef:
                        raise ConfigError(f"axis {axis} has {n} entries, which {e.to_yaml()!r} cannot lay out", key=key, **self._where(key))
                    sizes[g] = (n - known) // coef
                    progress = True
                elif known != n:
                    raise ConfigError(
                        f"axis {axis} has {n} entries but {e.to_yaml()!r} lays out {known} (group sizes {', '.join(f'{g}={sizes[g]}' for g in dict.fromkeys(e.groups()))})",
                        key=key,
                        **self._where(key),
                    )
            todo = left
        if todo:
            key, axis, e = todo[0]
            raise ConfigError(f"axis {axis}: {e.to_yaml()!r} has several groups of unknown size; give their sizes under 'groups:'", key=key, **self._where(key))

    def _check_attention(self, att: AttentionRule, axes: Mapping[str, tuple[AxisEntry, ...]], shapes: Mapping[str, Sequence[int]],
                         sizes: Mapping[str, int]) -> None:  # fmt: skip
        """Refuse a spec whose permutations could break ``att``'s heads (see :class:`AttentionRule`)."""
        import torch

        from wsa_cli.permute.apply import permute_entry, segment_sizes

        def fail(role: str, msg: str) -> ConfigError:
            key = getattr(att, role)[0]
            return ConfigError(f"attention {att.name}: {msg}", key=key, **(self._where(key) if key in self.lines else self._where(f"attention:{att.name}")))

        hd, g = att.head_dim, att.heads // max(att.kv_heads, 1)
        if att.kv_heads < 1 or att.heads % att.kv_heads or hd < 1:
            raise fail("q", f"heads {att.heads} must be a multiple of kv_heads {att.kv_heads}, head_dim >= 1")
        count = {"q": att.heads, "k": att.kv_heads, "v": att.kv_heads, "o": att.heads}
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):  # random draws: a layout that can break a head breaks one at once
            perms = {gr: torch.randperm(n, generator=gen) for gr, n in sizes.items()}
            heads: dict[str, list[int]] = {}
            inner: dict[str, list[tuple[int, ...]]] = {}
            for role in ("q", "k", "v", "o"):
                key, axis, seg = getattr(att, role)
                if key not in shapes or key not in axes or not 0 <= axis < len(shapes[key]):
                    raise fail(role, f"{role} names {key}:{axis}, which the spec or checkpoint does not have")
                entry = axes[key][axis]
                n = shapes[key][axis]
                src = torch.arange(n) if entry is None else permute_entry(torch.arange(n), 0, entry, perms)
                start, length = 0, n
                if isinstance(entry, AxisLayout):
                    dims = [math.prod(d) for d in segment_sizes(entry.segments, sizes)]
                    if seg >= len(dims):
                        raise fail(role, f"{role}: axis {axis} of {key} has no segment {seg}")
                    start, length = sum(dims[:seg]), dims[seg]
                if length != count[role] * hd:
                    raise fail(role, f"{role} has {length} entries, not {count[role]} heads x head_dim {hd}")
                part = (src[start : start + length] - start).tolist()
                heads[role], inner[role] = [], []
                for h in range(count[role]):
                    block = part[h * hd : (h + 1) * hd]
                    if len({x // hd for x in block}) != 1:
                        raise fail(role, f"this permutation splits {role}'s head {h} across heads; whole heads must move")
                    heads[role].append(block[0] // hd)
                    inner[role].append(tuple(x % hd for x in block))
            if heads["v"] != heads["k"]:
                raise fail("v", "V's heads move unlike K's (they share each head's attention weights)")
            if heads["o"] != heads["q"]:
                raise fail("o", "O's input heads move unlike the query heads they read")
            for j in range(att.heads):
                if heads["q"][j] // g != heads["k"][j // g]:
                    raise fail("q", f"query head {j} would read another K/V head: with {att.kv_heads} K/V heads for {att.heads} query heads, "
                                    "a K/V head moves with its group of query heads")  # fmt: skip
                if inner["q"][j] != inner["k"][j // g]:
                    raise fail("q", f"query head {j}'s dimensions move unlike its key head's (Q and K share one order inside a head)")
                if inner["o"][j] != inner["v"][j // g]:
                    raise fail("o", f"O's columns of head {j} move unlike its value head's dimensions (V and O share one order)")

    def _check_rope(self, rule: RopeRule, axes: Mapping[str, tuple[AxisEntry, ...]], shapes: Mapping[str, Sequence[int]], sizes: Mapping[str, int]) -> None:
        """Refuse a spec under which some permutation splits a rotary pair of ``rule``'s axis."""
        import torch

        from wsa_cli.permute.apply import permute_entry

        where = self._where(rule.key) if rule.key in self.lines else self._where(f"rope:{rule.key}")
        if rule.key not in shapes or rule.key not in axes:
            raise ConfigError("rope rule names a key the checkpoint or the spec's axes do not have", key=rule.key, **self._where(f"rope:{rule.key}"))
        shape = tuple(shapes[rule.key])
        if not 0 <= rule.axis < len(shape) or rule.head_dim < 2 or rule.head_dim % 2 or shape[rule.axis] % rule.head_dim:
            raise ConfigError(f"rope rule: axis {rule.axis} of shape {shape} does not hold heads of head_dim {rule.head_dim}", key=rule.key, **where)
        n = shape[rule.axis]
        entry = axes[rule.key][rule.axis]
        if entry is None:
            return
        gen = torch.Generator().manual_seed(0)
        d = rule.head_dim
        src_pairs = set(rule.pairs(n))
        for _ in range(3):  # a random draw of every group; a layout that can move a pair moves one at once
            perms = {g: torch.randperm(sizes[g], generator=gen) for g in entry_groups(entry)}
            src = permute_entry(torch.arange(n), 0, entry, perms).tolist()
            for a, b in rule.pairs(n):
                sa, sb = src[a], src[b]
                if (sa, sb) not in src_pairs:
                    raise ConfigError(
                        f"this permutation splits the rotary pair ({sa}, {sb}) ({rule.style}, head_dim {d}): axis {rule.axis} is "
                        f"{entry.to_yaml()!r}; rotary pairs move only whole, with their head",
                        key=rule.key,
                        **where,
                    )
                if sa % d != a % d:
                    raise ConfigError(
                        f"this permutation moves the rotary pair at dimension {sa % d} of a head to dimension {a % d} ({rule.style}, "
                        f"head_dim {d}): every pair turns at its own frequency, so inside a head Q/K dimensions must stay in place; "
                        f"axis {rule.axis} is {entry.to_yaml()!r} (write the head dimension as the number {d})",
                        key=rule.key,
                        **where,
                    )

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "groups": dict(self.sizes),
            "axes": {k: [None if e is None else e.to_yaml() for e in v] for k, v in self.axes.items()},
            "unpermuted": list(self.unpermuted),
            "scaling": {k: r.to_dict() for k, r in self.scaling.items()},
            **({"rope": {k: r.to_dict() for k, r in self.rope.items()}} if self.rope else {}),
            **({"attention": {k: r.to_dict() for k, r in self.attention.items()}} if self.attention else {}),
        }


def shapes_of(infos: Iterable[Any]) -> dict[str, tuple[int, ...]]:
    """``key -> shape`` from TensorInfos or a state dict's items."""
    out: dict[str, tuple[int, ...]] = {}
    if isinstance(infos, Mapping):
        return {k: tuple(v.shape) for k, v in infos.items()}
    for info in infos:
        out[info.key] = tuple(info.shape)
    return out
