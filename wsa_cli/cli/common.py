"""What every command shares: option types, output formats, progress, ``--fail-above`` gates.

Rules (see ../shared/STYLE.md): stdout carries data only, stderr carries messages for people.
Without ``--format`` a command prints a table when stdout is a terminal and JSON when it is piped.
JSON and CSV are written with plain writes (never through rich, which wraps and eats ``[...]``).
Colour follows rich's rules: off when not a terminal, off with ``NO_COLOR``.
"""

from __future__ import annotations

import csv
import enum
import io
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import typer

from wsa_cli.errors import GateFailed, UsageError
from wsa_cli.jsontext import jsonable, to_json  # noqa: F401 - to_json is re-exported for the commands


class OutputFormat(str, enum.Enum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOpt = Annotated[
    Optional[OutputFormat],  # noqa: UP007 - typer needs Optional here
    typer.Option("--format", "-f", help="table (default on a terminal), json (default when piped) or csv."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="Where tensor math runs: auto (CUDA if available), cpu, cuda or cuda:N.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
FailAboveOpt = Annotated[
    Optional[list[str]],  # noqa: UP007
    typer.Option("--fail-above", metavar="METRIC=VALUE", help="Exit 1 when METRIC exceeds VALUE (repeatable)."),
]
IncludeOpt = Annotated[
    Optional[list[str]],  # noqa: UP007
    typer.Option("--include", help="Also treat tensors matching this glob (or re:REGEX) as layers. Repeatable."),
]
ExcludeOpt = Annotated[
    Optional[list[str]],  # noqa: UP007
    typer.Option("--exclude", help="Never treat tensors matching this glob (or re:REGEX) as layers. Repeatable."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]


def resolve_format(fmt: OutputFormat | None, as_json: bool = False) -> OutputFormat:
    """``--json`` wins; else the explicit ``--format``; else table on a TTY and JSON when piped."""
    if as_json:
        return OutputFormat.json
    if fmt is not None:
        return fmt
    return OutputFormat.table if sys.stdout.isatty() else OutputFormat.json


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header row; lists are joined with 'x' (shapes), None is empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        out = []
        for col in columns:
            v = jsonable(row.get(col))
            if isinstance(v, list):
                v = "x".join(str(x) for x in v)
            out.append("" if v is None else v)
        writer.writerow(out)
    return buf.getvalue()


def write_stdout(text: str) -> None:
    """Plain write of data to stdout (no rich, no wrapping)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def fmt_num(value: Any, digits: int = 4) -> str:
    """Compact human formatting for tables: 4 significant digits, '-' for None."""
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


def stdout_console():  # noqa: ANN201 - rich type imported lazily
    """Console for tables on stdout; when piped (``--format table | less``) it is wide, not 80 columns."""
    import shutil

    from rich.console import Console

    width = None if sys.stdout.isatty() else max(shutil.get_terminal_size((160, 24)).columns, 160)
    return Console(highlight=False, soft_wrap=False, width=width)


def stderr_console():  # noqa: ANN201
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None) -> None:
    """Render a table on stdout for people (only used when the format is ``table``)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, caption=caption, show_lines=False, header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(escape(fmt_num(v)) for v in row))
    stdout_console().print(table)


def note(message: str, *, quiet: bool = False) -> None:
    """A one-line message for people on stderr (warnings, where files went)."""
    if not quiet:
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()


ProgressFn = Callable[[int, str], None]


@contextmanager
def progress(total: int, description: str, *, quiet: bool = False) -> Iterator[ProgressFn]:
    """Progress bar on stderr while a long job runs; yields ``advance(n, label)``.

    Silent when stderr is not a terminal (CI logs stay clean) or with ``--quiet``.
    """
    if quiet or not sys.stderr.isatty() or os.environ.get("WSA_NO_PROGRESS"):
        yield lambda n, label="": None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[label]}"),
        console=stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total, label="")

        def advance(n: int = 1, label: str = "") -> None:
            bar.update(task, advance=n, label=label[-50:])

        yield advance


@dataclass(frozen=True)
class Gate:
    """One ``--fail-above METRIC=VALUE`` threshold."""

    metric: str
    limit: float


_GATE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*=\s*([-+0-9.eEinfINF]+)\s*$")


def parse_gates(specs: Sequence[str] | None, known: Sequence[str]) -> list[Gate]:
    """Parse ``--fail-above`` values, refusing unknown metric names (a typo must not pass CI)."""
    gates: list[Gate] = []
    for spec in specs or ():
        m = _GATE.match(spec)
        if not m:
            raise UsageError(f"--fail-above {spec!r}: expected METRIC=VALUE, e.g. max_kl=0.1")
        metric, raw = m.group(1), m.group(2)
        if metric not in known:
            raise UsageError(f"--fail-above {spec!r}: unknown metric {metric!r}; known: {', '.join(known)}")
        try:
            limit = float(raw)
        except ValueError:
            raise UsageError(f"--fail-above {spec!r}: {raw!r} is not a number") from None
        gates.append(Gate(metric, limit))
    return gates


def check_gates(gates: Sequence[Gate], values: Mapping[str, float | None], *, where: str = "") -> None:
    """Raise :class:`GateFailed` (exit 1) listing every gate whose metric exceeds its limit.

    A metric that is undefined (None/NaN) fails its gate: a gate that cannot be checked must not pass.
    """
    failed = []
    for gate in gates:
        value = values.get(gate.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            failed.append(f"{gate.metric} is undefined (limit {gate.limit:g})")
        elif value > gate.limit:
            failed.append(f"{gate.metric} = {value:.6g} > {gate.limit:g}")
    if failed:
        prefix = f"{where}: " if where else ""
        raise GateFailed(prefix + "; ".join(failed))


def parse_weights(text: str | None, k: int) -> list[float] | None:
    """``--weights 1,3``: one number per checkpoint (None when the option is absent)."""
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--weights {text!r}: expected comma-separated numbers, e.g. 1,3") from None
    if len(values) != k:
        raise UsageError(f"--weights {text!r}: {len(values)} weights for {k} checkpoints")
    return values


def sort_rows(rows: Sequence[Mapping[str, Any]], field: str | None, *, default: str | None) -> list[Mapping[str, Any]]:
    """Sort table rows by ``field`` (``key`` ascending, numbers descending, missing values last).

    ``None`` for both ``field`` and ``default`` keeps the original (file) order.
    """
    field = field or default
    if field is None:
        return list(rows)
    if field == "key":
        return sorted(rows, key=lambda r: str(r.get("key")))

    def number(r: Mapping[str, Any]) -> float | None:
        v = r.get(field)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) else None

    present = [r for r in rows if number(r) is not None]
    missing = [r for r in rows if number(r) is None]
    return sorted(present, key=lambda r: number(r), reverse=True) + missing  # type: ignore[arg-type, return-value]
