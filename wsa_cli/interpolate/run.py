"""One interpolation run: open both checkpoints, prepare each mode's endpoints, walk the path.

With an evaluator every alpha's model is materialised (an evaluator takes a state dict): each
mode's two prepared endpoints are held once, the model at each alpha is built from them with one
new tensor per key (the endpoint tensors themselves at alpha 0 and 1), evaluated, and dropped.
Peak memory is about three models. Without an evaluator the data-free diagnostics stream one
tensor at a time.

Example:
    >>> res = run_interpolation("a.safetensors", "b.safetensors", alphas=[0, 0.5, 1],
    ...                         modes=["naive"], evaluator=None)  # doctest: +SKIP
    >>> res.modes[0].summary["std_shrinkage"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsa_cli.interpolate.barrier import BARRIER_METRICS, find_alpha, summarize_curve
from wsa_cli.interpolate.diagnostics import DIAGNOSTIC_METRICS, path_diagnostics
from wsa_cli.interpolate.evaluators import Evaluator
from wsa_cli.interpolate.modes import MODES, Mode, ModeOptions, get_mode
from wsa_cli.interpolate.path import LazyStateDict, check_compatible, interpolate_state
from wsa_cli.errors import InvalidValueError
from wsa_cli.io import open_checkpoint
from wsa_cli.progress import ProgressFn, announce_total
from wsa_cli.results import GateGroup, Result, Table, View
from wsa_cli.scope.kinds import is_bn_running_stat

#: ``kind`` of a result: measured with an evaluator, or weight statistics only.
KIND_EVAL = "evaluation"
KIND_DIAGNOSTICS = "data-free-diagnostics"

#: Version of the JSON output (pinned by tests/golden/); its format tag is "wsa-interpolate".
RESULT_VERSION = 1



@dataclass
class ModeCurve:
    """The curve and summary of one mode."""

    mode: str
    description: str
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    #: Per-layer detail (data-free diagnostics only).
    layers: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mode": self.mode, "description": self.description, "curve": self.rows, "summary": self.summary}
        if self.layers is not None:
            d["layers"] = self.layers
        return d


@dataclass
class InterpolationResult(Result):
    """Everything ``wsa interpolate`` reports: curves and barriers per mode, as JSON, CSV and tables."""

    command = "interpolate"
    version = RESULT_VERSION

    kind: str
    a: str
    b: str
    alphas: list[float]
    evaluator: str | None
    device: str
    modes: list[ModeCurve]
    #: Curve columns after ``alpha``, in display order.
    metrics: list[str]
    scope: dict[str, Any]

    @property
    def summary_metrics(self) -> tuple[str, ...]:
        return BARRIER_METRICS if self.kind == KIND_EVAL else DIAGNOSTIC_METRICS

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "a": self.a,
            "b": self.b,
            "evaluator": self.evaluator,
            "device": self.device,
            "alphas": self.alphas,
            "metrics": self.metrics,
            "scope": self.scope,
            "warnings": self.warnings,
            "modes": [m.to_dict() for m in self.modes],
        }

    def rows(self) -> tuple[list[str], list[dict[str, Any]]]:
        from wsa_cli.interpolate.report import csv_columns, csv_rows

        return csv_columns(self), csv_rows(self)

    def render(self) -> list[View]:
        from wsa_cli.interpolate.report import curve_table, summary_table

        data_free = self.kind != KIND_EVAL
        label = "DATA-FREE DIAGNOSTICS (weight statistics, not loss)" if data_free else f"evaluator {self.evaluator}"
        cols, rows = curve_table(self)
        # narrow terminals keep alpha and each mode's loss (or, data-free, its std ratio); accuracy and KL go last
        keep = [c for c in cols if c == "alpha" or c.endswith((" loss", " min_std_ratio"))]
        second = [c for c in cols if c.endswith((" accuracy", " max_scope_kl"))]
        optional = [c for c in reversed(cols) if c not in keep and c not in second] + list(reversed(second))
        curve = Table(f"{Path(self.a).name} -> {Path(self.b).name}: {label}", cols, rows, optional=optional)
        cols, rows = summary_table(self)
        caption = (
            "std shrinkage = 1 - min std(W_alpha) / line between endpoint stds; scope KL to the pair's target scope"
            if data_free
            else "barrier = max(loss - line between endpoint losses); vs mean = max loss - mean endpoint loss; "
            "mid = at alpha 0.5; vs inputs = against the input checkpoints' losses"
        )
        optional = ["at ", "at", "layer", "vs mean", "mid", "vs inputs", "acc 0", "acc 1", "loss 0", "loss 1", "distance", "cosine"]
        return [curve, Table("summary", cols, rows, caption=caption, optional=optional)]

    def gate_values(self) -> list[GateGroup]:
        """Summary metrics per mode: a gate ``MODE.METRIC`` checks one mode, ``METRIC`` every mode."""
        return [GateGroup(m.mode, f"mode {m.mode}", {k: m.summary.get(k) for k in self.summary_metrics}) for m in self.modes]


def gate_metrics(mode_names: Sequence[str]) -> list[str]:
    """Every metric name a gate may use: the barrier and diagnostic metrics, plain and per mode.

    Example:
        >>> "naive.loss_barrier" in gate_metrics(["naive"])
        True
    """
    base = (*BARRIER_METRICS, *DIAGNOSTIC_METRICS)
    return [*base, *(f"{m}.{k}" for m in mode_names for k in base)]


def bn_stat_keys(keys: Sequence[str]) -> list[str]:
    """BatchNorm running-statistics keys (``*.running_mean`` / ``*.running_var``).

    Example:
        >>> bn_stat_keys(["bn1.weight", "bn1.running_mean", "bn1.running_var"])
        ['bn1.running_mean', 'bn1.running_var']
    """
    return [k for k in keys if is_bn_running_stat(k)]


def scope_summary(opts: ModeOptions) -> dict[str, Any]:
    """The scope options as plain JSON values (for the report)."""
    s = opts.scope
    target = s.target
    if not isinstance(target, (str, int)):
        target = str(target) if isinstance(target, Path) else getattr(target, "to_dict", lambda: str(target))()
    return {
        "fusion": s.fusion,
        "target": target,
        "rescale": s.rescale,
        "weights": s.weights,
        "include": list(s.selector.include),
        "exclude": list(s.selector.exclude),
    }


def _materialize(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return sd if isinstance(sd, dict) else {k: sd[k] for k in sd}


def _metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        for k in row:
            if k != "alpha" and k not in cols:
                cols.append(k)
    first = [c for c in ("loss", "accuracy") if c in cols]
    return first + [c for c in cols if c not in first]


def run_interpolation(
    a_path: str | Path,
    b_path: str | Path,
    *,
    alphas: Sequence[float],
    modes: Sequence[str | Mode],
    options: ModeOptions | None = None,
    evaluator: Evaluator | None = None,
    progress: ProgressFn | None = None,
    container_key: str | None = None,
    strip_prefix: str | None = None,
    low_memory: bool = False,
) -> InterpolationResult:
    """Interpolate between two checkpoints under each mode and summarise the barriers.

    ``alphas`` must contain 0 and 1 (see :func:`~wsa_cli.interpolate.alphas.parse_alphas`).
    ``progress(n, label)`` is called after each evaluation (or each tensor, data-free).
    ``low_memory``: do not hold the endpoints; re-read (and re-align) them tensor by tensor for
    every alpha, so peak memory is about one model (modes that return in-memory endpoints, such
    as the permutation modes, still hold them).
    """
    opts = dataclasses.replace(options or ModeOptions(), cache={})  # work shared by this run's modes only
    mode_objs = [m if isinstance(m, Mode) else get_mode(m) for m in modes]
    if not mode_objs:
        raise InvalidValueError("no interpolation mode given; choose from " + ", ".join(MODES), option="modes")
    alpha_list = [float(x) for x in alphas]
    summarize_curve(alpha_list, None, None)  # validates that 0 and 1 are on the grid
    ra = open_checkpoint(a_path, container_key=container_key, strip_prefix=strip_prefix)
    try:
        rb = open_checkpoint(b_path, container_key=container_key, strip_prefix=strip_prefix)
    except BaseException:
        ra.close()
        raise
    with ra, rb:
        check_compatible(ra, rb)
        announce_total(progress, _steps(ra, mode_objs, len(alpha_list), evaluator is not None))
        warnings: list[str] = []
        bn_keys = bn_stat_keys(ra.keys())
        recal = evaluator is not None and evaluator.recalibrate_bn
        if bn_keys and not recal:
            how = "pass --recalibrate-bn to re-estimate them" if evaluator is not None else "an evaluator with --recalibrate-bn can re-estimate them"
            warnings.append(
                f"the checkpoints hold BatchNorm running statistics ({len(bn_keys)} tensors, e.g. {bn_keys[0]}); "
                f"interpolated running statistics may overstate the barrier; {how}"
            )
        # one lazy view per checkpoint for the whole run: modes may cache work keyed on them
        la, lb = LazyStateDict(ra), LazyStateDict(rb)
        if evaluator is None:
            kind = KIND_DIAGNOSTICS
            curves = [_diagnose_mode(mode, la, lb, alpha_list, opts, progress) for mode in mode_objs]
            metrics = _metric_columns(curves[0].rows)
        else:
            kind = KIND_EVAL
            raw = {mode.name: _evaluate_mode(mode, la, lb, alpha_list, opts, evaluator, progress, low_memory) for mode in mode_objs}
            inputs = _input_losses(raw, alpha_list, ra, rb, evaluator, opts, progress)
            curves, metrics = _summarize_modes(mode_objs, raw, alpha_list, inputs)
            warnings += barrier_caveats(curves)
        return InterpolationResult(
            kind=kind,
            a=str(a_path),
            b=str(b_path),
            alphas=alpha_list,
            evaluator=None if evaluator is None else evaluator.name,
            device=str(opts.device),
            modes=curves,
            metrics=metrics,
            scope=scope_summary(opts),
            warnings=warnings,
        )


#: ``barrier_caveats`` thresholds: an accuracy drop worth a warning, a loss barrier "about 0", far-apart endpoints.
ACC_DROP_WARN, LOSS_ZERO, ENDPOINT_RATIO = 0.05, 0.01, 2.0


def barrier_caveats(curves: Sequence[ModeCurve]) -> list[str]:
    """Warnings where the headline ``loss_barrier`` misleads: accuracy falls while the loss barrier
    is about 0 (e.g. non-IID endpoints, each bad on the other's classes), or the endpoint losses
    are far apart (the line between them hides a sag); which figure to gate on then.

    Example:
        >>> c = ModeCurve("naive", "", [], {"loss_0": 2.0, "loss_1": 0.5, "loss_barrier": 0.0, "acc_barrier": 0.2})
        >>> [w.split(":")[0] for w in barrier_caveats([c])]
        ['mode naive', 'mode naive']
    """
    out = []
    for c in curves:
        s = c.summary
        l0, l1, lb, ab = s.get("loss_0"), s.get("loss_1"), s.get("loss_barrier"), s.get("acc_barrier")
        if ab is not None and lb is not None and ab > ACC_DROP_WARN and lb < LOSS_ZERO:
            out.append(f"mode {c.mode}: accuracy falls {100 * ab:.0f} points below the line between the endpoints while "
                       f"loss_barrier is {lb:.3g}: gate on acc_barrier (or loss_barrier_mean) for this pair")  # fmt: skip
        if l0 is not None and l1 is not None and min(l0, l1) > 0 and max(l0, l1) / min(l0, l1) > ENDPOINT_RATIO:
            out.append(f"mode {c.mode}: the endpoint losses are far apart ({l0:.3g} and {l1:.3g}); loss_barrier is measured "
                       "against the line between them, loss_barrier_mean against their mean")  # fmt: skip
    return out


def _diagnose_mode(
    mode: Mode, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alphas: list[float], opts: ModeOptions,
    progress: ProgressFn | None,
) -> ModeCurve:
    """Data-free: prepare the endpoints, then stream the diagnostics tensor by tensor."""
    pa, pb = mode.prepare(a, b, opts)
    diag = path_diagnostics(pa, pb, alphas, opts.scope, opts.device, progress=progress)
    return ModeCurve(mode.name, mode.description, diag.rows, diag.summary, [lp.to_dict() for lp in diag.layers])


def _evaluate_mode(
    mode: Mode, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alphas: list[float], opts: ModeOptions,
    evaluator: Evaluator, progress: ProgressFn | None, low_memory: bool = False,
) -> list[dict[str, float]]:
    """Evaluate the model at every alpha: endpoints held once (or re-read lazily with
    ``low_memory``), one path model alive at a time."""
    pa, pb = mode.prepare(a, b, opts)
    ea, eb = (pa, pb) if low_memory else (_materialize(pa), _materialize(pb))
    del pa, pb
    out = []
    for alpha in alphas:
        state = interpolate_state(ea, eb, alpha)
        out.append(evaluator(state, opts.device, where=f"mode {mode.name}, alpha {alpha:g}"))
        del state  # free this alpha's model before building the next
        if progress is not None:
            progress(1, f"{mode.name} alpha={alpha:g}")
    return out


def _summarize_modes(
    modes: Sequence[Mode], raw: Mapping[str, list[dict[str, float]]], alphas: list[float],
    inputs: tuple[float | None, float | None],
) -> tuple[list[ModeCurve], list[str]]:
    """Curves with a column for every metric any evaluation returned, and each mode's barriers."""
    metrics = _metric_columns([m for name in raw for m in raw[name]])
    curves = []
    for mode in modes:
        points = raw[mode.name]
        rows = [{"alpha": a, **{k: m.get(k) for k in metrics}} for a, m in zip(alphas, points, strict=True)]
        loss = [m.get("loss") for m in points]
        acc = [m.get("accuracy") for m in points]
        summary = summarize_curve(
            alphas,
            loss if any(v is not None for v in loss) else None,
            acc if any(v is not None for v in acc) else None,
            input_losses=inputs,
        )
        curves.append(ModeCurve(mode.name, mode.description, rows, summary.to_dict()))
    return curves, metrics


def _input_losses(
    raw: Mapping[str, list[dict[str, float]]],
    alphas: list[float],
    ra: Any,
    rb: Any,
    evaluator: Evaluator,
    opts: ModeOptions,
    progress: ProgressFn | None,
) -> tuple[float | None, float | None]:
    """Losses of the unmodified inputs (for ``loss_barrier_inputs``): from ``naive`` if it ran."""
    i0, i1 = find_alpha(alphas, 0.0), find_alpha(alphas, 1.0)
    if "naive" in raw:
        return raw["naive"][i0].get("loss"), raw["naive"][i1].get("loss")  # type: ignore[index]
    out = []
    for reader, name in ((ra, "A"), (rb, "B")):
        state = reader.state_dict()
        out.append(evaluator(state, opts.device, where=f"input {name}").get("loss"))
        del state
        if progress is not None:
            progress(1, f"input {name}")
    return out[0], out[1]


def count_steps(
    a_path: str | Path,
    *,
    modes: Sequence[str | Mode],
    n_alphas: int,
    with_evaluator: bool,
    container_key: str | None = None,
    strip_prefix: str | None = None,
) -> int:
    """How many ``progress`` calls :func:`run_interpolation` will make (for a progress bar)."""
    with open_checkpoint(a_path, container_key=container_key, strip_prefix=strip_prefix) as r:
        return _steps(r, modes, n_alphas, with_evaluator)


def _steps(reader: Any, modes: Sequence[str | Mode], n_alphas: int, with_evaluator: bool) -> int:
    """The progress calls of a run over ``reader`` (the first checkpoint): evaluations, or floating tensors per mode."""
    names = [m.name if isinstance(m, Mode) else m for m in modes]
    if with_evaluator:
        return len(names) * n_alphas + (0 if "naive" in names else 2)
    return len(names) * sum(1 for i in reader.infos() if i.dtype.is_floating_point)
