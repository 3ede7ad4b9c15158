"""Load YAML keeping the line of every value, so errors read ``recipe.yaml:LINE: message``.

The one YAML loader of wsa: recipes and permutation specs both go through it.

``yaml.compose`` gives a node tree whose nodes carry ``start_mark``; we turn it into small
wrappers -- :class:`YMap`, :class:`YList`, :class:`YScalar` -- that hold plain Python values and
their 1-based line. Duplicate mapping keys, YAML anchors to non-scalars and syntax errors are
reported with their line. Aliases are expanded, but within bounds (:data:`MAX_NODES` values in
all, :data:`MAX_DEPTH` levels of nesting): a "billion laughs" file, a recursive alias or deeply
nested brackets are a :class:`ConfigError` at their line, not a hang or a crash.

Example:
    >>> doc = load_yaml_text("models:\\n  - a.safetensors\\n", "r.yaml")
    >>> doc.get("models").items[0].value, doc.get("models").items[0].line
    ('a.safetensors', 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wsa_cli.errors import ConfigError

#: Most values one YAML file may expand to, aliases counted at every use (a recipe has hundreds).
MAX_NODES = 100_000
#: Deepest nesting of lists and mappings (a recipe needs fewer than ten levels).
MAX_DEPTH = 100


@dataclass
class YScalar:
    """A scalar (str, int, float, bool or None) and its line."""

    value: Any
    line: int

    def plain(self) -> Any:
        return self.value


@dataclass
class YList:
    """A sequence of nodes and its line."""

    items: list[YNode]
    line: int

    def plain(self) -> list[Any]:
        return [i.plain() for i in self.items]


@dataclass
class YMap:
    """A mapping with string keys; ``key_lines`` gives the line of each key."""

    entries: dict[str, YNode]
    line: int
    key_lines: dict[str, int] = field(default_factory=dict)

    def get(self, key: str) -> YNode | None:
        return self.entries.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def plain(self) -> dict[str, Any]:
        return {k: v.plain() for k, v in self.entries.items()}


YNode = YScalar | YList | YMap


class _Budget:
    """Counts converted nodes; expanding an alias counts its whole value again."""

    def __init__(self) -> None:
        self.nodes = 0


def _convert(node: yaml.Node, path: Path, constructor: yaml.constructor.SafeConstructor, budget: _Budget | None = None,
             depth: int = 0) -> YNode:  # fmt: skip
    line = node.start_mark.line + 1
    budget = budget if budget is not None else _Budget()
    budget.nodes += 1
    if budget.nodes > MAX_NODES:
        raise ConfigError(f"the YAML expands to more than {MAX_NODES} values (aliases repeat their anchor's value); "
                          "write it out or simplify it", path=path, line=line)  # fmt: skip
    if depth > MAX_DEPTH:
        raise ConfigError(f"the YAML nests deeper than {MAX_DEPTH} levels (or an alias refers to itself)", path=path, line=line)
    if isinstance(node, yaml.ScalarNode):
        try:
            value = constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise ConfigError(f"bad value ({getattr(exc, 'problem', None) or exc})", path=path, line=line) from None
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            value = str(value)  # dates, binary: keep the text; the schema reports the type
        return YScalar(value, line)
    if isinstance(node, yaml.SequenceNode):
        return YList([_convert(n, path, constructor, budget, depth + 1) for n in node.value], line)
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)  # resolve '<<' merge keys
        entries: dict[str, YNode] = {}
        key_lines: dict[str, int] = {}
        for knode, vnode in node.value:
            kline = knode.start_mark.line + 1
            if not isinstance(knode, yaml.ScalarNode):
                raise ConfigError("mapping keys must be plain names", path=path, line=kline)
            key = str(constructor.construct_object(knode))
            if key in entries:
                raise ConfigError(f"key {key!r} appears twice (first on line {key_lines[key]})", path=path, line=kline)
            entries[key] = _convert(vnode, path, constructor, budget, depth + 1)
            key_lines[key] = kline
        return YMap(entries, line, key_lines)
    raise ConfigError(f"unsupported YAML node {type(node).__name__}", path=path, line=line)  # pragma: no cover


def load_yaml_text(text: str, path: str | Path, *, what: str = "recipe") -> YNode:
    """Parse YAML text (one document) into line-carrying nodes; syntax errors name their line.

    ``what`` names the kind of file in messages ("recipe is empty").
    """
    p = Path(path)
    try:
        _check_depth(text, p)  # before composing: the composer recurses once per level
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"YAML syntax error: {exc.problem or exc.context}", path=p, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", path=p) from None
    if node is None:
        raise ConfigError(f"{what} is empty", path=p, line=1)
    return _convert(node, p, yaml.constructor.SafeConstructor())


def _check_depth(text: str, path: Path) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` from the parser's events (no recursion, no expansion)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"the YAML nests deeper than {MAX_DEPTH} levels", path=path, line=event.start_mark.line + 1)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def load_yaml_file(path: str | Path, *, what: str = "recipe") -> tuple[YNode, str]:
    """Read and parse a YAML file; return the nodes and the raw text (for hashing)."""
    from wsa_cli.errors import InputNotFoundError

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputNotFoundError(f"{what} not found", path=p) from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a folder, expected a YAML file", path=p) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} ({exc})", path=p) from None
    return load_yaml_text(text, p, what=what), text
