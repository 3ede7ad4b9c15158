"""What every command's library call returns: a result object that knows its JSON, CSV and tables.

The library computes; the CLI only emits. Each result (``InspectResult``, ``MergeResult``,
``InterpolationResult``...) subclasses :class:`Result` and provides

* :meth:`Result.to_dict` -- the JSON body; :meth:`Result.document` adds the envelope every
  command shares, ``{"format": "wsa-<command>", "version": N, ...}``;
* :meth:`Result.rows` -- the columns and rows of its CSV form;
* :meth:`Result.render` -- the human form, as neutral :class:`Table` and :class:`Text` views
  (the CLI draws them; the library never imports a terminal library);
* :meth:`Result.gate_values` -- the numbers a ``--fail-above`` gate compares, per group;
* ``warnings`` and ``notes`` -- lines for people (``wsa`` prints them on stderr).

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Hello(Result):
    ...     command = "hello"
    ...     name: str = "world"
    ...     def to_dict(self):
    ...         return {"name": self.name}
    >>> Hello().document()
    {'format': 'wsa-hello', 'version': 1, 'name': 'world'}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Table:
    """A table for people: a title, column names, rows of plain values, an optional caption.

    The first column is the row's name (left-aligned, never wrapped in the middle of a word).
    """

    title: str | None
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str | None = None


@dataclass
class Text:
    """Text printed as it is (a report, a YAML spec, a histogram drawn in characters)."""

    text: str


View = Table | Text


@dataclass(frozen=True)
class GateGroup:
    """The gate metrics of one part of a result.

    ``name`` lets a gate address this group alone (``NAME.metric``; None: only plain metrics
    apply); ``where`` prefixes the failure message (``mode naive``).
    """

    name: str | None
    where: str
    values: Mapping[str, float | None]


@dataclass
class Result:
    """Base of every command result; subclasses (dataclasses) set :attr:`command` and implement :meth:`to_dict`."""

    #: the command's name: the JSON envelope says ``"format": "wsa-<command>"``
    command: ClassVar[str] = "result"
    #: version of this command's JSON layout (pinned by tests/golden/)
    version: ClassVar[int] = 1
    #: lines for people, printed as ``warning: ...`` on stderr
    warnings: list[str] = field(default_factory=list, kw_only=True)
    #: lines for people, printed as they are on stderr (where files went)
    notes: list[str] = field(default_factory=list, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body (everything but the envelope)."""
        raise NotImplementedError

    def document(self) -> dict[str, Any]:
        """The JSON output: the envelope ``format`` and ``version``, then :meth:`to_dict`."""
        return {"format": f"wsa-{self.command}", "version": self.version, **self.to_dict()}

    def rows(self) -> tuple[Sequence[str], list[Mapping[str, Any]]]:
        """Columns and rows of the CSV output (default: none)."""
        return (), []

    def render(self) -> list[View]:
        """The human form (default: the CSV rows as one table)."""
        columns, rows = self.rows()
        return [Table(self.command, list(columns), [[r.get(c) for c in columns] for r in rows])]

    def gate_values(self) -> list[GateGroup]:
        """What ``--fail-above`` compares (default: nothing)."""
        return []

    def all_warnings(self) -> list[str]:
        return list(self.warnings)

    def all_notes(self) -> list[str]:
        return list(self.notes)


def format_number(value: Any, digits: int = 4) -> str:
    """Compact human formatting for tables: 4 significant digits, '-' for None, shapes as ``4x3``.

    Example:
        >>> format_number(0.000123456), format_number(12345), format_number(None), format_number((4, 3))
        ('1.235e-04', '12,345', '-', '4x3')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value) or "()"
    return str(value)
