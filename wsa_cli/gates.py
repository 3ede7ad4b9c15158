"""Thresholds on a result's metrics (``--fail-above METRIC=VALUE``): parse them, check them.

A gate names a metric, or ``GROUP.METRIC`` for one group of a result (an interpolation mode).
A metric that is undefined (None/NaN) fails its gate: a gate that cannot be checked must not
pass. Failing gates raise :class:`~wsa_cli.errors.GateFailed` (exit 1) listing every failure.

Example:
    >>> gates = parse_gates(["max_kl=0.1"], known=["max_kl"])
    >>> check_gates(gates, [GateGroup(None, "inspect", {"max_kl": 0.05})])
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from wsa_cli.errors import GateFailed, InvalidValueError
from wsa_cli.results import GateGroup


@dataclass(frozen=True)
class Gate:
    """One threshold: fail when ``metric`` (optionally ``group.metric``) exceeds ``limit``."""

    metric: str
    limit: float

    @property
    def group(self) -> str | None:
        return self.metric.rpartition(".")[0] or None

    @property
    def name(self) -> str:
        """The metric without its group."""
        return self.metric.rpartition(".")[2]


_GATE = re.compile(r"^\s*([A-Za-z_][\w.+\-]*)\s*=\s*(\S+)\s*$")


def parse_gates(specs: Sequence[str] | None, known: Sequence[str]) -> list[Gate]:
    """Parse ``METRIC=VALUE`` texts, refusing unknown metric names (a typo must not pass CI).

    ``known`` lists every accepted name, qualified ones (``naive.loss_barrier``) included.

    Example:
        >>> parse_gates(["naive.loss_barrier=0.1"], ["loss_barrier", "naive.loss_barrier"])
        [Gate(metric='naive.loss_barrier', limit=0.1)]
    """
    gates: list[Gate] = []
    for spec in specs or ():
        m = _GATE.match(spec)
        if not m:
            raise InvalidValueError("expected METRIC=VALUE, e.g. max_kl=0.1", option="fail_above", value=spec)
        metric, raw = m.group(1), m.group(2)
        if metric not in known:
            raise InvalidValueError(f"unknown metric {metric!r}; known: {', '.join(known)}", option="fail_above", value=spec)
        try:
            limit = float(raw)
        except ValueError:
            raise InvalidValueError(f"{raw!r} is not a number", option="fail_above", value=spec) from None
        if math.isnan(limit):
            raise InvalidValueError("the limit is NaN; give a number (inf never fails)", option="fail_above", value=spec)
        gates.append(Gate(metric, limit))
    return gates


def check_gates(gates: Sequence[Gate], groups: Sequence[GateGroup]) -> None:
    """Raise :class:`GateFailed` listing every gate whose metric exceeds its limit, in any group it applies to.

    A plain gate applies to every group; ``GROUP.METRIC`` only to the group of that name.
    """
    failed: list[str] = []
    for group in groups:
        mine = [g for g in gates if g.group is None or g.group == group.name]
        problems = []
        for gate in mine:
            value = group.values.get(gate.name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                problems.append(f"{gate.name} is undefined (limit {gate.limit:g})")
            elif value > gate.limit:
                problems.append(f"{gate.name} = {value:.6g} > {gate.limit:g}")
        if problems:
            failed.append(f"{group.where}: " + "; ".join(problems) if group.where else "; ".join(problems))
    if failed:
        raise GateFailed("; ".join(failed))
