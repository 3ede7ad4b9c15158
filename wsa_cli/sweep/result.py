"""What ``wsa sweep`` returns: one row per evaluated point, the best point per metric, the front."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wsa_cli.results import GateGroup, Result, Table, View, format_number

RESULT_VERSION = 1


@dataclass
class SweepResult(Result):
    """The points of a sweep with their metrics, the best point per metric and the Pareto front.

    ``points`` rows: ``index`` (position in the grid), ``point`` (path -> value), ``metrics``,
    ``merge_seconds``/``eval_seconds``, ``stage`` (grid, design or front) and, for the confirmed
    front of a surrogate sweep, ``predicted``. ``best`` and ``front`` hold grid indices.
    """

    command = "sweep"
    version = RESULT_VERSION

    recipe: str
    recipe_sha256: str
    evaluator: str
    device: str
    axes: list[dict[str, Any]]
    metrics: list[str]
    directions: dict[str, str]
    front_metrics: list[str]
    points: list[dict[str, Any]]
    total: int
    best: dict[str, int | None]
    front: list[int]
    surrogate: dict[str, Any] | None = None
    interrupted: bool = False
    state: str | None = None
    seconds: float = 0.0
    inputs_opened: int = 0
    model_folder: str | None = None
    #: what each ``--write`` wrote: {"select": ..., "index": ..., "output": ...}
    written: list[dict[str, Any]] = field(default_factory=list)
    #: the KeyboardInterrupt that stopped the sweep (re-raised by the CLI after printing); not in the JSON
    stop: BaseException | None = field(default=None, repr=False, compare=False)

    def row(self, index: int) -> dict[str, Any]:
        """The evaluated row of grid point ``index``."""
        return next(r for r in self.points if r["index"] == index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe, "recipe_sha256": self.recipe_sha256, "evaluator": self.evaluator, "device": self.device,
            "model_folder": self.model_folder, "axes": self.axes, "metrics": self.metrics, "directions": self.directions,
            "front_metrics": self.front_metrics, "total": self.total, "evaluated": len(self.points), "interrupted": self.interrupted,
            "state": self.state, "seconds": self.seconds, "inputs_opened": self.inputs_opened,
            "points": [{k: v for k, v in r.items() if k != "resumed"} for r in self.points],
            "best": self.best, "front": self.front, "surrogate": self.surrogate, "written": self.written,
        }  # fmt: skip

    def _columns(self) -> list[str]:
        return ["index", *[a["path"] for a in self.axes], *self.metrics]

    def rows(self) -> tuple[list[str], list[dict[str, Any]]]:
        cols = [*self._columns(), "front", "best", "merge_seconds", "eval_seconds", "stage", "skipped"]
        out = []
        for r in self.points:
            best = [m for m, i in self.best.items() if i == r["index"]]
            out.append({"index": r["index"], **r["point"], **r["metrics"], "front": r["index"] in self.front, "best": " ".join(best),
                        "merge_seconds": r["merge_seconds"], "eval_seconds": r["eval_seconds"], "stage": r.get("stage", "grid"),
                        "skipped": r.get("skipped")})  # fmt: skip
        return cols, out

    def render(self) -> list[View]:
        cols = [*self._columns(), "front", "best"]
        _, rows = self.rows()
        caption = (f"{len(self.points)} of {self.total} grid point(s) evaluated with {self.evaluator}"
                   + ("" if self.surrogate is None else " (surrogate: design + predicted front)")
                   + f"; front over {', '.join(f'{m} ({self.directions[m]})' for m in self.front_metrics)} marked *")  # fmt: skip
        table = [[("*" if c == "front" and r["front"] else "" if c == "front" else r.get(c)) for c in cols] for r in rows]
        views: list[View] = [Table(f"sweep {self.recipe}", cols, table, caption=caption, optional=("best",))]
        best_rows = []
        for m, i in self.best.items():
            if i is None:
                continue
            r = self.row(i)
            best_rows.append([m, self.directions[m], format_number(r["metrics"][m]), i,
                              ", ".join(f"{k}={format_number(v)}" for k, v in r["point"].items())])  # fmt: skip
        views.append(Table("best point per metric", ["metric", "direction", "value", "index", "point"], best_rows))
        if self.surrogate is not None:
            s = self.surrogate
            err = [[m, e["points"], e["mean_abs_error"], e["max_abs_error"], s["fit_errors"][m]["max_abs_error"]] for m, e in s["errors"].items()]
            views.append(Table("surrogate: predicted vs evaluated at the newly evaluated front points",
                               ["metric", "points", "mean abs error", "max abs error", "max fit residual"], err,
                               caption=f"quadratic fit from {len(s['design'])} of {s['grid_points']} points; "
                               f"{len(s['predicted_front'])} predicted front point(s), {len(s['confirmed'])} newly evaluated"))  # fmt: skip
        return views

    def gate_values(self) -> list[GateGroup]:
        """The best value of each metric (``--fail-above loss=0.5`` fails when even the best point is above it)."""
        return [GateGroup("best", "best point", {m: (self.row(i)["metrics"][m] if i is not None else None) for m, i in self.best.items()})]


__all__ = ["SweepResult"]
