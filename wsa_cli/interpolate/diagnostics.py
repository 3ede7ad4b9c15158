"""Data-free diagnostics of the path: what the weights alone say when no evaluator is given.

These are *not* losses. They are weight statistics that are known to go with barriers:

* ``std_ratio(alpha)`` per layer: ``std(W_alpha) / ((1 - alpha) std(A) + alpha std(B))`` -- the std
  of the interpolated layer relative to the straight line between the endpoints' stds. Two
  unaligned networks average towards zero and the ratio drops below 1 in the middle (variance
  collapse, cf. Jordan et al. 2022, REPAIR); ``1`` means no shrinkage.
* ``scope_kl(alpha)`` per layer: ``KL(N(mu_alpha, s_alpha^2) || target)`` where the target is the pair's
  target scope under the scope options (the fused scope of A and B by default).
* ``distance`` and ``cosine`` between the endpoints (per layer and over all floating tensors).

Summary gates: ``std_shrinkage = 1 - min std_ratio`` (over layers and 0 <= alpha <= 1) and
``max_scope_kl``. Memory: one tensor of each endpoint plus one interpolated tensor at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from wsa_cli.scope.gaussian import gaussian_kl
from wsa_cli.fusion.pipeline import ScopeOptions, resolve_target
from wsa_cli.interpolate.path import lerp_tensor
from wsa_cli.scope.stats import tensor_scope
from wsa_cli.progress import ProgressFn

#: Summary metrics of the data-free diagnostics that ``--fail-above`` may name.
DIAGNOSTIC_METRICS = ("std_shrinkage", "max_scope_kl")



@dataclass
class LayerPath:
    """Diagnostics of one layer along the path."""

    key: str
    std_a: float
    std_b: float
    distance: float
    cosine: float | None
    std_ratio: list[float | None]
    scope_kl: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "std_a": self.std_a, "std_b": self.std_b, "distance": self.distance,
            "cosine": self.cosine, "std_ratio": self.std_ratio, "scope_kl": self.scope_kl,
        }  # fmt: skip


@dataclass
class DiagnosticsResult:
    """Per-alpha aggregates, per-layer detail and a summary for one mode."""

    alphas: list[float]
    layers: list[LayerPath]
    distance: float
    cosine: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


#: Elements per float64 chunk in :func:`_dot_stats` (2 MiB per temporary, whatever the layer size).
DOT_CHUNK = 1 << 18


def _dot_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float, float]:
    """(sum (a-b)^2, <a, b>, |a|^2, |b|^2) accumulated in float64, chunk by chunk (bounded memory)."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    sq = dot = na = nb = 0.0
    for start in range(0, fa.numel(), DOT_CHUNK):
        a64 = fa[start : start + DOT_CHUNK].to(torch.float64)  # (chunk,)
        b64 = fb[start : start + DOT_CHUNK].to(torch.float64)
        diff = a64 - b64
        sq += float(diff @ diff)
        dot += float(a64 @ b64)
        na += float(a64 @ a64)
        nb += float(b64 @ b64)
    return sq, dot, na, nb


def _cosine(dot: float, na: float, nb: float) -> float | None:
    return dot / math.sqrt(na * nb) if na > 0 and nb > 0 else None


def path_diagnostics(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    alphas: Sequence[float],
    options: ScopeOptions,
    device: torch.device,
    *,
    progress: ProgressFn | None = None,
) -> DiagnosticsResult:
    """Walk every tensor once, measuring it at every alpha (one tensor alive at a time).

    Layers are the tensors ``options.selector`` selects; distance and cosine over the whole model
    use every floating tensor.

    Example:
        >>> a = {"w": torch.tensor([[1.0, -1.0]])}
        >>> b = {"w": torch.tensor([[-1.0, 1.0]])}
        >>> r = path_diagnostics(a, b, [0.0, 0.5, 1.0], ScopeOptions(), torch.device("cpu"))
        >>> r.layers[0].std_ratio, r.summary["std_shrinkage"]
        ([1.0, 0.0, 1.0], 1.0)
    """
    opts = options.resolved()
    layers: list[LayerPath] = []
    sq = dot = na = nb = 0.0
    for key in a:
        ta, tb = a[key], b[key]
        if not ta.dtype.is_floating_point:
            continue
        ta, tb = ta.to(device), tb.to(device)
        d2, ab, aa, bb = _dot_stats(ta, tb)
        sq, dot, na, nb = sq + d2, dot + ab, na + aa, nb + bb
        if opts.selector.selects(key, tuple(ta.shape), ta.dtype):
            sa, sb = tensor_scope(ta, device), tensor_scope(tb, device)
            target = resolve_target(key, [sa, sb], opts)
            ratios: list[float | None] = []
            kls: list[float] = []
            for alpha in alphas:
                w = lerp_tensor(ta, tb, alpha)  # the weights the model at alpha would really hold
                s = tensor_scope(w, device)
                del w
                line = sa.std + alpha * (sb.std - sa.std)  # exact when the endpoints agree
                ratios.append(s.std / line if line > 0 else None)
                kls.append(float(gaussian_kl(s.mean, s.std, target.mean, target.std)))
            layers.append(LayerPath(key, sa.std, sb.std, math.sqrt(d2), _cosine(ab, aa, bb), ratios, kls))
        del ta, tb
        if progress is not None:
            progress(1, key)
    result = DiagnosticsResult(list(alphas), layers, math.sqrt(sq), _cosine(dot, na, nb))
    result.rows = _rows(result)
    result.summary = _summary(result)
    return result


def _rows(r: DiagnosticsResult) -> list[dict[str, Any]]:
    rows = []
    for i, alpha in enumerate(r.alphas):
        ratios = [(lp.std_ratio[i], lp.key) for lp in r.layers if lp.std_ratio[i] is not None]
        kls = [(lp.scope_kl[i], lp.key) for lp in r.layers]
        lo = min(ratios, default=(None, None))
        hi = max(kls, default=(None, None))
        rows.append({
            "alpha": alpha,
            "mean_std_ratio": sum(v for v, _ in ratios) / len(ratios) if ratios else None,
            "min_std_ratio": lo[0],
            "min_std_ratio_layer": lo[1],
            "mean_scope_kl": sum(v for v, _ in kls) / len(kls) if kls else None,
            "max_scope_kl": hi[0],
            "max_scope_kl_layer": hi[1],
        })  # fmt: skip
    return rows


def _summary(r: DiagnosticsResult) -> dict[str, Any]:
    inside = [i for i, a in enumerate(r.alphas) if -1e-9 <= a <= 1 + 1e-9]
    lo = min(((r.rows[i]["min_std_ratio"], i) for i in inside if r.rows[i]["min_std_ratio"] is not None), default=(None, None))
    hi = max(((r.rows[i]["max_scope_kl"], i) for i in inside if r.rows[i]["max_scope_kl"] is not None), default=(None, None))
    return {
        "layers": len(r.layers),
        "distance": r.distance,
        "cosine": r.cosine,
        "std_shrinkage": None if lo[0] is None else 1.0 - lo[0],
        "min_std_ratio": lo[0],
        "min_std_ratio_alpha": None if lo[1] is None else r.alphas[lo[1]],
        "min_std_ratio_layer": None if lo[1] is None else r.rows[lo[1]]["min_std_ratio_layer"],
        "max_scope_kl": hi[0],
        "max_scope_kl_alpha": None if hi[1] is None else r.alphas[hi[1]],
        "max_scope_kl_layer": None if hi[1] is None else r.rows[hi[1]]["max_scope_kl_layer"],
    }
