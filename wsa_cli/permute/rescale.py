"""Function-preserving rescale: move a layer's scope toward a target without changing the function.

Only a positive scalar ``c`` per layer is available, and only where the network absorbs it. The
spec's ``scaling:`` rules say where (``wsa spec infer`` and the templates write them):

* **ReLU chains** (``with`` + ``inverse``): ``relu(c z) = c relu(z)`` for ``c > 0`` (also
  LeakyReLU, max/avg pooling, flatten). Scaling a layer's weight and bias by ``c`` and the next
  layers' input weights by ``1/c`` leaves the output exactly unchanged (up to float rounding).
* **Layer followed by BatchNorm** (``bn``): in eval mode BN computes
  ``gamma (z - m) / sqrt(v + eps) + beta``. With ``z -> c z`` we set ``m -> c m`` and ``v -> c^2 v``:
  ``gamma (c z - c m) / sqrt(c^2 v + eps) = gamma (z - m) / sqrt(v + eps / c^2)``, i.e. the function
  is unchanged except that BN's ``eps`` acts as ``eps / c^2`` (relative change of each output at most
  ``|1 - 1/c^2| eps / (2 v)``, ~1e-6 for ``v ~ 1``, ``eps = 1e-5``). In training mode BN uses batch
  statistics and the layer is scale-invariant outright. The next layer is untouched.
* **Layer followed by LayerNorm** (``norm``): ``LN(c z) = LN(z)`` up to ``eps`` (it
  acts as ``eps / c^2``); nothing else changes.
* ``none`` (the output layer, a residual stream, a non-homogeneous activation such as tanh/GELU):
  not possible; the report says why.

Which ``c``: scaling by ``c`` maps the scope ``N(mu, s^2)`` to ``N(c mu, c^2 s^2)``; we pick the
``c > 0`` minimising ``KL(N(c mu, c^2 s^2) || N(mu_t, s_t^2))``. Setting the derivative to zero gives
``c^2 (s^2 + mu^2) - c mu mu_t - s_t^2 = 0``, so
``c = (mu mu_t + sqrt(mu^2 mu_t^2 + 4 (s^2 + mu^2) s_t^2)) / (2 (s^2 + mu^2))``; for ``mu = 0`` this is
``s_t / s`` (the std lands exactly on the target). Rules run in dependency order (a layer whose
``1/c`` lands on another scaled layer goes first), and each ``c`` is computed from the tensor as it
is at that point, so the final scopes are what was aimed at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from wsa_cli.scope.gaussian import Scope
from wsa_cli.permute.spec import PermutationSpec, ScaleRule
from wsa_cli.scope.stats import tensor_scope


def kl_optimal_scale(source: Scope, target: Scope) -> float:
    """The ``c > 0`` minimising KL(N(c mu, c^2 s^2) || target); 1.0 when the source is all zeros.

    Example:
        >>> kl_optimal_scale(Scope(0.0, 2.0), Scope(0.0, 1.0))
        0.5
    """
    m2 = source.std * source.std + source.mean * source.mean  # E[w^2]
    if m2 == 0.0 or target.std == 0.0 and target.mean == 0.0:
        return 1.0
    b = source.mean * target.mean
    return (b + math.sqrt(b * b + 4.0 * m2 * target.std * target.std)) / (2.0 * m2)


def _order(rules: Mapping[str, ScaleRule]) -> list[ScaleRule]:
    """Rules whose ``1/c`` lands on another rule's key run before that rule (Kahn's algorithm)."""
    active = {k: r for k, r in rules.items() if r.none is None}
    after: dict[str, set[str]] = {k: set() for k in active}
    indeg = {k: 0 for k in active}
    for k, r in active.items():
        for t in r.inverse:
            if t in active and k not in after[t]:
                after[k].add(t)
                indeg[t] += 1
    ready = [k for k in active if indeg[k] == 0]
    out: list[ScaleRule] = []
    while ready:
        k = ready.pop(0)
        out.append(active[k])
        for t in sorted(after[k], key=list(active).index):
            indeg[t] -= 1
            if indeg[t] == 0:
                ready.append(t)
    out += [r for k, r in active.items() if r not in out]  # a cycle cannot happen in a DAG; keep them anyway
    return out


def function_preserving_rescale(
    spec: PermutationSpec,
    state: Mapping[str, torch.Tensor],
    target_scopes: Mapping[str, Scope],
    *,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Scale each rescalable layer toward its target scope without changing the network's function.

    Returns the new state dict (tensors in their stored dtype; inputs untouched) and a report
    ``key -> what happened`` for every layer that has a target scope or a scaling rule.

    Example:
        >>> new, report = function_preserving_rescale(spec, state, {"fc1.weight": Scope(0.0, 0.05)})  # doctest: +SKIP
        >>> report["fc1.weight"]  # doctest: +SKIP
        'scaled by c=0.8123 (ReLU chain: bias x c, fc2.weight x 1/c)'
    """
    device = torch.device(device)
    work: dict[str, torch.Tensor] = dict(state)
    changed: set[str] = set()

    def cur(key: str) -> torch.Tensor:
        t = work[key]
        return t if key in changed else t.to(device, torch.float64 if t.dtype == torch.float64 else torch.float32)

    def scale(key: str, factor: float) -> None:
        work[key] = cur(key) * factor
        changed.add(key)

    report: dict[str, str] = {}
    for rule in _order(spec.scaling):
        key = rule.key
        if key not in target_scopes:
            report[key] = "not rescaled: no target scope for this layer"
            continue
        source = tensor_scope(cur(key), device)
        target = target_scopes[key]
        if source.std == 0.0 and source.mean == 0.0:
            report[key] = "not rescaled: the layer is all zeros"
            continue
        c = kl_optimal_scale(source, target)
        scale(key, c)
        for k in rule.with_:
            scale(k, c)
        for k in rule.inverse:
            scale(k, 1.0 / c)
        parts = []
        if rule.with_:
            parts.append(f"{', '.join(rule.with_)} x c")
        if rule.inverse:
            parts.append(f"{', '.join(rule.inverse)} x 1/c (positively homogeneous activation)")
        if rule.bn is not None:
            scale(f"{rule.bn}.running_mean", c)
            scale(f"{rule.bn}.running_var", c * c)
            parts.append(f"{rule.bn} running_mean x c, running_var x c^2 (BatchNorm makes the layer scale-invariant; exact up to eps)")
        if rule.norm is not None:
            parts.append(f"{rule.norm} follows (a normalisation makes the layer scale-invariant; exact up to eps)")
        report[key] = f"scaled by c={c:.6g}" + (f": {'; '.join(parts)}" if parts else "")
    for key, rule in spec.scaling.items():
        if rule.none is not None:
            report[key] = f"not possible: {rule.none}"
    for key in target_scopes:
        if key in work and key not in report:
            report[key] = "not possible: the spec has no scaling rule for this layer"
    out = {k: (v.to(device="cpu", dtype=state[k].dtype) if k in changed else v) for k, v in work.items()}
    return out, report
