"""Model-level scope reports: one checkpoint's table, several side by side, KL to a target.

This is the library behind ``wsa inspect``; it reads one tensor at a time, so memory stays at
about one tensor (plus a chunk of scratch) whatever the model size.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from wsa_cli.fusion.fuse import fuse_scopes
from wsa_cli.scope.gaussian import Scope, gaussian_kl
from wsa_cli.fusion.scopefile import ScopeTable
from wsa_cli.io.base import CheckpointReader
from wsa_cli.io.dtypes import dtype_name
from wsa_cli.io.prefetch import prefetch
from wsa_cli.buffers import Scratch
from wsa_cli.scope.kinds import layer_kind
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.scope.stats import TensorStats, stats_from_moments, tensor_moments
from wsa_cli.progress import ProgressFn



@dataclass
class ModelReport:
    """Statistics of one checkpoint's tensors plus a summary."""

    path: str
    format: str
    tensors: list[TensorStats]
    summary: dict[str, object]
    skipped: dict[str, str] = field(default_factory=dict)
    #: every tensor's (shape, dtype), measured or not: what a comparison lines up
    infos: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)

    def layers(self) -> list[TensorStats]:
        return [t for t in self.tensors if t.is_layer]

    def by_key(self) -> dict[str, TensorStats]:
        return {t.key: t for t in self.tensors}


def inspect_checkpoint(
    reader: CheckpointReader,
    *,
    selector: LayerSelector | None = None,
    all_tensors: bool = False,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> ModelReport:
    """Compute :class:`TensorStats` for the layers of ``reader`` (every tensor with ``all_tensors``).

    The summary counts every tensor (from headers only), so it is complete even when only layers
    are measured.

    Example:
        >>> with open_checkpoint("model.safetensors") as r:  # doctest: +SKIP
        ...     report = inspect_checkpoint(r)
        ...     print(report.summary["layers"], report.layers()[0].std)
    """
    selector = selector or LayerSelector()
    out: list[TensorStats] = []
    infos = reader.infos()
    kinds: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    total_params = layer_params = 0
    measure: list[str] = []
    unmeasured: dict[str, str] = {}
    for info in infos:
        is_layer = selector.selects(info.key, info.shape, info.dtype)
        kinds[layer_kind(info.key, info.shape, info.dtype)] += 1
        dtypes[dtype_name(info.dtype)] += 1
        total_params += info.numel
        layer_params += info.numel if is_layer else 0
        if info.dtype.is_complex and all_tensors:
            unmeasured[info.key] = "complex tensor: scope statistics are defined for real values only"
        elif is_layer or all_tensors:
            measure.append(info.key)
            continue
        if progress:
            progress(1, info.key)
    # Two rotating read buffers: the thread fills one while tensor k, in the other, is measured;
    # tensor k's buffer is refilled only after the loop has moved past k.
    largest = max((reader.info(k).nbytes for k in measure), default=0)
    buffers = Scratch()
    slot = {key: i % 2 for i, key in enumerate(measure)}
    for key, tensor in prefetch(lambda k: reader.get(k, out=buffers.bytes(largest, f"read{slot[k]}")), measure, depth=1):
        info = reader.info(key)
        kind = layer_kind(key, info.shape, info.dtype)
        moments = tensor_moments(tensor, device)
        out.append(stats_from_moments(key, info.shape, info.dtype, kind, selector.selects(key, info.shape, info.dtype), moments))
        del tensor
        if progress:
            progress(1, key)
    measured = [t for t in out if t.is_layer]
    summary: dict[str, object] = {
        "tensors": len(infos),
        "layers": sum(1 for i in infos if selector.selects(i.key, i.shape, i.dtype)),
        "parameters": total_params,
        "layer_parameters": layer_params,
        "bytes": reader.total_bytes,
        "dtypes": dict(sorted(dtypes.items())),
        "kinds": dict(sorted(kinds.items())),
        "nan_values": sum(t.nan_count for t in out),
        "inf_values": sum(t.inf_count for t in out),
        "constant_layers": [t.key for t in measured if t.std == 0.0],
        "mean_of_layer_std": _mean([t.std for t in measured if t.std is not None]),
    }
    return ModelReport(str(reader.path), reader.format_name, out, summary, {**reader.skipped, **unmeasured},
                       {i.key: (tuple(i.shape), i.dtype) for i in infos})  # fmt: skip


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class LayerComparison:
    """One layer across K checkpoints: their scopes, the fused scope and mismatch measures.

    * ``std_ratio``: max std / min std (``None`` when a model's layer is constant);
    * ``mean_shift``: (max mean - min mean) / fused std, i.e. how far apart the means are in stds;
    * ``kl_to_fused[i]``: KL(N_i || N_fused) per model, and ``max_kl`` its maximum.
    """

    key: str
    shape: tuple[int, ...]
    kind: str
    scopes: list[Scope]
    fused: Scope
    std_ratio: float | None
    mean_shift: float | None
    kl_to_fused: list[float]
    max_kl: float
    kl_to_target: list[float] | None = None

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "key": self.key,
            "shape": list(self.shape),
            "kind": self.kind,
            "means": [s.mean for s in self.scopes],
            "stds": [s.std for s in self.scopes],
            "fused_mean": self.fused.mean,
            "fused_std": self.fused.std,
            "std_ratio": self.std_ratio,
            "mean_shift": self.mean_shift,
            "kl_to_fused": self.kl_to_fused,
            "max_kl": self.max_kl,
        }
        if self.kl_to_target is not None:
            d["kl_to_target"] = self.kl_to_target
        return d


