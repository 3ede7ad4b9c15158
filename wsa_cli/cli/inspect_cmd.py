"""``wsa inspect``: per-layer scope table of one checkpoint, or several side by side."""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

import typer

from wsa_cli.cli.common import (
    DeviceOpt,
    ExcludeOpt,
    FailAboveOpt,
    FormatOpt,
    IncludeOpt,
    JsonOpt,
    OutputFormat,
    QuietOpt,
    check_gates,
    fmt_num,
    note,
    parse_gates,
    parse_weights,
    print_table,
    progress,
    resolve_format,
    sort_rows,
    to_csv,
    to_json,
    write_stdout,
)
from wsa_cli.errors import UsageError

SINGLE_METRICS = ("nonfinite", "constant_layers", "kl_to_target")
MULTI_METRICS = (*SINGLE_METRICS, "kl_to_fused", "std_ratio", "mean_shift", "mismatches")
TENSOR_COLUMNS = (
    "key", "kind", "shape", "dtype", "numel", "mean", "std", "min", "max", "zero_fraction",
    "nan_count", "inf_count", "skewness", "excess_kurtosis", "kl_to_target",
)  # fmt: skip
TENSOR_SORTS = ("key", "numel", "mean", "std", "min", "max", "zero_fraction", "skewness", "excess_kurtosis", "kl_to_target")
COMPARE_SORTS = ("key", "max_kl", "std_ratio", "mean_shift", "fused_std", "max_kl_to_target")


