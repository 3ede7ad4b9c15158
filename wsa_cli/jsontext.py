"""Strict JSON for everything wsa writes (stdout, reports, metrics, summaries).

NaN and Inf are not JSON: they become ``null``. Tuples become lists, paths strings, enums their
values, command results (:class:`wsa_cli.results.Result`) their ``document()`` and other objects
with a ``to_dict()`` their dict, so any report object can be dumped as is.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value``.

    Example:
        >>> jsonable({"a": float("nan"), "b": (1, Path("x"))})
        {'a': None, 'b': [1, 'x']}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "document"):  # a command result: its full JSON output, envelope included
        return jsonable(value.document())
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    return value


def to_json(data: Any) -> str:
    """Strict JSON (no NaN), 2-space indent, trailing newline.

    Example:
        >>> to_json({"x": float("inf")})
        '{\\n  "x": null\\n}\\n'
    """
    return json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"