@dataclass
class Comparison:
    """Result of comparing several checkpoints' layer scopes."""

    paths: list[str]
    fusion: str
    weights: list[float] | None
    layers: list[LayerComparison]
    mismatches: list[dict[str, str]]
    #: int/bool buffers only some checkpoints hold: not mismatches, ``wsa merge`` copies them (``key``, ``problem``)
    copied_by_merge: list[dict[str, str]] = field(default_factory=list)


def compare_reports(
    reports: Sequence[ModelReport],
    *,
    fusion: str = "moments",
    weights: Sequence[float] | None = None,
    target: Scope | ScopeTable | None = None,
) -> Comparison:
    """Compare layer scopes across checkpoints; keys/shapes that do not line up become mismatches.

    A layer is compared when every checkpoint has it as a layer with the same shape; anything else
    is listed in ``mismatches`` (``key``, ``problem``), never silently dropped.

    Example:
        >>> cmp = compare_reports([report_a, report_b])  # doctest: +SKIP
        >>> max(cmp.layers, key=lambda c: c.max_kl).key  # doctest: +SKIP
    """
    tables = [r.by_key() for r in reports]
    names = [r.path for r in reports]
    mismatches: list[dict[str, str]] = []
    all_keys: list[str] = []
    seen: set[str] = set()
    for r in reports:
        for t in r.tensors:
            if t.is_layer and t.key not in seen:
                seen.add(t.key)
                all_keys.append(t.key)
    layers: list[LayerComparison] = []
    for key in all_keys:
        entries = [tab.get(key) for tab in tables]
        missing = [names[i] for i, e in enumerate(entries) if e is None or not e.is_layer]
        if missing:
            mismatches.append({"key": key, "problem": f"missing in {', '.join(missing)}"})
            continue
        present = [e for e in entries if e is not None]
        shapes = {e.shape for e in present}
        if len(shapes) > 1:
            desc = ", ".join(f"{names[i]}: {tuple(e.shape)}" for i, e in enumerate(present))
            mismatches.append({"key": key, "problem": f"shapes differ ({desc})"})
            continue
        dts = {e.dtype for e in present}
        if len(dts) > 1:
            mismatches.append({"key": key, "problem": f"dtypes differ ({', '.join(sorted(dts))}); compared anyway"})
        scopes = [e.scope for e in present]
        layers.append(_compare_layer(key, present[0].shape, present[0].kind, scopes, fusion, weights, target))
    copied = _other_tensors(reports, seen, mismatches)
    return Comparison(names, fusion, list(weights) if weights is not None else None, layers, mismatches, copied)


def _other_tensors(reports: Sequence[ModelReport], done: set[str], mismatches: list[dict[str, str]]) -> list[dict[str, str]]:
    """Every tensor that is not a compared layer, from the headers: what ``wsa merge`` (``keys: strict``) refuses.

    A key missing in some checkpoint or a shape difference is a mismatch; an int/bool buffer only
    some checkpoints hold (``embeddings.position_ids``, ``num_batches_tracked``) is returned
    instead: merge copies it from the first checkpoint holding it."""
    names = [r.path for r in reports]
    keys = list(dict.fromkeys(k for r in reports for k in r.infos))
    copied: list[dict[str, str]] = []
    for key in keys:
        if key in done:
            continue
        entries = [r.infos.get(key) for r in reports]
        present = [e for e in entries if e is not None]
        missing = [names[i] for i, e in enumerate(entries) if e is None]
        if missing:
            row = {"key": key, "problem": f"missing in {', '.join(missing)}"}
            (copied if not present[0][1].is_floating_point else mismatches).append(row)
            continue
        if len({e[0] for e in present}) > 1:
            desc = ", ".join(f"{names[i]}: {e[0]}" for i, e in enumerate(present))
            mismatches.append({"key": key, "problem": f"shapes differ ({desc})"})
    return copied


def _compare_layer(
    key: str,
    shape: tuple[int, ...],
    kind: str,
    scopes: list[Scope],
    fusion: str,
    weights: Sequence[float] | None,
    target: Scope | ScopeTable | None,
) -> LayerComparison:
    fused = fuse_scopes(scopes, weights, fusion)
    stds = [s.std for s in scopes]
    means = [s.mean for s in scopes]
    std_ratio = max(stds) / min(stds) if min(stds) > 0 else None
    mean_shift = (max(means) - min(means)) / fused.std if fused.std > 0 else None
    kls = [gaussian_kl(s.mean, s.std, fused.mean, fused.std) for s in scopes]
    tgt = target_scope_for(key, target)
    kl_t = [gaussian_kl(s.mean, s.std, tgt.mean, tgt.std) for s in scopes] if tgt is not None else None
    return LayerComparison(key, shape, kind, scopes, fused, std_ratio, mean_shift, kls, max(kls), kl_t)


