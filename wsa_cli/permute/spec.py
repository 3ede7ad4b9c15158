"""The permutation spec: which tensor axes share a permutation, and how layers may be rescaled.

Hidden units of a network can be reordered without changing what it computes, as long as every
tensor axis that indexes those units is reordered the same way. A *group* names one such set of
units; the spec says, for every tensor key, which group (or none) each axis belongs to. This
module is the data model and its validation against a checkpoint
(:meth:`PermutationSpec.resolve`); the YAML file that holds a spec is read and written by
:mod:`wsa_cli.permute.specfile`, which documents the format.

``"P*K"`` on an axis says it has ``size(P) * K`` entries laid out as ``(size(P), K)``: a flatten
of ``(C, H, W)`` channels into a Linear input gives ``P_conv*HW``.

BatchNorm running statistics move with their channels: ``X.running_mean`` / ``X.running_var``
not listed in ``axes`` follow ``X.weight`` when that is listed. ``num_batches_tracked`` is always
copied. Every checkpoint key must be covered (listed, following, or matching ``unpermuted``);
otherwise :meth:`PermutationSpec.resolve` raises a :class:`~wsa_cli.errors.ConfigError` naming it.
"""

from __future__ import annotations

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
        extra = [f"{self.bn}.{s}" for s in BN_RUNNING_STATS] if self.bn else []
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


def shapes_of(infos: Iterable[Any]) -> dict[str, tuple[int, ...]]:
    """``key -> shape`` from TensorInfos or a state dict's items."""
    out: dict[str, tuple[int, ...]] = {}
    if isinstance(infos, Mapping):
        return {k: tuple(v.shape) for k, v in infos.items()}
    for info in infos:
        out[info.key] = tuple(info.shape)
    return out