def command(
    checkpoints: Annotated[list[str], typer.Argument(help="Checkpoint files or folders (.safetensors, index.json, .pt/.bin/.ckpt).")],
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    all_tensors: Annotated[bool, typer.Option("--all", help="Measure every tensor, not only layers.")] = False,
    target: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--target", help="Target scope MEAN,STD (e.g. 0,0.05) or a scope file; adds KL to it."),
    ] = None,
    fusion: Annotated[str, typer.Option("--fusion", help="How scopes are fused for comparison: moments, precision, stats-mean.")] = "moments",
    weights: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--weights", help="Comma-separated model weights for fusion (default equal)."),
    ] = None,
    histogram: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--histogram", metavar="LAYER", help="Show LAYER's weight histogram with its fitted Gaussian."),
    ] = None,
    bins: Annotated[int, typer.Option("--bins", min=2, max=1000, help="Histogram bins.")] = 30,
    sort: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--sort", help="Sort rows by this column (numbers descending). Default: file order for one "
                     "checkpoint, max_kl for several."),
    ] = None,
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="Show only the first N rows after sorting.")] = None,  # noqa: UP007
    key: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--key", help="Entry holding the state dict inside a pickled checkpoint (e.g. state_dict, ema.model)."),
    ] = None,
    strip_prefix: Annotated[
        Optional[str],  # noqa: UP007
        typer.Option("--strip-prefix", help="Remove this prefix from every key (module. is always removed)."),
    ] = None,
    fail_above: FailAboveOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Show each layer's weight scope (mean, std, shape of the distribution) and compare checkpoints.

    One checkpoint: the scope table and a model summary. Several: scopes side by side, ranked by
    how much they disagree (KL to the fused scope, std ratio, mean shift), and any keys or shapes
    that do not line up. --fail-above METRIC=VALUE exits 1 when a metric exceeds VALUE; metrics:
    nonfinite, constant_layers, kl_to_target (one or more checkpoints); kl_to_fused, std_ratio,
    mean_shift, mismatches (several).
    """
    from wsa_cli.device import resolve_device
    from wsa_cli.fusion.scopefile import parse_target
    from wsa_cli.io import open_checkpoint
    from wsa_cli.inspection.report import compare_reports, inspect_checkpoint, layer_histogram
    from wsa_cli.scope.selection import LayerSelector

    out_fmt = resolve_format(fmt, as_json)
    multi = len(checkpoints) > 1
    gates = parse_gates(fail_above, MULTI_METRICS if multi else SINGLE_METRICS)
    sort_choices = COMPARE_SORTS if multi else TENSOR_SORTS
    if sort is not None and sort not in sort_choices:
        raise UsageError(f"--sort {sort!r}: choose from {', '.join(sort_choices)}")
    dev = resolve_device(device)
    selector = LayerSelector(include=tuple(include or ()), exclude=tuple(exclude or ()))
    tgt = parse_target(target) if target else None
    model_weights = parse_weights(weights, len(checkpoints))
    if any(g.metric == "kl_to_target" for g in gates) and tgt is None:
        raise UsageError("--fail-above kl_to_target=... needs --target")

    readers = [open_checkpoint(p, container_key=key, strip_prefix=strip_prefix) for p in checkpoints]
    try:
        if histogram is not None:
            hists = []
            for r in readers:
                if histogram not in r:
                    raise UsageError(f"--histogram: no tensor {histogram!r} (try `wsa inspect {r.path} --all`)", path=r.path)
                hists.append((str(r.path), layer_histogram(r.get(histogram), histogram, bins, dev)))
            _emit_histograms(hists, out_fmt)
            return
        total = sum(len(r) for r in readers)
        with progress(total, "inspect", quiet=quiet) as advance:
            reports = [inspect_checkpoint(r, selector=selector, all_tensors=all_tensors, device=dev, progress=advance) for r in readers]
    finally:
        for r in readers:
            r.close()

    from wsa_cli.inspection.report import kl_to_target

    tensor_rows = [
        [{**t.to_dict(), "kl_to_target": kl_to_target(t, tgt)} for t in rep.tensors] for rep in reports
    ]
    comparison = compare_reports(reports, fusion=fusion, weights=model_weights, target=tgt) if multi else None
    metrics = _metrics(reports, tensor_rows, comparison, tgt is not None)
    for rep in reports:
        if rep.summary["nan_values"] or rep.summary["inf_values"]:
            note(f"warning: {rep.path}: {rep.summary['nan_values']} NaN and {rep.summary['inf_values']} Inf values "
                 "(excluded from the statistics)", quiet=quiet)
        if not rep.summary["layers"]:
            note(f"note: {rep.path}: no tensor counts as a layer (floating, ndim >= 2); use --all or --include", quiet=quiet)

    if comparison is None:
        rows = sort_rows(tensor_rows[0], sort, default=None)[:top]
        payload: dict[str, Any] = {
            "command": "inspect",
            "checkpoints": [_checkpoint_json(reports[0], rows)],
            "target": _target_json(tgt),
            "metrics": metrics,
        }
        if out_fmt is OutputFormat.json:
            write_stdout(to_json(payload))
        elif out_fmt is OutputFormat.csv:
            write_stdout(to_csv(rows, TENSOR_COLUMNS))
        else:
            _print_single(reports[0], rows, tgt is not None)
    else:
        layer_rows = [c.to_dict() for c in comparison.layers]
        for row in layer_rows:
            row["max_kl_to_target"] = max(row["kl_to_target"]) if "kl_to_target" in row else None
        layer_rows = sort_rows(layer_rows, sort, default="max_kl")[:top]
        payload = {
            "command": "inspect",
            "checkpoints": [_checkpoint_json(rep, rows) for rep, rows in zip(reports, tensor_rows)],
            "comparison": {
                "fusion": comparison.fusion,
                "weights": comparison.weights,
                "layers": layer_rows,
                "mismatches": comparison.mismatches,
            },
            "target": _target_json(tgt),
            "metrics": metrics,
        }
        if out_fmt is OutputFormat.json:
            write_stdout(to_json(payload))
        elif out_fmt is OutputFormat.csv:
            flat, columns = _flatten_comparison(layer_rows, len(reports), tgt is not None)
            write_stdout(to_csv(flat, columns))
        else:
            _print_comparison(reports, layer_rows, comparison.mismatches, tgt is not None)
        if comparison.mismatches and out_fmt is not OutputFormat.table:
            note(f"warning: {len(comparison.mismatches)} key(s) do not line up across the checkpoints "
                 f"(first: {comparison.mismatches[0]['key']}: {comparison.mismatches[0]['problem']})", quiet=quiet)
    check_gates(gates, metrics, where="inspect")


def _metrics(reports: list, tensor_rows: list[list[dict]], comparison: Any, has_target: bool) -> dict[str, float | None]:
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


def _checkpoint_json(report: Any, rows: list[dict]) -> dict[str, Any]:
    return {
        "path": report.path,
        "format": report.format,
        "summary": report.summary,
        "skipped": report.skipped,
        "tensors": rows,
    }


def _target_json(tgt: Any) -> Any:
    from wsa_cli.scope.gaussian import Scope

    if tgt is None:
        return None
    if isinstance(tgt, Scope):
        return {"mean": tgt.mean, "std": tgt.std}
    return {"scope_file_layers": len(tgt.layers), "sources": tgt.sources}


def _print_single(report: Any, rows: list[dict], has_target: bool) -> None:
    s = report.summary
    caption = (
        f"{s['tensors']} tensors, {s['layers']} layers, {fmt_num(s['parameters'])} parameters "
        f"({fmt_num(s['layer_parameters'])} in layers), {_human_bytes(int(s['bytes']))}; "
        f"dtypes {', '.join(f'{k}:{v}' for k, v in s['dtypes'].items())}"
    )
    if s["constant_layers"]:
        caption += f"; constant layers: {', '.join(s['constant_layers'])}"
    cols = ["key", "kind", "shape", "dtype", "mean", "std", "min", "max", "zeros", "skew", "ex.kurt", "nan/inf"]
    if has_target:
        cols.append("KL->target")
    table_rows = []
    for r in rows:
        row = [r["key"], r["kind"], r["shape"], r["dtype"], r["mean"], r["std"], r["min"], r["max"],
               f"{100 * r['zero_fraction']:.1f}%", r["skewness"], r["excess_kurtosis"], f"{r['nan_count']}/{r['inf_count']}"]
        if has_target:
            row.append(r["kl_to_target"])
        table_rows.append(row)
    print_table(f"{report.path} ({report.format})", cols, table_rows, caption=caption)


def _print_comparison(reports: list, rows: list[dict], mismatches: list[dict], has_target: bool) -> None:
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
    print_table("layer scopes side by side (ranked)", cols, table_rows, caption=legend)
    if mismatches:
        print_table("keys that do not line up", ["key", "problem"], [[m["key"], m["problem"]] for m in mismatches])


def _flatten_comparison(rows: list[dict], k: int, has_target: bool) -> tuple[list[dict], list[str]]:
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
    return flat, columns


def _emit_histograms(hists: list[tuple[str, Any]], out_fmt: OutputFormat) -> None:
    if out_fmt is OutputFormat.json:
        write_stdout(to_json({"command": "inspect", "histograms": [{"path": p, **h.to_dict()} for p, h in hists]}))
        return
    if out_fmt is OutputFormat.csv:
        rows = [
            {"path": p, "key": h.key, "bin_low": h.edges[i], "bin_high": h.edges[i + 1], "count": c, "gaussian": h.gaussian[i]}
            for p, h in hists
            for i, c in enumerate(h.counts)
        ]
        write_stdout(to_csv(rows, ["path", "key", "bin_low", "bin_high", "count", "gaussian"]))
        return
    for path, h in hists:
        write_stdout(render_histogram(path, h))


def render_histogram(path: str, h: Any, width: int = 50) -> str:
    """Text histogram: one row per bin, '#' bars for the counts, '|' where the fitted Gaussian sits."""
    lines = [f"{path}: {h.key}  N(mean={fmt_num(h.scope.mean)}, std={fmt_num(h.scope.std)}), {h.finite:,} finite values"]
    if not h.counts:
        return lines[0] + "\n  (no finite values)\n"
    peak = max(max(h.counts), max(h.gaussian), 1)
    for i, count in enumerate(h.counts):
        bar = int(round(width * count / peak))
        mark = int(round(width * h.gaussian[i] / peak))
        cells = ["#" if j < bar else " " for j in range(width + 1)]
        cells[min(mark, width)] = "|" if mark >= bar else "+"
        lines.append(f"  {h.edges[i]:>+11.4e} {''.join(cells)} {count}")
    lines.append("  '#' observed count per bin, '|' count predicted by the fitted Gaussian ('+' inside the bar)")
    return "\n".join(lines) + "\n"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
