"""Fusion of K layer scopes into one unified scope (our reading of the WSA paper, Xu et al. 2024).

Methods (``p_i`` are normalised weights, equal by default, e.g. client data sizes in FL):

* ``moments`` (default): moment matching of the mixture ``sum p_i N(mu_i, s_i^2)``:
  ``mu = sum p_i mu_i``, ``s^2 = sum p_i (s_i^2 + (mu_i - mu)^2)``. This is the single Gaussian
  closest in KL(mixture || q) to the mixture.
* ``precision``: product-of-experts style, ``1/s^2 = sum p_i / s_i^2``,
  ``mu = s^2 sum p_i mu_i / s_i^2``. A constant layer (s_i = 0) dominates; we then return the
  weighted mean of the constant layers' means with std 0.
* ``stats-mean``: plain average of the statistics, ``mu = sum p_i mu_i``, ``s = sum p_i s_i``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from wsa_cli.errors import InvalidValueError
from wsa_cli.scope.gaussian import Scope


def normalize_weights(weights: Sequence[float] | None, k: int) -> list[float]:
    """Return ``k`` non-negative weights summing to 1 (equal when ``weights`` is None).

    Example:
        >>> normalize_weights([1, 3], 2)
        [0.25, 0.75]
    """
    if k <= 0:
        raise InvalidValueError("need at least one scope to fuse")
    if weights is None:
        return [1.0 / k] * k
    w = [float(x) for x in weights]
    if len(w) != k:
        raise InvalidValueError(f"got {len(w)} weights for {k} models", option="weights")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise InvalidValueError(f"weights must be finite and >= 0, got {w}", option="weights")
    total = sum(w)
    if total <= 0:
        raise InvalidValueError(f"weights must not all be zero, got {w}", option="weights")
    return [x / total for x in w]


def parse_weights(text: str, k: int) -> list[float]:
    """Model weights written as text, one number per model: ``"1,3"`` -> ``[1.0, 3.0]``.

    Example:
        >>> parse_weights("1, 3", 2)
        [1.0, 3.0]
    """
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise InvalidValueError("expected comma-separated numbers, e.g. 1,3", option="weights", value=text) from None
    if len(values) != k:
        raise InvalidValueError(f"{len(values)} weights for {k} checkpoints", option="weights", value=text)
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise InvalidValueError("weights must be finite, >= 0 and not all zero", option="weights", value=text)
    return values


def _moments(scopes: Sequence[Scope], p: Sequence[float]) -> Scope:
    mu = sum(pi * s.mean for pi, s in zip(p, scopes, strict=True))
    var = sum(pi * (s.std * s.std + (s.mean - mu) ** 2) for pi, s in zip(p, scopes, strict=True))
    return Scope(mu, math.sqrt(max(var, 0.0)))


def _precision(scopes: Sequence[Scope], p: Sequence[float]) -> Scope:
    constant = [(pi, s) for pi, s in zip(p, scopes, strict=True) if s.std == 0.0 and pi > 0]
    if constant:  # infinite precision wins outright
        total = sum(pi for pi, _ in constant)
        return Scope(sum(pi * s.mean for pi, s in constant) / total, 0.0)
    used = [(pi, s) for pi, s in zip(p, scopes, strict=True) if pi > 0]  # zero-weight models do not count
    prec = sum(pi / (s.std * s.std) for pi, s in used)
    var = 1.0 / prec
    mu = var * sum(pi * s.mean / (s.std * s.std) for pi, s in used)
    return Scope(mu, math.sqrt(var))


def _stats_mean(scopes: Sequence[Scope], p: Sequence[float]) -> Scope:
    return Scope(sum(pi * s.mean for pi, s in zip(p, scopes, strict=True)), sum(pi * s.std for pi, s in zip(p, scopes, strict=True)))


#: Registry of fusion methods by name; ``moments`` is the default everywhere.
FUSION_METHODS: dict[str, Callable[[Sequence[Scope], Sequence[float]], Scope]] = {
    "moments": _moments,
    "precision": _precision,
    "stats-mean": _stats_mean,
}


def fuse_scopes(scopes: Sequence[Scope], weights: Sequence[float] | None = None, method: str = "moments") -> Scope:
    """Fuse K scopes of one layer into the unified scope.

    Example:
        >>> fuse_scopes([Scope(0.0, 1.0), Scope(2.0, 1.0)])
        Scope(mean=1.0, std=1.4142135623730951)
    """
    try:
        fn = FUSION_METHODS[method]
    except KeyError:
        raise InvalidValueError(f"unknown fusion method {method!r}; choose from {', '.join(FUSION_METHODS)}", option="fusion") from None
    p = normalize_weights(weights, len(scopes))
    return fn(scopes, p)
