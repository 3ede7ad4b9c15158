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

    The first column is the row's name (a tensor key): it is never wrapped; when the terminal is
    too narrow it is shortened in the middle (the full name is in the JSON and CSV).
    ``optional`` lists columns that may be left out to fit the terminal, first left out first.
    """

    title: str | None
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str | None = None
    optional: Sequence[str] = ()


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


#: Narrowest the name column is shortened to before columns are left out instead.
MIN_NAME_WIDTH = 24


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters by replacing its middle with an ellipsis.

    Example:
        >>> shorten_middle("encoder.layer.11.attention.self.query.weight", 24)
        'encoder.laye…uery.weight'
    """
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = (width - 1) // 2 + (width - 1) % 2
    tail = width - 1 - head
    return text[:head] + "\u2026" + (text[-tail:] if tail else "")


def table_width(widths: Sequence[int]) -> int:
    """Characters a boxed table with these column widths takes (one space of padding, a rule between)."""
    return sum(widths) + 3 * len(widths) + 1


def fit_table(view: Table, width: int, *, wide: bool = False, columns: Sequence[str] | None = None) -> Table:
    """The table as it fits ``width`` characters: cells as text, optional columns left out, names shortened.

    ``columns`` picks the columns to show (the name column always comes first); ``wide`` shows
    every column and never shortens. Unknown names in ``columns`` are an
    :class:`~wsa_cli.errors.InvalidValueError` listing the table's columns.

    Example:
        >>> t = Table(None, ["key", "mean", "std"], [["a.very.long.key.name.weight", 0.5, 1.0]], optional=["mean"])
        >>> fit_table(t, 26).columns
        ['key', 'std']
    """
    from wsa_cli.errors import InvalidValueError

    names = list(view.columns)
    cells = [[format_number(v) for v in row] for row in view.rows]
    if columns:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise InvalidValueError(f"no column {unknown[0]!r}; this table has: {', '.join(names)}", option="columns", value=",".join(columns))
        keep = [names[0], *[c for c in columns if c != names[0]]]
    else:
        keep = list(names)
    idx = [names.index(c) for c in keep]

    def widths(cols: list[int]) -> list[int]:
        return [max([len(names[i]), *(len(r[i]) for r in cells)]) for i in cols]

    if not wide and not columns:
        for name in view.optional:
            if table_width(widths(idx)) <= width:
                break
            if name in keep and name != names[0]:
                idx.remove(names.index(name))
                keep.remove(name)
    if not wide and table_width(widths(idx)) > width:
        others = table_width(widths(idx)) - widths(idx)[0]
        room = max(width - others, MIN_NAME_WIDTH, len(names[0]))
        cells = [[shorten_middle(r[0], room), *r[1:]] for r in cells]
    while not wide and table_width(widths(idx)) > width:  # still too wide: shorten the widest other text column
        w = widths(idx)
        floors = [max(len(names[i]), MIN_NAME_WIDTH // 2) for i in idx]
        j = max(range(1, len(idx)), key=lambda n: w[n] - floors[n], default=None)
        if j is None or w[j] <= floors[j]:
            break  # nothing left to shorten: the table is wider than the terminal
        target = max(floors[j], w[j] - (table_width(w) - width))
        cells = [[*r[: idx[j]], shorten_middle(r[idx[j]], target), *r[idx[j] + 1 :]] for r in cells]
    return Table(view.title, keep, [[r[i] for i in idx] for r in cells], view.caption)