def target_scope_for(key: str, target: Scope | ScopeTable | None) -> Scope | None:
    """The target scope of one layer: a fixed scope, or the layer's entry in a scope table."""
    if target is None:
        return None
    if isinstance(target, Scope):
        return target
    return target.layers.get(key)


def kl_to_target(stats: TensorStats, target: Scope | ScopeTable | None) -> float | None:
    """KL(N(layer) || N(target)) for one measured tensor, or None when the target has no entry."""
    tgt = target_scope_for(stats.key, target)
    if tgt is None or stats.mean is None or stats.std is None:
        return None
    return gaussian_kl(stats.mean, stats.std, tgt.mean, tgt.std)


@dataclass(frozen=True)
class Histogram:
    """A layer's weight histogram and the counts its fitted Gaussian predicts per bin.

    With a clip (``clip_percent`` p), the bins span the p-th to the (100 - p)-th percentile of
    the values and the values outside are counted in ``below`` and ``above``, so one outlier does
    not squeeze the whole distribution into a bin or two (a percentile, unlike the std, is not
    moved by the outlier itself).
    """

    key: str
    edges: list[float]
    counts: list[int]
    gaussian: list[float]
    scope: Scope
    finite: int
    below: int = 0
    above: int = 0
    clip_percent: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "edges": self.edges,
            "counts": self.counts,
            "gaussian": self.gaussian,
            "mean": self.scope.mean,
            "std": self.scope.std,
            "finite_values": self.finite,
            "clip_percent": self.clip_percent,
            "below": self.below,
            "above": self.above,
        }


def layer_histogram(
    tensor: torch.Tensor, key: str, bins: int = 40, device: torch.device | str = "cpu", *, clip_percent: float | None = None
) -> Histogram:
    """Histogram of the finite values of ``tensor`` with the fitted N(mean, std^2) per bin.

    ``clip_percent`` p: bins from the p-th to the (100 - p)-th percentile of the finite values;
    the values outside are counted in ``below``/``above``. None or 0: bins over min..max.

    Example:
        >>> h = layer_histogram(torch.cat([torch.arange(1999.0), torch.tensor([1e6])]), "w", bins=4, clip_percent=0.1)
        >>> sum(h.counts), h.below, h.above  # the lowest and the highest 0.1 % (2 of 2000 values) are counted apart
        (1998, 1, 1)
    """
    moments = tensor_moments(tensor, device)
    scope = Scope(moments.mean, math.sqrt(moments.var))
    n = moments.n
    if n == 0:
        return Histogram(key, [], [], [], scope, 0, clip_percent=clip_percent)
    lo, hi = moments.min, moments.max
    if clip_percent and lo < hi:
        lo, hi = _percentile_range(tensor, clip_percent, n)
    if lo == hi:  # constant layer: one bin holding everything
        return Histogram(key, [lo, hi], [n], [float(n)], scope, n, clip_percent=clip_percent)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    counts = torch.zeros(bins, dtype=torch.int64)
    below = above = 0
    flat = tensor.detach().reshape(-1)
    for part in flat.split(1 << 22):  # bounded memory for big layers
        x = part.to(device=device, dtype=torch.float64)
        x = x[torch.isfinite(x)]
        below += int((x < lo).sum())
        above += int((x > hi).sum())
        x = x[(x >= lo) & (x <= hi)]
        idx = torch.clamp(torch.bucketize(x, edges.to(x.device), right=True) - 1, 0, bins - 1)
        counts += torch.bincount(idx, minlength=bins).cpu()
    cdf = [_normal_cdf(float(e), scope) for e in edges]
    expected = [n * (cdf[i + 1] - cdf[i]) for i in range(bins)]
    return Histogram(key, edges.tolist(), counts.tolist(), expected, scope, n, below, above, clip_percent)


def _percentile_range(tensor: torch.Tensor, percent: float, n: int) -> tuple[float, float]:
    """The ``percent``-th and ``(100 - percent)``-th percentiles of the ``n`` finite values (nearest rank)."""
    x = tensor.detach().reshape(-1).to("cpu", torch.float64)
    x = x[torch.isfinite(x)]  # (n,) one float64 copy of this layer: a histogram looks at one layer
    k_lo = max(1, math.ceil(percent / 100.0 * n))
    k_hi = max(k_lo, n - k_lo + 1)
    return float(torch.kthvalue(x, k_lo).values), float(torch.kthvalue(x, k_hi).values)


def _normal_cdf(x: float, scope: Scope) -> float:
    if scope.std == 0:
        return 1.0 if x >= scope.mean else 0.0
    return 0.5 * (1.0 + math.erf((x - scope.mean) / (scope.std * math.sqrt(2.0))))
