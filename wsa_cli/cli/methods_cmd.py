"""``wsa methods``: list the merge methods, their parameters, defaults and references."""

from __future__ import annotations

from wsa_cli.cli.common import FormatOpt, JsonOpt, OutputFormat, print_table, resolve_format, to_csv, to_json, write_stdout

COLUMNS = ("name", "needs_base", "models", "parameters", "summary", "reference")


def command(fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """List the merge methods a recipe's `method:` can name (scope alignment works with all of them)."""
    from wsa_cli.merge import all_methods

    out_fmt = resolve_format(fmt, as_json)
    methods = [m.to_dict() for m in all_methods()]
    if out_fmt is OutputFormat.json:
        write_stdout(to_json({"methods": methods}))
        return
    rows = [{**m, "parameters": " ".join(f"{p['name']}={p['default']}" for p in m["parameters"])} for m in methods]
    if out_fmt is OutputFormat.csv:
        write_stdout(to_csv(rows, COLUMNS))
    else:
        print_table("merge methods", COLUMNS, [[r[c] for c in COLUMNS] for r in rows],
                    caption="Every method runs after Weight Scope Alignment unless the recipe sets scope.align: false.")  # fmt: skip
