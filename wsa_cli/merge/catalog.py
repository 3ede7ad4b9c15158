"""``wsa methods`` as a library call: every merge method with its parameters, defaults and reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsa_cli.results import Result, Table, View

COLUMNS = ("name", "needs_base", "models", "parameters", "summary", "reference")


@dataclass
class MethodList(Result):
    """The merge methods a recipe's ``method:`` can name."""

    command = "methods"

    methods: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"methods": self.methods}

    def rows(self) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        return COLUMNS, [{**m, "parameters": "; ".join(_param_text(p) for p in m["parameters"])} for m in self.methods]

    def render(self) -> list[View]:
        _, rows = self.rows()
        return [Table("merge methods", COLUMNS, [[r[c] for c in COLUMNS] for r in rows],
                      caption="Every method runs after Weight Scope Alignment unless the recipe sets scope.align: false.")]  # fmt: skip


def _param_text(p: dict[str, Any]) -> str:
    """``density=0.2 in [0, 1]``: a parameter's default and, where it has one, its range (or choices)."""
    return f"{p['name']}={p['default']}" + (f" in {p['range']}" if p.get("range") else "")


def list_methods() -> MethodList:
    """Every registered merge method (built-ins and plug-ins).

    Example:
        >>> "linear" in [m["name"] for m in list_methods().methods]
        True
    """
    from wsa_cli.merge.registry import all_methods

    return MethodList([m.to_dict() for m in all_methods()])
