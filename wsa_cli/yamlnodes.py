"""Load YAML keeping the line of every value, so errors read ``recipe.yaml:LINE: message``.

The one YAML loader of wsa: recipes and permutation specs both go through it.

``yaml.compose`` gives a node tree whose nodes carry ``start_mark``; we turn it into small
wrappers -- :class:`YMap`, :class:`YList`, :class:`YScalar` -- that hold plain Python values and
their 1-based line. Duplicate mapping keys, YAML anchors to non-scalars and syntax errors are
reported with their line.

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


def _convert(node: yaml.Node, path: Path, constructor: yaml.constructor.SafeConstructor) -> YNode:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        try:
            value = constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise ConfigError(f"bad value ({getattr(exc, 'problem', None) or exc})", path=path, line=line) from None
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            value = str(value)  # dates, binary: keep the text; the schema reports the type
        return YScalar(value, line)
    if isinstance(node, yaml.SequenceNode):
        return YList([_convert(n, path, constructor) for n in node.value], line)
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
            entries[key] = _convert(vnode, path, constructor)
            key_lines[key] = kline
        return YMap(entries, line, key_lines)
    raise ConfigError(f"unsupported YAML node {type(node).__name__}", path=path, line=line)  # pragma: no cover


def load_yaml_text(text: str, path: str | Path, *, what: str = "recipe") -> YNode:
    """Parse YAML text (one document) into line-carrying nodes; syntax errors name their line.

    ``what`` names the kind of file in messages ("recipe is empty").
    """
    p = Path(path)
    try:
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
