"""``wsa methods``: list the merge methods, their parameters, defaults and references."""

from __future__ import annotations

from wsa_cli.cli.common import FormatOpt, JsonOpt, finish, resolve_format


def command(fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """List the merge methods a recipe's `method:` can name (scope alignment works with all of them)."""
    from wsa_cli.merge.catalog import list_methods

    finish(list_methods(), resolve_format(fmt, as_json))
