"""Sweep grids: ``PATH=VALUES`` assignments of recipe keys, and the recipe each grid point stands for.

A grid axis names one recipe key by its path (``models[1].weight``, ``parameters.density``,
``scope.target``; a bare name that is not a top-level recipe key is a method parameter, so
``density`` means ``parameters.density``) and lists its values: ``START:STOP:COUNT`` (both ends
included) or a comma-separated list (each item read as YAML: ``0.5``, ``fused``, ``true``, ``{model: 1}``). The
points are the Cartesian product of the axes, in the order the axes were given (the last axis
varies fastest). A point's recipe is the original recipe's data with those keys set, parsed
through the ordinary recipe loader (so a bad value is the same ``file:line`` error as in a recipe).

Example:
    >>> axes = parse_grid(["models[1].weight=0:1:3", "density=0.2,0.8"])
    >>> [a.path for a in axes], axes[0].values
    (['models[1].weight', 'parameters.density'], [0.0, 0.5, 1.0])
    >>> len(grid_points(axes))
    6
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wsa_cli.errors import InvalidValueError
from wsa_cli.recipe.schema import TOP_KEYS, Recipe, parse_recipe
from wsa_cli.yamlnodes import load_yaml_text

_STEP = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[-?\d+\])*)$")
#: the recipe key that holds a sweep's own settings (not a merge key: removed before a point's recipe is parsed)
SWEEP_KEY = "sweep"


@dataclass(frozen=True)
class Axis:
    """One swept recipe key and its values."""

    path: str
    values: list[Any]

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)


def split_path(path: str) -> list[str | int]:
    """``models[1].weight`` -> ``['models', 1, 'weight']`` (a bad path is an InvalidValueError).

    Example:
        >>> split_path("stages[0].parameters.t")
        ['stages', 0, 'parameters', 't']
    """
    steps: list[str | int] = []
    for part in path.split("."):
        m = _STEP.match(part.strip())
        if not m:
            raise InvalidValueError(f"{path!r} is not a recipe key path (e.g. models[1].weight, parameters.density, scope.target)",
                                    option="grid", value=path)  # fmt: skip
        steps.append(m.group(1))
        steps += [int(i) for i in re.findall(r"-?\d+", m.group(2))]
    return steps


def canonical_path(path: str) -> str:
    """A bare name that is not a top-level recipe key is a method parameter: ``density`` -> ``parameters.density``."""
    steps = split_path(path)
    if len(steps) == 1 and steps[0] not in TOP_KEYS:
        return f"parameters.{steps[0]}"
    return path.strip()


def parse_values(text: str, *, path: str = "") -> list[Any]:
    """``START:STOP:COUNT`` (both ends included) or ``a,b,c`` (each item read as a YAML scalar).

    Example:
        >>> parse_values("0:1:5")
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> parse_values("fused, 0, 1")
        ['fused', 0, 1]
    """
    t = text.strip()
    what = f"{path}={text}" if path else text
    if not t:
        raise InvalidValueError("has no values; give START:STOP:COUNT or a comma-separated list", option="grid", value=what)
    parts = t.split(":")
    if len(parts) == 3:
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise InvalidValueError("expected START:STOP:COUNT with numbers and an integer count, e.g. 0:1:11",
                                    option="grid", value=what) from None  # fmt: skip
        if count < 1:
            raise InvalidValueError("COUNT must be at least 1", option="grid", value=what)
        if count == 1:
            return [start]
        return [round(start + (stop - start) * i / (count - 1), 12) for i in range(count)]
    out = []
    for item in t.split(","):
        try:
            value = yaml.safe_load(item.strip())
        except yaml.YAMLError:
            value = item.strip()
        if value is None or isinstance(value, list):
            raise InvalidValueError(f"item {item.strip()!r} is not a single value (a mapping such as {{model: 1}} is)", option="grid", value=what)
        out.append(value)
    return out


def parse_grid(specs: Sequence[str] | Mapping[str, Any]) -> list[Axis]:
    """``["PATH=VALUES", ...]`` (the command line) or ``{PATH: VALUES}`` (a recipe's ``sweep.grid``) -> axes.

    A recipe's values may be a YAML list or the same text as on the command line. A path given
    twice is an error.
    """
    items: list[tuple[str, Any]] = []
    if isinstance(specs, Mapping):
        items = [(str(k), v) for k, v in specs.items()]
    else:
        for spec in specs:
            if "=" not in spec:
                raise InvalidValueError("expected PATH=VALUES, e.g. 'models[1].weight=0:1:11' or 'density=0.2,0.5,0.8'",
                                        option="grid", value=spec)  # fmt: skip
            k, v = spec.split("=", 1)
            items.append((k.strip(), v))
    axes: list[Axis] = []
    for key, raw in items:
        path = canonical_path(key)
        if isinstance(raw, list):
            values = list(raw)
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            values = [raw]
        else:
            values = parse_values(str(raw), path=key)
        if any(a.path == path for a in axes):
            raise InvalidValueError(f"{path!r} is swept twice", option="grid", value=key)
        axes.append(Axis(path, values))
    if not axes:
        raise InvalidValueError("nothing to sweep; give --grid PATH=VALUES (or a sweep.grid block in the recipe)", option="grid")
    return axes


def grid_points(axes: Sequence[Axis]) -> list[dict[str, Any]]:
    """Every point of the grid as ``{path: value}``, the last axis varying fastest."""
    return [dict(zip([a.path for a in axes], combo, strict=True)) for combo in itertools.product(*[a.values for a in axes])]


def set_path(data: Any, path: str, value: Any) -> None:
    """Set ``path`` in plain recipe data (dicts and lists), creating missing mappings.

    A model given as a bare path (``- a.safetensors``) becomes ``{path: a.safetensors}`` when one
    of its keys is set. An index outside a list is an InvalidValueError naming the path.

    Example:
        >>> d = {"models": ["a.safetensors", "b.safetensors"]}
        >>> set_path(d, "models[1].weight", 2.0); d["models"][1]
        {'path': 'b.safetensors', 'weight': 2.0}
    """
    steps = split_path(path)
    node = data
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(step, int):
            if not isinstance(node, list) or not -len(node) <= step < len(node):
                size = len(node) if isinstance(node, list) else 0
                raise InvalidValueError(f"index {step} is outside the recipe's list of {size}", option="grid", value=path)
            if last:
                node[step] = value
                return
            if isinstance(node[step], str) and isinstance(steps[i + 1], str):
                node[step] = {"path": node[step]}
            node = node[step]
            continue
        if not isinstance(node, dict):
            raise InvalidValueError(f"{step!r} does not name a mapping in the recipe", option="grid", value=path)
        if last:
            node[step] = value
            return
        if node.get(step) is None:
            node[step] = [] if isinstance(steps[i + 1], int) else {}
        node = node[step]


def recipe_data(recipe: Recipe) -> dict[str, Any]:
    """The recipe's YAML as plain data (its ``sweep:`` block removed)."""
    data = yaml.safe_load(recipe.text) or {}
    if not isinstance(data, dict):
        raise InvalidValueError("the recipe is not a mapping", option="recipe", value=str(recipe.path))
    data.pop(SWEEP_KEY, None)
    return data


def point_text(data: Mapping[str, Any], point: Mapping[str, Any]) -> str:
    """The YAML text of the recipe at ``point`` (``data`` is not modified)."""
    d = copy.deepcopy(dict(data))
    for path, value in point.items():
        set_path(d, path, value)
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=False)


def point_recipe(path: Path, data: Mapping[str, Any], point: Mapping[str, Any]) -> Recipe:
    """Parse the recipe at ``point`` as if it were the file ``path`` (relative paths resolve the same)."""
    text = point_text(data, point)
    return parse_recipe(load_yaml_text(text, path), path, text)


__all__ = ["Axis", "SWEEP_KEY", "canonical_path", "grid_points", "parse_grid", "parse_values", "point_recipe", "point_text",
           "recipe_data", "set_path", "split_path"]  # fmt: skip
