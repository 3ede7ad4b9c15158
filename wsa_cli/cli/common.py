"""What every command shares: option types, the one place results are emitted, progress, errors at flags.

Rules: stdout carries data only, stderr carries messages for people. Without ``--format`` a
command prints a table when stdout is a terminal and JSON when it is piped. JSON and CSV are
written with plain writes (never through rich, which wraps and eats ``[...]``). Colour follows
rich's rules: off when not a terminal, off with ``NO_COLOR``.

A command is: options -> one library call (inside :func:`flags`, which turns the library's
neutral :class:`~wsa_cli.errors.InvalidValueError` into a usage error naming the flag) ->
:func:`finish`, which prints warnings and notes, emits the result as table, JSON or CSV with the
envelope every command shares, and applies the ``--fail-above`` gates.
"""

from __future__ import annotations

import csv
import enum
import io
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import typer

from wsa_cli.errors import InvalidValueError, UsageError, WsaError
from wsa_cli.jsontext import jsonable, to_json
from wsa_cli.progress import ProgressFn
from wsa_cli.results import Result, Table, Text
from wsa_cli.results import format_number as fmt_num


class OutputFormat(str, enum.Enum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOpt = Annotated[
    Optional[OutputFormat],
    typer.Option("--format", "-f", help="table (default on a terminal), json (default when piped) or csv."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="Where tensor math runs: auto (CUDA if available), cpu, cuda or cuda:N.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option("--threads", min=1, help="CPU compute threads (default: chosen from the method and the core count; see docs/merge.md)."),
]
FailAboveOpt = Annotated[
    Optional[list[str]],
    typer.Option("--fail-above", metavar="METRIC=VALUE", help="Exit 1 when METRIC exceeds VALUE (repeatable)."),
]
IncludeOpt = Annotated[
    Optional[list[str]],
    typer.Option("--include", help="Also treat tensors matching this glob (or re:REGEX) as layers. Repeatable."),
]
ExcludeOpt = Annotated[
    Optional[list[str]],
    typer.Option("--exclude", help="Never treat tensors matching this glob (or re:REGEX) as layers. Repeatable."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
WideOpt = Annotated[bool, typer.Option("--wide", help="Tables: every column, full key names (lines may exceed the terminal).")]
ColumnsOpt = Annotated[
    Optional[str],
    typer.Option("--columns", metavar="A,B,...", help="Tables: show these columns (after the name column), in this order."),
]
#: The two checkpoint options, offered by every command that opens a checkpoint.
KeyOpt = Annotated[
    Optional[str],
    typer.Option("--key", help="Entry holding the state dict inside a pickled checkpoint (e.g. state_dict, ema.model)."),
]
StripPrefixOpt = Annotated[
    Optional[str],
    typer.Option("--strip-prefix", help="Remove this prefix from every key (module. is always removed)."),
]

#: Library parameter names -> the flag that sets them, shared by every command (see :func:`flags`).
COMMON_FLAGS = {
    "fail_above": "--fail-above",
    "device": "--device",
    "container_key": "--key",
    "strip_prefix": "--strip-prefix",
    "include": "--include",
    "exclude": "--exclude",
    "weights": "--weights",
    "fusion": "--fusion",
    "target": "--target",
    "rescale": "--rescale",
    "force": "--force",
    "all_tensors": "--all",
}


@contextmanager
def flags(extra: Mapping[str, str] | None = None) -> Iterator[None]:
    """Name the flag in the library's errors about an option.

    An :class:`InvalidValueError` becomes a usage error, any other error about an option (a
    device that is not there) keeps its class and exit code; ``{opt:NAME}`` references in a
    message are spelled as flags. ``extra`` adds this command's own ``parameter -> --flag`` names
    to :data:`COMMON_FLAGS`.
    The message becomes ``--weights '1,x': expected comma-separated numbers`` (with the value the
    library was given) or ``--width: must be >= 1, got 0`` (without).
    """
    names = {**COMMON_FLAGS, **(extra or {})}
    try:
        yield
    except WsaError as exc:
        flag = names.get(exc.option or "")
        message = exc.describe(names)
        where = exc.location()
        message = message[len(where) + 2 :] if where else message
        if flag is not None:
            message = f"{flag} {exc.value!r}: {message}" if exc.value is not None else f"{flag}: {message}"
        elif not isinstance(exc, InvalidValueError) and message == exc.message:
            raise
        kind = UsageError if isinstance(exc, InvalidValueError) else type(exc)
        raise kind(message, path=exc.path, key=exc.key, line=exc.line) from exc


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


def stdout_console() -> Any:  # a rich Console, imported lazily so --help stays instant
    """Console for tables on stdout: the terminal's width; ``COLUMNS`` when set; 160 when piped
    (``--format table | less`` should not be squeezed to 80 columns)."""
    from rich.console import Console

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width: int | None = int(columns)
    else:
        width = None if sys.stdout.isatty() else 160
    return Console(highlight=False, soft_wrap=False, width=width)


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def print_table(view: Table, *, wide: bool = False, columns: Sequence[str] | None = None) -> None:
    """Draw a :class:`~wsa_cli.results.Table` on stdout for people (format ``table`` only).

    It is fitted to the terminal (:func:`wsa_cli.results.fit_table`): cells never wrap, optional
    columns are left out first, then names are shortened in the middle; ``wide`` shows every
    column at full length, ``columns`` picks them.
    """
    from rich.markup import escape
    from rich.table import Table as RichTable

    from wsa_cli.results import fit_table, table_width

    console = stdout_console()
    fitted = fit_table(view, console.width, wide=wide, columns=columns)
    need = table_width([max([len(c), *(len(r[i]) for r in fitted.rows)]) for i, c in enumerate(fitted.columns)])
    console.width = max(console.width, need)  # never let rich squeeze a column to nothing
    table = RichTable(title=fitted.title, caption=fitted.caption, show_lines=False, header_style="bold")
    for i, col in enumerate(fitted.columns):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for row in fitted.rows:
        table.add_row(*(escape(v) for v in row))
    console.print(table)


def note(message: str, *, quiet: bool = False) -> None:
    """A one-line message for people on stderr (warnings, where files went)."""
    if not quiet:
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()


def finish(
    result: Result,
    fmt: OutputFormat | None,
    gates: Sequence[Any] = (),
    *,
    quiet: bool = False,
    wide: bool = False,
    columns: Sequence[str] | None = None,
) -> None:
    """Emit a command's result: warnings and notes on stderr, then table/JSON/CSV on stdout, then gates.

    ``fmt`` None means the command has only a human form (its :meth:`~Result.render`). JSON is
    :meth:`~Result.document` (the shared envelope); CSV is :meth:`~Result.rows`. Gates are
    checked last, so a failing gate still prints its data first (exit 1). ``wide`` and
    ``columns`` shape the tables (see :func:`print_table`).
    """
    from wsa_cli.gates import check_gates

    for warning in result.all_warnings():
        note(f"warning: {warning}", quiet=quiet)
    for line in result.all_notes():
        note(line, quiet=quiet)
    if fmt is OutputFormat.json:
        write_stdout(to_json(result.document()))
    elif fmt is OutputFormat.csv:
        columns, rows = result.rows()
        write_stdout(to_csv(rows, columns))
    else:
        views = result.render()
        tables = [v for v in views if isinstance(v, Table)]
        if columns:  # a name no table has is an error before anything is printed
            known = {c for t in tables for c in t.columns}
            unknown = [c for c in columns if c not in known]
            if unknown:
                names = ", ".join(dict.fromkeys(c for t in tables for c in t.columns))
                raise UsageError(f"--columns {','.join(columns)!r}: no column {unknown[0]!r}; the tables have: {names}")
        for view in views:
            if isinstance(view, Text):
                write_stdout(view.text)
            else:  # each table shows the asked-for columns it has (the others: fitted as usual)
                mine = [c for c in columns or () if c in view.columns and c != view.columns[0]]
                print_table(view, wide=wide, columns=mine or None)
    if gates:
        check_gates(gates, result.gate_values())


@contextmanager
def progress(total: int | None, description: str, *, quiet: bool = False) -> Iterator[ProgressFn]:
    """Progress bar on stderr while a long job runs; yields ``advance(n, label)``.

    ``total`` None: the library announces it (``advance.set_total``, see
    :func:`wsa_cli.progress.announce_total`). Silent when stderr is not a terminal (CI logs
    stay clean) or with ``--quiet``.
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

        advance.set_total = lambda n: bar.update(task, total=n)  # type: ignore[attr-defined]
        yield advance


def parse_gates(specs: Sequence[str] | None, known: Sequence[str]) -> list[Any]:
    """``--fail-above`` values parsed against ``known`` metric names (errors name the flag)."""
    from wsa_cli.gates import parse_gates as _parse

    with flags():
        return _parse(specs, known)


__all__ = [
    "COMMON_FLAGS", "ColumnsOpt", "WideOpt", "DeviceOpt", "ExcludeOpt", "FailAboveOpt", "ForceOpt", "FormatOpt", "IncludeOpt", "JsonOpt", "KeyOpt",
    "OutputFormat", "QuietOpt", "StripPrefixOpt", "finish", "flags", "fmt_num", "note", "parse_gates", "print_table",
    "progress", "resolve_format", "to_csv", "to_json", "write_stdout",
]  # fmt: skip
