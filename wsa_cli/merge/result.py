"""What a merge returns: the plan of every stage (dry run) or what each stage wrote."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsa_cli.results import Result, Table, View

PLAN_COLUMNS = ("stage", "key", "shape", "dtype", "out_dtype", "action", "method", "layer", "align", "rescale", "override", "reason")
RUN_COLUMNS = ("name", "output", "method", "tensors", "merged", "copied", "aligned", "constant_not_rescaled", "report")


@dataclass
class MergeResult(Result):
    """The result of :func:`~wsa_cli.merge.executor.merge_recipe`.

    ``stages`` holds one dict per stage: its plan (``dry_run``) or its summary (what was written).
    """

    command = "merge"

    recipe: str
    recipe_sha256: str
    dry_run: bool
    device: str
    stages: list[dict[str, Any]]
    #: the CPU threads of the run (:class:`wsa_cli.threads.ThreadPlan` as a dict), if known
    threads: dict[str, Any] | None = None
    #: the predicted cost (:class:`wsa_cli.merge.cost.MergeCost` as a dict): memory, disk, bytes, time
    cost: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "recipe_sha256": self.recipe_sha256, "dry_run": self.dry_run, "device": self.device,
                "threads": self.threads, "cost": self.cost, "stages": self.stages}  # fmt: skip

    @property
    def final(self) -> dict[str, Any]:
        """The last stage (the one whose output is the recipe's result)."""
        return self.stages[-1]

    def rows(self) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        if self.dry_run:
            return PLAN_COLUMNS, [{"stage": s["name"], **t} for s in self.stages for t in s["tensors"]]
        return RUN_COLUMNS, [{**s, "constant_not_rescaled": len(s["constant_not_rescaled"])} for s in self.stages]

    def render(self) -> list[View]:
        if not self.dry_run:
            columns, rows = self.rows()
            # on a narrow terminal the counts a person reads last go first (all of them are in --json and --wide)
            return [Table("merge", columns, [[r[c] for c in columns] for r in rows], optional=("constant_not_rescaled", "copied", "aligned"))]
        views: list[View] = []
        for s in self.stages:
            models = ", ".join(f"{m['input']} (w={m['weight']:g})" for m in s["models"])
            base = f"; base {s['base']['input']}" if s["base"] else ""
            params = ", ".join(f"{k}={v}" for k, v in s["parameters"].items())
            caption = (f"models: {models}{base}\nmethod {s['method']}({params}); scope align={s['scope']['align']} "
                       f"fusion={s['scope']['fusion']} target={s['scope']['target']} rescale={s['scope']['rescale']}\n"
                       f"output: {s['output']}" + (" (temporary)" if s["temporary"] else ""))  # fmt: skip
            if self.threads and s is self.stages[0]:
                t = self.threads
                caption += f"\nthreads: {t['compute']} compute + {t['io']} I/O on {t['cores']} cores ({t['source']})"
            if self.cost and s is self.stages[0]:
                from wsa_cli.merge.cost import cost_line

                caption += "\n" + cost_line(self.cost)
            cols = ("key", "shape", "dtype", "out_dtype", "action", "method", "params", "align", "override", "reason")
            cols += ("from",) if any("from" in t for t in s["tensors"]) else ()  # a slices stage: the input key of each output key
            cell = lambda t, c: (" ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in t[c].items()) if c == "params"  # noqa: E731
                                 else ", ".join(t.get(c, [])) if c == "from" else t[c])  # fmt: skip
            views.append(Table(f"plan of stage {s['name']!r} (dry run)", cols, [[cell(t, c) for c in cols] for t in s["tensors"]], caption=caption,
                               optional=("override", "reason", "out_dtype", "dtype", "method", "params")))
        return views
