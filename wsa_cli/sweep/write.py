"""``--write best:METRIC`` / ``--write front`` / ``--write INDEX``: chosen points merged as ordinary wsa outputs.

Each chosen point's recipe (the original with the swept values filled in) goes through
:func:`~wsa_cli.merge.executor.merge_recipe`, the path of ``wsa merge``: plan, output checks,
atomic write, merge report, model card and recipe copy (folder outputs). Its output is the
recipe's output with ``-p<INDEX>`` before the suffix (``out/ties.safetensors`` ->
``out/ties-p7.safetensors``); a ``.safetensors`` output also gets the filled-in recipe next to
it (``out/ties-p7.recipe.yaml``), written after the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from wsa_cli.errors import InvalidValueError, OutputError
from wsa_cli.io.open import RECIPE_COPY_NAME
from wsa_cli.io.writer import atomic_write_text
from wsa_cli.progress import ProgressFn
from wsa_cli.recipe.schema import parse_recipe
from wsa_cli.sweep.grid import point_text, set_path
from wsa_cli.sweep.result import SweepResult
from wsa_cli.sweep.run import SweepSetup
from wsa_cli.yamlnodes import load_yaml_text


def parse_selection(specs: Sequence[str], metrics: Sequence[str] | None = None) -> list[tuple[str, str | int | None]]:
    """``best:METRIC``, ``front`` or a grid index -> ``[(kind, arg)]`` (checked against ``metrics`` when known).

    Example:
        >>> parse_selection(["best:accuracy", "front", "3"])
        [('best', 'accuracy'), ('front', None), ('index', 3)]
    """
    out: list[tuple[str, str | int | None]] = []
    for spec in specs:
        s = spec.strip()
        if s == "front":
            out.append(("front", None))
        elif s.startswith("best:") and s[5:].strip():
            m = s[5:].strip()
            if metrics is not None and m not in metrics:
                raise InvalidValueError(f"the evaluator returns no metric {m!r} (it returns {', '.join(metrics)})", option="write", value=spec)
            out.append(("best", m))
        elif s.isdigit():
            out.append(("index", int(s)))
        else:
            raise InvalidValueError("expected best:METRIC, front, or a grid point index", option="write", value=spec)
    return out


def chosen_points(result: SweepResult, selection: Sequence[tuple[str, str | int | None]]) -> list[tuple[str, int]]:
    """The grid indices a selection names, each once, with what named it first."""
    chosen: dict[int, str] = {}
    evaluated = {r["index"] for r in result.points}
    for kind, arg in selection:
        if kind == "front":
            for i in result.front:
                chosen.setdefault(i, "front")
        elif kind == "best":
            i = result.best.get(str(arg))
            if i is None:
                raise InvalidValueError(f"no evaluated point has metric {arg!r}", option="write", value=f"best:{arg}")
            chosen.setdefault(i, f"best:{arg}")
        else:
            assert isinstance(arg, int)
            if arg not in evaluated:
                raise InvalidValueError(f"grid point {arg} was not evaluated (0..{result.total - 1})", option="write", value=str(arg))
            chosen.setdefault(arg, str(arg))
    return [(why, i) for i, why in chosen.items()]


def point_output(output: Path, index: int) -> Path:
    """``out/ties.safetensors`` -> ``out/ties-p7.safetensors``; a folder ``out/model`` -> ``out/model-p7``."""
    if output.suffix == ".safetensors":
        return output.with_name(f"{output.stem}-p{index}.safetensors")
    return output.with_name(f"{output.name}-p{index}")


def write_points(setup: SweepSetup, result: SweepResult, selection: Sequence[str], *, device: torch.device | str = "cpu",
                 force: bool = False, progress: ProgressFn | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Merge the selected points to files through ``merge_recipe``; return what was written (also in ``result.written``)."""
    from wsa_cli.merge.executor import merge_recipe

    chosen = chosen_points(result, parse_selection(selection, result.metrics))
    stage = setup.recipe.stages[-1]
    assert stage.output is not None
    written = []
    for why, index in chosen:
        row = result.row(index)
        out = point_output(stage.output.path, index)
        data = yaml.safe_load(point_text(setup.data, row["point"]))
        out_key = "output.path" if isinstance(data.get("output"), dict) else "output"
        set_path(data, out_key, str(out))
        text = f"# wsa sweep {setup.recipe.path.name}: grid point {index} ({why}); metrics " + \
            ", ".join(f"{k}={v}" for k, v in row["metrics"].items()) + "\n" + yaml.safe_dump(data, sort_keys=False)  # fmt: skip
        recipe = parse_recipe(load_yaml_text(text, setup.recipe.path), setup.recipe.path, text)
        side = out.with_name(f"{out.stem}.recipe.yaml") if out.suffix == ".safetensors" else None
        if side is not None and side.exists() and not force:
            raise OutputError("exists; pass --force to replace it", path=side)
        res = merge_recipe(recipe, device=device, force=force, progress=progress)
        if side is not None:
            atomic_write_text(side, text)
        entry = {"select": why, "index": index, "point": row["point"], "output": res.final["output"], "report": res.final["report"],
                 "recipe": str(side) if side is not None else str(out / RECIPE_COPY_NAME)}  # fmt: skip
        written.append(entry)
        result.written.append(entry)
        result.notes.append(f"wrote {res.final['output']} (grid point {index}, {why})")
    return written


__all__ = ["chosen_points", "parse_selection", "point_output", "write_points"]
