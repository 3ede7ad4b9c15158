"""Per-layer scopes as flat config values, so a target travels in a Flower fit config (no file path).

A target is three parallel lists under fixed keys: layer names, means and stds (or one mean/std
for a fixed scope). Flower's ``ConfigRecord`` and ``MetricRecord`` hold lists of str/float, so
this needs nothing from Flower and is tested without it.

Example:
    >>> from wsa_cli.scope.gaussian import Scope
    >>> cfg = encode_scopes({"fc.weight": Scope(0.0, 0.1)})
    >>> decode_scopes(cfg)
    {'fc.weight': Scope(mean=0.0, std=0.1)}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wsa_cli.errors import ConfigError
from wsa_cli.scope.gaussian import Scope

PREFIX = "wsa-target"
KEYS, MEANS, STDS = f"{PREFIX}-keys", f"{PREFIX}-mean", f"{PREFIX}-std"


def encode_scopes(target: Mapping[str, Scope] | Scope, prefix: str = PREFIX) -> dict[str, Any]:
    """``{prefix-keys: [...], prefix-mean: [...], prefix-std: [...]}``; a single Scope has no keys list."""
    if isinstance(target, Scope):
        return {f"{prefix}-mean": [float(target.mean)], f"{prefix}-std": [float(target.std)]}
    names = list(target)
    return {
        f"{prefix}-keys": names,
        f"{prefix}-mean": [float(target[k].mean) for k in names],
        f"{prefix}-std": [float(target[k].std) for k in names],
    }


def has_scopes(config: Mapping[str, Any], prefix: str = PREFIX) -> bool:
    """Whether ``config`` carries an encoded target."""
    return f"{prefix}-mean" in config


def decode_scopes(config: Mapping[str, Any], prefix: str = PREFIX) -> dict[str, Scope] | Scope:
    """Inverse of :func:`encode_scopes`; a malformed encoding is a ConfigError naming the key."""
    means, stds = list(config.get(f"{prefix}-mean", [])), list(config.get(f"{prefix}-std", []))
    if len(means) != len(stds) or not means:
        raise ConfigError(f"{prefix}-mean and {prefix}-std must be non-empty lists of equal length", key=f"{prefix}-mean")
    if f"{prefix}-keys" not in config:
        if len(means) != 1:
            raise ConfigError("a target without layer names must be one scope", key=f"{prefix}-keys")
        return Scope(float(means[0]), float(stds[0]))
    names = list(config[f"{prefix}-keys"])
    if len(names) != len(means):
        raise ConfigError(f"{len(names)} layer names for {len(means)} scopes", key=f"{prefix}-keys")
    return {k: Scope(float(m), float(s)) for k, m, s in zip(names, means, stds, strict=True)}
