"""``wsa inspect`` as a library call: scope tables of one or more checkpoints, compared, with gates.

:func:`inspect_models` opens the checkpoints, measures their layers one tensor at a time
(:func:`~wsa_cli.inspection.report.inspect_checkpoint`), compares them when there are several
(:func:`~wsa_cli.inspection.report.compare_reports`), adds the KL to a target scope when one is
given, sorts, and returns an :class:`InspectResult` that knows its JSON, CSV, tables and the
metrics ``--fail-above`` gates on. :func:`inspect_histograms` draws one layer's histogram.

Example:
    >>> result = inspect_models(["model.safetensors"])  # doctest: +SKIP
    >>> result.metrics["nonfinite"]  # doctest: +SKIP
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import InvalidValueError
from wsa_cli.fusion.scopefile import ScopeTable, load_scope_file
from wsa_cli.inspection.report import Comparison, Histogram, ModelReport, compare_reports, inspect_checkpoint, kl_to_target
from wsa_cli.inspection.report import layer_histogram
from wsa_cli.io import open_checkpoint
from wsa_cli.progress import ProgressFn, announce_total
from wsa_cli.results import GateGroup, Result, Table, Text, View, format_number
from wsa_cli.scope.gaussian import Scope
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.threads import choose_threads, compute_threads

#: Gate metrics of one checkpoint, and of several.
SINGLE_METRICS = ("nonfinite", "constant_layers", "kl_to_target")
MULTI_METRICS = (*SINGLE_METRICS, "kl_to_fused", "std_ratio", "mean_shift", "mismatches")
TENSOR_COLUMNS = (
    "key", "kind", "shape", "dtype", "numel", "mean", "std", "min", "max", "zero_fraction",
    "nan_count", "inf_count", "skewness", "excess_kurtosis", "kl_to_target",
)  # fmt: skip
#: Columns rows may be sorted by, for one checkpoint and for several.
TENSOR_SORTS = ("key", "numel", "mean", "std", "min", "max", "zero_fraction", "skewness", "excess_kurtosis", "kl_to_target")
COMPARE_SORTS = ("key", "max_kl", "std_ratio", "mean_shift", "fused_std", "max_kl_to_target")


@dataclass(frozen=True)
class InspectOptions:
    """What to measure and how to compare (every field has the CLI's default).

    Fields:
        selector: which tensors are layers. all_tensors: measure every tensor, not only layers.
        target: a fixed :class:`Scope`, a :class:`ScopeTable` or a scope-file path; adds KL to it.
        fusion, weights: how several checkpoints' scopes are fused for the comparison.
        sort, top: row order (default: file order for one checkpoint, ``max_kl`` for several) and count.
        container_key, strip_prefix: where the state dict is inside a pickle, a key prefix to remove.
    """

    selector: LayerSelector = field(default_factory=LayerSelector)
    all_tensors: bool = False
    target: Scope | ScopeTable | Path | None = None
    fusion: str = "moments"
    weights: Sequence[float] | None = None
    sort: str | None = None
    top: int | None = None
    container_key: str | None = None
    strip_prefix: str | None = None


@dataclass
class InspectResult(Result):
    """Per-checkpoint tensor statistics, the comparison of several, and the gate metrics."""

    command = "inspect"

    reports: list[ModelReport]
    tensor_rows: list[list[dict[str, Any]]]  # per checkpoint, its (sorted, cut) rows
    comparison: Comparison | None
    layer_rows: list[dict[str, Any]]  # comparison rows (several checkpoints), sorted and cut
    target: Scope | ScopeTable | None
    metrics: dict[str, float | None]

    @property
    def has_target(self) -> bool:
        return self.target is not None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"checkpoints": [_checkpoint_json(rep, rows) for rep, rows in zip(self.reports, self.tensor_rows, strict=True)]}
        if self.comparison is not None:
            body["comparison"] = {
                "fusion": self.comparison.fusion,
                "weights": self.comparison.weights,
                "layers": self.layer_rows,
                "mismatches": self.comparison.mismatches,
                **({"copied_by_merge": self.comparison.copied_by_merge} if self.comparison.copied_by_merge else {}),
            }
        body["target"] = _target_json(self.target)
        body["metrics"] = self.metrics
        return body

    def rows(self) -> tuple[list[str], list[dict[str, Any]]]:
        if self.comparison is None:
            return list(TENSOR_COLUMNS), self.tensor_rows[0]
        return _flatten_comparison(self.layer_rows, len(self.reports), self.has_target)

    def render(self) -> list[View]:
        if self.comparison is None:
            return [_single_table(self.reports[0], self.tensor_rows[0], self.has_target)]
        views: list[View] = [_comparison_table(self.reports, self.layer_rows, self.has_target)]
        if self.comparison.mismatches:
            views.append(Table("keys that do not line up", ["key", "problem"], [[m["key"], m["problem"]] for m in self.comparison.mismatches]))
        if self.comparison.copied_by_merge:
            views.append(Table("int/bool buffers not in every checkpoint (wsa merge copies them from the first that has them)",
                               ["key", "problem"], [[m["key"], m["problem"]] for m in self.comparison.copied_by_merge]))  # fmt: skip
        return views

    def gate_values(self) -> list[GateGroup]:
        return [GateGroup(None, "inspect", self.metrics)]


@dataclass
class HistogramResult(Result):
    """One layer's histogram in each checkpoint, with its fitted Gaussian."""

    command = "inspect"

    histograms: list[tuple[str, Histogram]]

    def to_dict(self) -> dict[str, Any]:
        return {"histograms": [{"path": p, **h.to_dict()} for p, h in self.histograms]}

    def rows(self) -> tuple[list[str], list[dict[str, Any]]]:
        rows = [
            {"path": p, "key": h.key, "bin_low": h.edges[i], "bin_high": h.edges[i + 1], "count": c, "gaussian": h.gaussian[i]}
            for p, h in self.histograms
            for i, c in enumerate(h.counts)
        ]
        return ["path", "key", "bin_low", "bin_high", "count", "gaussian"], rows

    def render(self) -> list[View]:
        return [Text(render_histogram(p, h)) for p, h in self.histograms]


def gate_metrics(n_checkpoints: int) -> tuple[str, ...]:
    """The metrics a gate may name for this many checkpoints.

    Example:
        >>> "mismatches" in gate_metrics(2), "mismatches" in gate_metrics(1)
        (True, False)
    """
    return MULTI_METRICS if n_checkpoints > 1 else SINGLE_METRICS


def _resolve_target(target: Scope | ScopeTable | Path | str | None) -> Scope | ScopeTable | None:
    if target is None or isinstance(target, (Scope, ScopeTable)):
        return target
    return load_scope_file(Path(target))


def inspect_models(
    paths: Sequence[str | Path],
    options: InspectOptions | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    threads: int | None = None,
) -> InspectResult:
    """Measure and compare the layer scopes of ``paths`` (the library behind ``wsa inspect``).

    Reads one tensor at a time. Raises :class:`InvalidValueError` for a sort column that does
    not exist (``option="sort"``), before any file is opened. ``threads``: compute threads
    (``None``: :func:`wsa_cli.threads.choose_threads` decides).
    """
    opts = options or InspectOptions()
    multi = len(paths) > 1
    choices = COMPARE_SORTS if multi else TENSOR_SORTS
    if opts.sort is not None and opts.sort not in choices:
        raise InvalidValueError(f"choose from {', '.join(choices)}", option="sort", value=opts.sort)
    tgt = _resolve_target(opts.target)
    readers = []
    try:
        for p in paths:
            readers.append(open_checkpoint(p, container_key=opts.container_key, strip_prefix=opts.strip_prefix))
        announce_total(progress, sum(len(r) for r in readers))
        with compute_threads(choose_threads("inspect", device=torch.device(device).type, requested=threads)):
            reports = [inspect_checkpoint(r, selector=opts.selector, all_tensors=opts.all_tensors, device=device, progress=progress)
                       for r in readers]  # fmt: skip
    finally:
        for r in readers:
            r.close()
    tensor_rows = [[{**t.to_dict(), "kl_to_target": kl_to_target(t, tgt)} for t in rep.tensors] for rep in reports]
    comparison = compare_reports(reports, fusion=opts.fusion, weights=opts.weights, target=tgt) if multi else None
    warnings = []
    for rep in reports:
        if rep.summary["nan_values"] or rep.summary["inf_values"]:
            warnings.append(f"{rep.path}: {rep.summary['nan_values']} NaN and {rep.summary['inf_values']} Inf values "
                            "(excluded from the statistics)")  # fmt: skip
    notes = [f"note: {rep.path}: no tensor counts as a layer (floating, ndim >= 2); use --all or --include"
             for rep in reports if not rep.summary["layers"]]  # fmt: skip
    metrics = _metrics(reports, tensor_rows, comparison, tgt is not None)
    layer_rows: list[dict[str, Any]] = []
    if comparison is None:
        tensor_rows[0] = sort_rows(tensor_rows[0], opts.sort, default=None)[: opts.top]
    else:
        layer_rows = [c.to_dict() for c in comparison.layers]
        for row in layer_rows:
            row["max_kl_to_target"] = max(row["kl_to_target"]) if "kl_to_target" in row else None
        layer_rows = sort_rows(layer_rows, opts.sort, default="max_kl")[: opts.top]
        if comparison.mismatches:
            first = comparison.mismatches[0]
            warnings.append(f"{len(comparison.mismatches)} key(s) do not line up across the checkpoints "
                            f"(first: {first['key']}: {first['problem']})")  # fmt: skip
        if comparison.copied_by_merge:
            names = ", ".join(c["key"] for c in comparison.copied_by_merge[:5])
            warnings.append(f"{len(comparison.copied_by_merge)} int/bool buffer(s) are not in every checkpoint ({names}): not "
                            "mismatches; wsa merge copies them from the first checkpoint that has them")  # fmt: skip
    return InspectResult(reports, tensor_rows, comparison, layer_rows, tgt, metrics, warnings=warnings, notes=notes)


def inspect_histograms(
    paths: Sequence[str | Path],
    key: str,
    *,
    bins: int = 30,
    clip_percent: float | None = 0.1,
    device: torch.device | str = "cpu",
    container_key: str | None = None,
    strip_prefix: str | None = None,
) -> HistogramResult:
    """The weight histogram of tensor ``key`` in every checkpoint, with the fitted Gaussian per bin.

    ``clip_percent``: bins cover the ``clip_percent``-th to ``(100 - clip_percent)``-th percentile;
    the values outside are counted, not binned (None or 0: min..max).
    """
    hists = []
    for p in paths:
        with open_checkpoint(p, container_key=container_key, strip_prefix=strip_prefix) as r:
            if key not in r:
                raise InvalidValueError(f"no tensor {key!r} (list every key with {{opt:all_tensors}})",
                                        option="histogram", path=r.path)  # fmt: skip
            hists.append((str(r.path), layer_histogram(r.get(key), key, bins, device, clip_percent=clip_percent or None)))
    return HistogramResult(hists)


def _metrics(reports: list[ModelReport], tensor_rows: list[list[dict]], comparison: Comparison | None,
             has_target: bool) -> dict[str, float | None]:  # fmt: skip
    kl_t = [r["kl_to_target"] for rows in tensor_rows for r in rows if r["is_layer"] and r["kl_to_target"] is not None]
    m: dict[str, float | None] = {
        "nonfinite": float(sum(int(rep.summary["nan_values"]) + int(rep.summary["inf_values"]) for rep in reports)),
        "constant_layers": float(sum(len(rep.summary["constant_layers"]) for rep in reports)),
        "kl_to_target": (max(kl_t) if kl_t else None) if has_target else None,
    }
    if comparison is not None:
        layers = comparison.layers
        m["kl_to_fused"] = max((c.max_kl for c in layers), default=None)
        ratios = [c.std_ratio if c.std_ratio is not None else math.inf for c in layers]
        m["std_ratio"] = max(ratios, default=None)
        shifts = [c.mean_shift for c in layers if c.mean_shift is not None]
        m["mean_shift"] = max(shifts, default=None)
        m["mismatches"] = float(len(comparison.mismatches))
    return m


def sort_rows(rows: Sequence[dict[str, Any]], field_name: str | None, *, default: str | None) -> list[dict[str, Any]]:
    """Rows sorted by ``field_name`` (``key`` ascending, numbers descending, missing values last).

    ``None`` for both ``field_name`` and ``default`` keeps the original (file) order.

    Example:
        >>> [r["k"] for r in sort_rows([{"k": "a", "x": 1.0}, {"k": "b", "x": 3.0}, {"k": "c"}], "x", default=None)]
        ['b', 'a', 'c']
    """
    name = field_name or default
    if name is None:
        return list(rows)
    if name == "key":
        return sorted(rows, key=lambda r: str(r.get("key")))

    def number(r: dict[str, Any]) -> float | None:
        v = r.get(name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) else None

    present = [r for r in rows if number(r) is not None]
    missing = [r for r in rows if number(r) is None]
    return sorted(present, key=lambda r: number(r), reverse=True) + missing  # type: ignore[arg-type, return-value]


def _checkpoint_json(report: ModelReport, rows: list[dict]) -> dict[str, Any]:
    return {"path": report.path, "format": report.format, "summary": report.summary, "skipped": report.skipped, "tensors": rows}


def _target_json(tgt: Scope | ScopeTable | None) -> Any:
    if tgt is None:
        return None
    if isinstance(tgt, Scope):
        return tgt.to_dict()
    return {"scope_file_layers": len(tgt.layers), "sources": tgt.sources}


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``.

    Example:
        >>> human_bytes(1536), human_bytes(12)
        ('1.5 KiB', '12 B')
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _single_table(report: ModelReport, rows: list[dict], has_target: bool) -> Table:
    s = report.summary
    caption = (
        f"{s['tensors']} tensors, {s['layers']} layers, {format_number(s['parameters'])} parameters "
        f"({format_number(s['layer_parameters'])} in layers), {human_bytes(int(s['bytes']))}; "  # type: ignore[call-overload]
        f"dtypes {', '.join(f'{k}:{v}' for k, v in s['dtypes'].items())}"  # type: ignore[attr-defined]
    )
    if s["constant_layers"]:
        caption += f"; constant layers: {', '.join(s['constant_layers'])}"  # type: ignore[arg-type]
    cols = ["key", "kind", "shape", "dtype", "mean", "std", "min", "max", "zeros", "skew", "ex.kurt", "nan/inf"]
    if has_target:
        cols.append("KL->target")
    table_rows = []
    for r in rows:
        row = [r["key"], r["kind"], r["shape"], r["dtype"], r["mean"], r["std"], r["min"], r["max"],
               f"{100 * r['zero_fraction']:.1f}%", r["skewness"], r["excess_kurtosis"], f"{r['nan_count']}/{r['inf_count']}"]  # fmt: skip
        if has_target:
            row.append(r["kl_to_target"])
        table_rows.append(row)
    optional = ["skew", "ex.kurt", "zeros", "nan/inf", "min", "max", "kind", "dtype", "shape"]
    return Table(f"{report.path} ({report.format})", cols, table_rows, caption=caption, optional=optional)


def _comparison_table(reports: list[ModelReport], rows: list[dict], has_target: bool) -> Table:
    k = len(reports)
    cols = ["key", "shape"] + [f"std[{i}]" for i in range(k)] + [f"mean[{i}]" for i in range(k)]
    cols += ["fused std", "std ratio", "mean shift", "max KL"] + (["max KL->target"] if has_target else [])
    table_rows = []
    for r in rows:
        row = [r["key"], r["shape"], *r["stds"], *r["means"], r["fused_std"], r["std_ratio"], r["mean_shift"], r["max_kl"]]
        if has_target:
            row.append(r["max_kl_to_target"])
        table_rows.append(row)
    legend = "; ".join(f"[{i}] {rep.path}" for i, rep in enumerate(reports))
    optional = [*(f"mean[{i}]" for i in range(k)), "mean shift", "fused std", "shape", *(f"std[{i}]" for i in range(k))]
    return Table("layer scopes side by side (ranked)", cols, table_rows, caption=legend, optional=optional)


def _flatten_comparison(rows: list[dict], k: int, has_target: bool) -> tuple[list[str], list[dict]]:
    columns = ["key", "kind", "shape"]
    columns += [f"{name}_{i}" for name in ("mean", "std", "kl_to_fused") for i in range(k)]
    columns += ["fused_mean", "fused_std", "std_ratio", "mean_shift", "max_kl"]
    if has_target:
        columns += [f"kl_to_target_{i}" for i in range(k)]
    flat = []
    for r in rows:
        d = {c: r.get(c) for c in ("key", "kind", "shape", "fused_mean", "fused_std", "std_ratio", "mean_shift", "max_kl")}
        for i in range(k):
            d[f"mean_{i}"], d[f"std_{i}"], d[f"kl_to_fused_{i}"] = r["means"][i], r["stds"][i], r["kl_to_fused"][i]
            if has_target:
                d[f"kl_to_target_{i}"] = r["kl_to_target"][i]
        flat.append(d)
    return columns, flat


def render_histogram(path: str, h: Histogram, width: int = 50) -> str:
    """Text histogram: one row per bin, '#' bars for the counts, '|' where the fitted Gaussian sits."""
    lines = [f"{path}: {h.key}  N(mean={format_number(h.scope.mean)}, std={format_number(h.scope.std)}), {h.finite:,} finite values"]
    if not h.counts:
        return lines[0] + "\n  (no finite values)\n"
    peak = max(max(h.counts), max(h.gaussian), 1)
    for i, count in enumerate(h.counts):
        bar = int(round(width * count / peak))
        mark = int(round(width * h.gaussian[i] / peak))
        cells = ["#" if j < bar else " " for j in range(width + 1)]
        cells[min(mark, width)] = "|" if mark >= bar else "+"
        lines.append(f"  {h.edges[i]:>+11.4e} {''.join(cells)} {count}")
    if h.below or h.above:
        lines.append(f"  {h.below:,} values below and {h.above:,} above the range shown ({h.clip_percent:g}th to {100 - (h.clip_percent or 0):g}th percentile)")
    lines.append("  '#' observed count per bin, '|' count predicted by the fitted Gaussian ('+' inside the bar)")
    return "\n".join(lines) + "\n"
