"""One sweep: merge every grid point of a recipe in memory, evaluate it, keep the best and the front.

:func:`prepare_sweep` reads the recipe (and its ``sweep:`` block), the grid and the evaluator
before any tensor is read; :func:`run_sweep` walks the points with one
:class:`~wsa_cli.sweep.memory.MemoryMerger` (inputs opened once, one reused output state dict),
calls the evaluator on each merge, and returns a :class:`~wsa_cli.sweep.result.SweepResult`.
With a state file every finished point is saved to it (atomically) and a rerun with the same
file skips them; Ctrl-C (or SIGTERM) stops after saving, and the result holds the points done so
far (``interrupted``). With ``surrogate=N`` only N points are evaluated first, a quadratic of
each metric is fitted to them (:mod:`wsa_cli.sweep.surrogate`), and the predicted front is then
evaluated to confirm it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsa_cli.device import resolve_device
from wsa_cli.errors import ConfigError, InvalidValueError
from wsa_cli.interpolate.evaluators import resolve_evaluator
from wsa_cli.io.writer import atomic_write_text
from wsa_cli.progress import ProgressFn, announce_total
from wsa_cli.recipe.schema import Recipe, parse_recipe
from wsa_cli.sweep.grid import SWEEP_KEY, Axis, grid_points, parse_grid, point_recipe, recipe_data
from wsa_cli.sweep.memory import MemoryMerger
from wsa_cli.sweep.multi import MultiEvaluator, labels_for, split_label
from wsa_cli.sweep.pareto import best_index, directions_for, pareto_front, parse_directions
from wsa_cli.sweep.result import SweepResult
from wsa_cli.yamlnodes import YMap, load_yaml_file

STATE_FORMAT = "wsa-sweep-state"
#: the keys of a recipe's ``sweep:`` block (command-line options override them)
SWEEP_BLOCK_KEYS = ("grid", "eval", "direction", "front", "surrogate", "limit", "eval_model")


@dataclass
class SweepSetup:
    """A checked sweep: the recipe (as data, without its ``sweep:`` block), axes, evaluator and options."""

    recipe: Recipe
    data: dict[str, Any]
    axes: list[Axis]
    evaluator: Callable[..., Mapping[str, float]]  # (state_dict, device, where=...) -> metrics; several: MultiEvaluator
    evaluator_spec: str
    directions: dict[str, str] = field(default_factory=dict)
    front: list[str] | None = None
    surrogate: int | None = None
    model_folder: Path | None = None

    @property
    def points(self) -> list[dict[str, Any]]:
        return grid_points(self.axes)


def _sweep_block(path: Path) -> tuple[Recipe, dict[str, Any]]:
    """The recipe without its ``sweep:`` block, and the block (``{}`` without one)."""
    node, text = load_yaml_file(path)
    block: dict[str, Any] = {}
    entries = getattr(node, "entries", None)
    if entries is not None and SWEEP_KEY in entries:
        import yaml

        raw = (yaml.safe_load(text) or {}).get(SWEEP_KEY) or {}
        line = node.key_lines.get(SWEEP_KEY) if hasattr(node, "key_lines") else None
        if not isinstance(raw, dict):
            raise ConfigError("sweep must be a mapping (grid, eval, direction, front, surrogate, limit, eval_model)", path=path, line=line)
        stray = [k for k in raw if k not in SWEEP_BLOCK_KEYS]
        if stray:
            raise ConfigError(f"unknown key sweep.{stray[0]} (expected: {', '.join(SWEEP_BLOCK_KEYS)})", path=path, line=line)
        block = raw
        rest = YMap({k: v for k, v in entries.items() if k != SWEEP_KEY}, node.line,
                    {k: v for k, v in node.key_lines.items() if k != SWEEP_KEY})  # fmt: skip
        return parse_recipe(rest, path, text), block
    return parse_recipe(node, path, text), block


def prepare_sweep(
    recipe: str | Path,
    *,
    grid: Sequence[str] = (),
    evaluator: str | Sequence[str] | None = None,
    directions: Sequence[str] = (),
    front: str | None = None,
    surrogate: int | None = None,
    limit: int | None = None,
    eval_model: str | Path | None = None,
) -> SweepSetup:
    """Parse and check a sweep (options override the recipe's ``sweep:`` block); reads no tensor.

    The evaluator's model folder (config, tokenizer for the ``hf-*`` evaluators) is ``eval_model``,
    else the recipe's base model's folder, else its first model's (see docs/evaluators.md).
    """
    path = Path(recipe)
    parsed, block = _sweep_block(path)
    axes = parse_grid(list(grid) if grid else (block.get("grid") or {}))
    spec = evaluator if evaluator else block.get("eval")
    specs = [str(x) for x in ([spec] if isinstance(spec, str) else (spec or []))]
    if not evaluator:  # a data file named in the recipe is relative to the recipe, like its models
        specs = [_relative_to(x, parsed.base_dir) for x in specs]
    if not specs or not all(x.strip() for x in specs):
        raise InvalidValueError("is needed: name an evaluator (e.g. digits-mlp, hf-perplexity:FILE) or give sweep.eval in the recipe",
                                option="evaluator")  # fmt: skip
    given = parse_directions(list(directions)) if directions else parse_directions(block.get("direction") or {})
    front_list = _front_metrics(front if front is not None else block.get("front"))
    count = surrogate if surrogate is not None else block.get("surrogate")
    if count is not None and (not isinstance(count, int) or count < 2):
        raise InvalidValueError("must be an integer >= 2 (how many points to evaluate before fitting)", option="surrogate", value=str(count))
    if count is not None and not all(a.numeric for a in axes):
        bad = next(a.path for a in axes if not a.numeric)
        raise InvalidValueError(f"fits numbers, but axis {bad!r} has non-numeric values", option="surrogate", value=str(count))
    lim = limit if limit is not None else block.get("limit")
    folder_given = eval_model if eval_model is not None else block.get("eval_model")
    if folder_given is not None and eval_model is None:
        folder_given = parsed.base_dir / str(folder_given)
    folder = Path(folder_given) if folder_given is not None else MemoryMerger.model_folder(parsed)
    data = recipe_data(parsed)
    if len(parsed.stages) != 1:
        raise InvalidValueError(f"has {len(parsed.stages)} stages; a sweep merges single-stage recipes in memory",
                                option="recipe", value=str(path))  # fmt: skip
    ends = ({a.path: a.values[0] for a in axes}, {a.path: a.values[-1] for a in axes})  # the grid's first and last points
    for point in ends:  # a bad path or value fails now, as a recipe error would
        try:
            point_recipe(path, data, point)
        except ConfigError as exc:
            where = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(f"at grid point {where}: {exc.message}", path=path) from None
    labeled = labels_for(specs)
    if lim is not None and not any(s.startswith("hf-") for _, s in labeled):
        _hf_options(labeled[0][1], folder, lim)  # the error: --limit applies to hf-* evaluators only
    evs = [(label, resolve_evaluator(s, **(_hf_options(s, folder, lim) if s.startswith("hf-") else {}))) for label, s in labeled]
    name = " + ".join(specs)
    return SweepSetup(parsed, data, axes, MultiEvaluator(evs), name, given, front_list, count, folder)


def _relative_to(spec: str, base: Path) -> str:
    """``[LABEL=]hf-*:FILE`` with a relative FILE -> FILE under ``base``; other specs unchanged."""
    label, body = split_label(spec)
    name, sep, file = body.partition(":")
    if not (name.startswith("hf-") and sep and file.strip()) or Path(file.strip()).is_absolute():
        return spec
    return (f"{label}=" if label else "") + f"{name}:{base / file.strip()}"


def _hf_options(spec: str, folder: Path | None, limit: Any) -> dict[str, Any]:
    """The keywords an ``hf-*`` evaluator takes (the model folder, the example limit); none for others."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InvalidValueError("must be a positive integer", option="limit", value=str(limit))
    if not spec.startswith("hf-"):
        if limit is not None:
            raise InvalidValueError("applies to the hf-* evaluators only (a built-in task evaluates its whole test split)",
                                    option="limit", value=str(limit))  # fmt: skip
        return {}
    return {"model_folder": folder, "limit": limit}


def _front_metrics(value: Any) -> list[str] | None:
    if value is None:
        return None
    names = [s.strip() for s in (value.split(",") if isinstance(value, str) else value) if str(s).strip()]
    if len(names) < 2:
        raise InvalidValueError("needs two or more metrics, e.g. loss,accuracy", option="front", value=str(value))
    return names


def _point_key(point: Mapping[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def _state_header(setup: SweepSetup) -> dict[str, Any]:
    return {"format": STATE_FORMAT, "version": 1, "recipe": str(setup.recipe.path), "recipe_sha256": setup.recipe.sha256,
            "evaluator": setup.evaluator_spec, "axes": [{"path": a.path, "values": a.values} for a in setup.axes]}  # fmt: skip


def load_state(path: Path, setup: SweepSetup) -> dict[str, dict[str, Any]]:
    """The points a state file already holds (point key -> row); a state of another sweep is refused."""
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"not a readable sweep state file: {exc}", path=path) from None
    header = _state_header(setup)
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise ConfigError("not a wsa sweep state file", path=path)
    for k in ("recipe_sha256", "evaluator", "axes"):
        if doc.get(k) != header[k]:
            raise ConfigError(f"belongs to another sweep ({k} differs); use another --state file or remove this one", path=path)
    return {_point_key(r["point"]): r for r in doc.get("done", [])}


def save_state(path: Path, setup: SweepSetup, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write every finished point to ``path`` (atomically: a Ctrl-C while saving keeps the previous state)."""
    doc = {**_state_header(setup), "done": list(rows)}
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (None if not math.isfinite(v) else v) for k, v in metrics.items()}


def run_sweep(
    setup: SweepSetup,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    state: str | Path | None = None,
    interrupt_state: str | Path | None = None,
) -> SweepResult:
    """Merge and evaluate the grid (or the surrogate's design and front); see the module doc.

    ``interrupt_state``: without ``state``, where an interrupted sweep saves its points (unless
    that file holds another sweep's state), so that ``--state`` can resume it.
    """
    dev = resolve_device(device)
    points = setup.points
    state_path = Path(state) if state is not None else None
    saved = load_state(state_path, setup) if state_path is not None else {}
    done: dict[int, dict[str, Any]] = {}
    for i, p in enumerate(points):
        if _point_key(p) in saved:
            done[i] = {**saved[_point_key(p)], "index": i, "resumed": True}
    interrupted: BaseException | None = None
    surrogate: dict[str, Any] | None = None
    started = time.perf_counter()
    with MemoryMerger(dev) as merger:

        def evaluate(indices: Sequence[int], stage: str) -> None:
            for i in indices:
                if i in done:
                    continue
                point = points[i]
                label = ", ".join(f"{k}={v}" for k, v in point.items())
                t0 = time.perf_counter()
                try:
                    recipe = point_recipe(setup.recipe.path, setup.data, point)
                    plan = merger.plan(recipe)
                except ConfigError as exc:  # a point the recipe rules refuse (e.g. every weight 0): skipped, said why
                    done[i] = {"index": i, "point": point, "metrics": {}, "merge_seconds": 0.0, "eval_seconds": 0.0, "stage": stage,
                               "skipped": exc.message}  # fmt: skip
                    if progress is not None:
                        progress(1, label)
                    continue
                sd = merger.merge(recipe, plan)
                t1 = time.perf_counter()
                metrics = setup.evaluator(sd, dev, where=label)
                t2 = time.perf_counter()
                done[i] = {"index": i, "point": point, "metrics": _finite(metrics), "merge_seconds": t1 - t0, "eval_seconds": t2 - t1,
                           "stage": stage}  # fmt: skip
                if state_path is not None:
                    save_state(state_path, setup, [_state_row(r) for _, r in sorted(done.items())])
                if progress is not None:
                    progress(1, label)

        try:
            if setup.surrogate is None:
                announce_total(progress, len(points))
                evaluate(range(len(points)), "grid")
            else:
                surrogate = _surrogate_sweep(setup, points, done, evaluate, progress)
        except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM: keep what is done, save it, report it
            interrupted = exc
            if state_path is None and interrupt_state is not None and done:
                try:
                    load_state(Path(interrupt_state), setup)  # never overwrite another sweep's state
                    state_path = Path(interrupt_state)
                except ConfigError:
                    pass
            if state_path is not None:
                save_state(state_path, setup, [_state_row(r) for _, r in sorted(done.items())])
        opened = merger.opened
    rows = [r for _, r in sorted(done.items())]
    if rows and interrupted is None and all(r.get("skipped") for r in rows):  # a typo (parameters.densty), not a grid edge
        raise ConfigError(f"every grid point was refused; the first: {rows[0]['skipped']}", path=setup.recipe.path)
    return _result(setup, rows, len(points), dev, surrogate, interrupted, state_path, time.perf_counter() - started, opened)


def _state_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("point", "metrics", "merge_seconds", "eval_seconds", "stage", "skipped") if k in row}


def _surrogate_sweep(setup: SweepSetup, points: list[dict[str, Any]], done: dict[int, dict[str, Any]], evaluate: Any,
                     progress: ProgressFn | None) -> dict[str, Any]:  # fmt: skip
    """Evaluate a design of ``setup.surrogate`` points, fit each metric, evaluate the predicted front; return the report."""
    import numpy as np

    from wsa_cli.sweep.surrogate import design_points, feature_count, fit_quadratic

    count = setup.surrogate
    assert count is not None
    design = design_points(len(points), count)
    announce_total(progress, len(design))
    evaluate(design, "design")
    x_all = np.array([[float(p[a.path]) for a in setup.axes] for p in points])
    low, high = [min(a.values) for a in setup.axes], [max(a.values) for a in setup.axes]
    fitted = [i for i in design if i in done]
    metrics = _metric_names([done[i] for i in fitted])
    predicted: dict[str, np.ndarray] = {}
    for m in metrics:
        idx = [i for i in fitted if done[i]["metrics"].get(m) is not None]
        if idx:
            predicted[m] = fit_quadratic(x_all[idx], [done[i]["metrics"][m] for i in idx], low=low, high=high).predict(x_all)
    dirs = directions_for(setup.front or metrics, setup.directions)
    pred_rows = [{m: float(predicted[m][i]) for m in predicted} for i in range(len(points))]
    front_dirs = {m: d for m, d in dirs.items() if m in predicted}
    candidates = [i for i in range(len(points)) if not (i in done and done[i].get("skipped"))]
    confirm: list[int] = []
    for _ in range(len(points)):  # a predicted front point the recipe rules refuse is dropped, and the front recomputed
        front_local = pareto_front([pred_rows[i] for i in candidates], front_dirs)
        front_pred = [candidates[j] for j in front_local]
        todo = [i for i in front_pred if i not in done]
        announce_total(progress, len(design) + len(confirm) + len(todo))
        evaluate(todo, "front")
        confirm += todo
        refused = [i for i in front_pred if done[i].get("skipped")]
        if not refused:
            break
        candidates = [i for i in candidates if i not in refused]

    def errors(indices: Sequence[int]) -> dict[str, dict[str, Any]]:
        out = {}
        for m in predicted:
            checked = [i for i in indices if i in done and done[i]["metrics"].get(m) is not None]
            diffs = [abs(pred_rows[i][m] - done[i]["metrics"][m]) for i in checked]
            out[m] = {"points": len(diffs), "mean_abs_error": (sum(diffs) / len(diffs)) if diffs else None,
                      "max_abs_error": max(diffs) if diffs else None}  # fmt: skip
        return out

    for i in front_pred:
        done[i]["predicted"] = {m: pred_rows[i][m] for m in predicted}
    d = len(setup.axes)
    return {"design": design, "coefficients": feature_count(d), "predicted_front": front_pred, "confirmed": confirm,
            "grid_points": len(points), "errors": errors(confirm), "fit_errors": errors(fitted),
            "predictions": [{"index": i, "metrics": pred_rows[i]} for i in range(len(points))],
            "note": None if len(fitted) >= feature_count(d) else f"{len(fitted)} design points for {feature_count(d)} coefficients: "
            "an underdetermined fit (minimum-norm)"}  # fmt: skip


def _metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for k in r["metrics"]:
            if k not in names:
                names.append(k)
    first = [c for c in ("loss", "accuracy") if c in names]
    return first + [c for c in names if c not in first]


def _result(setup: SweepSetup, rows: list[dict[str, Any]], total: int, dev: torch.device, surrogate: dict[str, Any] | None,
            interrupted: BaseException | None, state_path: Path | None, seconds: float, opened: int) -> SweepResult:  # fmt: skip
    metrics = _metric_names(rows)
    dirs = directions_for(metrics, setup.directions)
    front_metrics = setup.front if setup.front is not None else metrics
    unknown = [m for m in front_metrics if m not in metrics]
    warnings = []
    if unknown and rows:
        warnings.append(f"front metric(s) {', '.join(unknown)} not returned by the evaluator (it returns {', '.join(metrics)})")
    front_dirs = {m: dirs.get(m, "max") for m in front_metrics if m in metrics}
    flat = [r["metrics"] for r in rows]
    best = {m: (rows[b]["index"] if (b := best_index(flat, m, dirs[m])) is not None else None) for m in metrics}
    front = [rows[i]["index"] for i in pareto_front(flat, front_dirs)] if len(front_dirs) >= 2 else []
    if len(front_dirs) < 2 and rows:
        warnings.append("a Pareto front needs two or more metrics; the evaluator returned " + ", ".join(metrics))
    notes = []
    if interrupted is not None:
        notes.append(f"interrupted: {len(rows)} of {total} point(s) done" + (f"; state saved to {state_path} (rerun with "
                     f"--state {state_path} to resume)" if state_path is not None else " (give --state FILE to resume)"))  # fmt: skip
    skipped = [r for r in rows if r.get("skipped")]
    if skipped:
        warnings.append(f"{len(skipped)} grid point(s) skipped, not merged (e.g. point {skipped[0]['index']}: {skipped[0]['skipped']})")
    resumed = sum(bool(r.get("resumed")) for r in rows)
    if resumed:
        notes.append(f"resumed {resumed} point(s) from {state_path}")
    return SweepResult(
        recipe=str(setup.recipe.path), recipe_sha256=setup.recipe.sha256, evaluator=setup.evaluator_spec, device=str(dev),
        axes=[{"path": a.path, "values": a.values} for a in setup.axes], metrics=metrics, directions=dirs, front_metrics=list(front_dirs),
        points=rows, total=total, best=best, front=front, surrogate=surrogate, interrupted=interrupted is not None,
        state=str(state_path) if state_path is not None else None, seconds=seconds, inputs_opened=opened,
        model_folder=str(setup.model_folder) if setup.model_folder is not None else None,
        warnings=warnings, notes=notes, stop=interrupted,
    )  # fmt: skip


__all__ = ["STATE_FORMAT", "SweepSetup", "load_state", "prepare_sweep", "run_sweep", "save_state"]
