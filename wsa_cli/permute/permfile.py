"""The permutations file (JSON) that ``wsa align`` writes so a run can be reused (``--perms``).

Format::

    {
      "format": "wsa-permutations", "version": 1,
      "reference": "a.safetensors",
      "groups": {"P_fc1": 64, ...},
      "models": [
        {"source": "b.safetensors", "output": "b_aligned.safetensors", "sweeps": 3,
         "objective": [12.1, 15.3, 15.4, 15.4], "perms": {"P_fc1": [3, 0, ...], ...}}
      ]
    }

``perms[g][i]`` is the unit of the source model that becomes unit ``i`` (the reference's order).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import ConfigError, InputNotFoundError

PERMS_FORMAT = "wsa-permutations"
PERMS_VERSION = 1


def perms_document(reference: str, groups: Mapping[str, int], models: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Build the JSON document; each model entry holds ``perms`` as tensors or lists."""
    out = []
    for m in models:
        entry = dict(m)
        entry["perms"] = {g: (p.tolist() if isinstance(p, torch.Tensor) else list(p)) for g, p in m["perms"].items()}
        out.append(entry)
    return {"format": PERMS_FORMAT, "version": PERMS_VERSION, "reference": reference, "groups": dict(groups), "models": out}


def load_perms(path: str | Path) -> list[dict[str, Any]]:
    """Read a permutations file; returns the model entries with ``perms`` as LongTensors.

    Example:
        >>> entries = load_perms("b_aligned.perms.json")  # doctest: +SKIP
        >>> entries[0]["perms"]["P_fc1"][:3]  # doctest: +SKIP
        tensor([17,  4, 40])
    """
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError("permutations file not found", path=p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON ({exc.msg})", path=p, line=exc.lineno) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read permutations file ({exc})", path=p) from None
    if not isinstance(data, Mapping) or data.get("format") != PERMS_FORMAT:
        raise ConfigError(f"not a permutations file (expected \"format\": \"{PERMS_FORMAT}\")", path=p)
    if data.get("version") != PERMS_VERSION:
        raise ConfigError(f"permutations file version {data.get('version')!r} is not supported", path=p)
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError("permutations file has no 'models' list", path=p)
    out = []
    for i, m in enumerate(models):
        perms = m.get("perms") if isinstance(m, Mapping) else None
        if not isinstance(perms, Mapping):
            raise ConfigError(f"models[{i}] has no 'perms' table", path=p)
        try:
            tensors = {str(g): torch.as_tensor(v, dtype=torch.long) for g, v in perms.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"models[{i}]: permutations must be lists of integers", path=p) from None
        out.append({**m, "perms": tensors})
    return out
