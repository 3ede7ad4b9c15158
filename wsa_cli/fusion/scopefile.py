"""The scope file: a JSON table of per-layer target scopes shared by the whole tool.

Written by ``wsa scope fuse`` (the unified scope of several models); read by ``wsa inspect
--target``, by recipes (``target: scopes.json``) and by the training regularizer. Format::

    {
      "format": "wsa-scopes",
      "version": 1,
      "fusion": "moments",              # how the scopes were fused (informational)
      "weights": [0.5, 0.5],            # normalised model weights (informational)
      "sources": ["a.safetensors", ...],
      "layers": {"fc1.weight": {"mean": 0.0, "std": 0.05, "numel": 4096}, ...}
    }

Only ``format``, ``version`` and ``layers`` (with ``mean`` and ``std`` >= 0) are required.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsa_cli.errors import ConfigError, InputNotFoundError
from wsa_cli.scope.gaussian import Scope

SCOPE_FORMAT = "wsa-scopes"
SCOPE_VERSION = 1


@dataclass
class ScopeTable:
    """Per-layer scopes plus where they came from.

    Example:
        >>> t = ScopeTable({"fc.weight": Scope(0.0, 0.05)})
        >>> ScopeTable.from_json(t.to_json()).layers["fc.weight"]
        Scope(mean=0.0, std=0.05)
    """

    layers: dict[str, Scope]
    fusion: str | None = None
    weights: list[float] | None = None
    sources: list[str] = field(default_factory=list)
    numel: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        layers = {}
        for key, scope in self.layers.items():
            entry: dict[str, Any] = {"mean": scope.mean, "std": scope.std}
            if key in self.numel:
                entry["numel"] = self.numel[key]
            layers[key] = entry
        return {
            "format": SCOPE_FORMAT,
            "version": SCOPE_VERSION,
            "fusion": self.fusion,
            "weights": self.weights,
            "sources": list(self.sources),
            "layers": layers,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, path: str | Path | None = None) -> ScopeTable:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON ({exc.msg})", path=path, line=exc.lineno) from None
        return cls.from_dict(data, path=path)

    @classmethod
    def from_dict(cls, data: Any, *, path: str | Path | None = None) -> ScopeTable:
        if not isinstance(data, Mapping) or data.get("format") != SCOPE_FORMAT:
            raise ConfigError(f"not a scope file (expected \"format\": \"{SCOPE_FORMAT}\")", path=path)
        if data.get("version") != SCOPE_VERSION:
            raise ConfigError(f"scope file version {data.get('version')!r} is not supported (expected {SCOPE_VERSION})", path=path)
        raw = data.get("layers")
        if not isinstance(raw, Mapping) or not raw:
            raise ConfigError("scope file has no 'layers' table", path=path)
        layers: dict[str, Scope] = {}
        numel: dict[str, int] = {}
        for key, entry in raw.items():
            if not isinstance(entry, Mapping):
                raise ConfigError("layer entry must be an object with mean and std", path=path, key=key)
            mean, std = entry.get("mean"), entry.get("std")
            if not _is_number(mean) or not _is_number(std) or std < 0:
                raise ConfigError(f"needs numeric 'mean' and 'std' >= 0, got mean={mean!r} std={std!r}", path=path, key=key)
            layers[str(key)] = Scope(float(mean), float(std))
            if isinstance(entry.get("numel"), int):
                numel[str(key)] = int(entry["numel"])
        weights = data.get("weights")
        return cls(
            layers=layers,
            fusion=data.get("fusion"),
            weights=[float(w) for w in weights] if isinstance(weights, Sequence) and not isinstance(weights, str) else None,
            sources=[str(s) for s in data.get("sources") or []],
            numel=numel,
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_scope_file(path: str | Path) -> ScopeTable:
    """Read and validate a scope file.

    Example:
        >>> load_scope_file("scopes.json").layers  # doctest: +SKIP
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputNotFoundError("scope file not found", path=p) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read scope file ({exc})", path=p) from None
    return ScopeTable.from_json(text, path=p)
