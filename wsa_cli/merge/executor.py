"""Run a merge plan, streaming tensor by tensor.

For each key, in the order of the first model: read that tensor from every model (a background
thread reads the next keys meanwhile, see :mod:`wsa_cli.io.prefetch`), move the K tensors to
the device, measure their scopes, fuse them into the target scope and rescale each model's
tensor onto it (layers only), combine them with the method, cast to the output dtype, move the
result back and write it. Then everything for that key is dropped. Peak memory is therefore a
few tensors per input model, never a whole model.

A layer's target scope depends only on that layer's K scopes (or a fixed scope / scope file), so
scopes are measured in the same pass as the merge: every input is read exactly once.

Output goes through :class:`~wsa_cli.io.SafetensorsWriter`: atomic (temp + rename), sharded with
a Hugging Face index when asked, provenance in the metadata, and a JSON merge report committed with
the model (per-layer scopes before and after, what was copied and why, constant layers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import hashlib
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from wsa_cli import __version__
from wsa_cli.device import resolve_device
from wsa_cli.threads import ThreadPlan, choose_threads, compute_threads
from wsa_cli.errors import OutputError
from wsa_cli.scope.gaussian import Scope
from wsa_cli.fusion.pipeline import ScopeOptions, Source, align_coefficients, resolve_target, source_get
from wsa_cli.fusion.rescale import MODEL_RESCALE_MODES
from wsa_cli.io import CheckpointReader, SafetensorsWriter, open_checkpoint
from wsa_cli.io.prefetch import prefetch as read_ahead
from wsa_cli.buffers import Scratch
from wsa_cli.io.open import RECIPE_COPY_NAME
from wsa_cli.io.writer import INDEX_NAME
from wsa_cli.merge.card import card_fields, config_with_dtype, model_card, parent_card
from wsa_cli.merge.kernel import AlignedInput, block_size, combine_linear
from wsa_cli.merge.pages import PageWindow
from wsa_cli.merge.plan import CARD_NAME, InputPlan, StagePlan, TensorPlan, plan_recipe
from wsa_cli.merge.provenance import input_fingerprint, merge_metadata
from wsa_cli.merge.result import MergeResult
from wsa_cli.merge.registry import BlockInputs, MethodContext, get_method
from wsa_cli.recipe.schema import Recipe, load_recipe
from wsa_cli.progress import ProgressFn, announce_total
from wsa_cli.scope.stats import RunningScope, tensor_scope

REPORT_FORMAT = "wsa-merge-report"


def _scope_dict(s: Scope) -> dict[str, float]:
    return {"mean": s.mean, "std": s.std}


@dataclasses.dataclass
class TensorResult:
    """A merged tensor (on the CPU, output dtype) and its report record."""

    tensor: torch.Tensor
    record: dict[str, Any]


def merge_tensor(
    entry: TensorPlan,
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    *,
    scope: ScopeOptions,
    weights: Sequence[float],
    seed: int,
    device: torch.device,
    align_base: bool = True,
    scratch: Scratch | None = None,
    work: Scratch | None = None,
    scopes: Sequence[Scope] | None = None,
    base_scope: Scope | None = None,
    pages: PageWindow | None = None,
) -> TensorResult:
    """Merge one key: align (if planned), combine with the method, cast; return tensor and report record.

    ``tensors`` are the K models' tensors for ``entry.key`` (any device); the result is on the CPU.
    Methods with a linear form (linear, task_arithmetic, copy) fold the alignment ``a_i w + b_i``
    into their coefficients and accumulate ``sum_i c_i a_i x_i + const`` in one pass over each
    input (:func:`~wsa_cli.merge.kernel.combine_linear`); methods with a block form (TIES, DARE,
    SLERP) read their inputs aligned block by block; any other method gets the K aligned tensors.
    Either way math runs in float32 (float64 when an input is float64), and the reported
    ``after`` scope is the result's before the cast to the output dtype. With ``scratch`` the
    result may live in a reused buffer (write it before the next call); ``work`` holds working
    buffers reused across calls. ``scopes`` / ``base_scope``: the inputs' scopes when already measured.
    ``pages``: the inputs' mapped pages, released as the passes over them finish (linear methods).

    Example:
        >>> from wsa_cli.merge.plan import TensorPlan
        >>> e = TensorPlan("w", (2,), torch.float32, torch.float32, "merge", "linear", {"normalize": True}, False, False, "affine")
        >>> merge_tensor(e, [torch.tensor([0.0, 2.0]), torch.tensor([2.0, 4.0])], None,
        ...              scope=ScopeOptions(), weights=[1, 1], seed=0, device=torch.device("cpu")).tensor
        tensor([1., 3.])
    """
    record: dict[str, Any] = {"key": entry.key, "action": entry.action}
    if entry.action == "copy":
        record["reason"] = entry.reason
        if entry.models is not None:
            record["models"] = list(entry.models)
        return TensorResult(tensors[0].to("cpu", entry.out_dtype), record)
    xs = [t.to(device, non_blocking=True) for t in tensors]  # K x (shape,) stored dtype, on device
    b = base.to(device, non_blocking=True) if base is not None else None
    wide = torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32  # math dtype
    record.update({"method": entry.method, "aligned": entry.align, "override": entry.rule})
    opts = scope if entry.rescale == scope.rescale else dataclasses.replace(scope, rescale=entry.rescale)
    if not entry.align:
        opts = dataclasses.replace(opts, align=False)
    work = work if work is not None else Scratch()
    f64 = work.get((block_size(device),), torch.float64, device, "f64")  # scratch for the scope measurements

    def measure(x: torch.Tensor) -> Scope:
        return tensor_scope(x, device, buffer=f64)

    method = get_method(entry.method or "linear")
    linear = method.linear_form is not None
    window = pages if linear else None  # other methods pass over their inputs several times, in their own order

    def measure_input(i: int, x: torch.Tensor) -> Scope:
        s = measure(x)
        if window is not None:
            window.done(i)  # the merging pass maps it again, a window at a time
        return s

    coef = [(1.0, 0.0)] * len(xs)  # per model: aligned = a * x + b
    coef_base = (1.0, 0.0)
    # unaligned merge: the inputs' scopes (for the report) are measured in the merging pass (linear methods always,
    # block forms when they say so; otherwise after the merge)
    in_pass = [RunningScope() for _ in xs] if scopes is None and not entry.align and entry.layer and (linear or method.into is not None) else None
    if entry.layer or entry.align:
        if scopes is None and in_pass is None:
            scopes = [measure_input(i, x) for i, x in enumerate(xs)]
        record["before"] = [_scope_dict(s) for s in scopes] if scopes is not None else None  # filled after the merge otherwise
        if entry.align:
            target = resolve_target(entry.key, scopes, opts)
            record["target"] = _scope_dict(target)
            folded = [align_coefficients(s, target, opts) for s in scopes]
            coef = [(a, c) for a, c, _ in folded]
            constant = [i for i, (s, f) in enumerate(zip(scopes, folded, strict=True)) if not f[2] and s.std == 0.0 and opts.rescale != "none"]
            if constant:
                record["constant_not_rescaled"] = constant
            if b is not None and align_base:
                a, c, _ = align_coefficients(base_scope or measure_input(len(xs), b), target, opts)
                coef_base = (a, c)
    measured = entry.layer or entry.align
    out_dtype = entry.out_dtype if entry.out_dtype.is_floating_point else wide

    def output(dtype: torch.dtype) -> torch.Tensor:
        return scratch.get(entry.shape, dtype, device) if scratch is not None else torch.empty(entry.shape, dtype=dtype, device=device)

    if method.linear_form is not None:
        cs, c_base = method.linear_form(list(weights), entry.params, b is not None)
        terms = [(c * a, x) for c, (a, _), x in zip(cs, coef, xs, strict=True)]
        shift = sum(c * sh for c, (_, sh) in zip(cs, coef, strict=True) if c != 0.0)
        if b is not None and c_base != 0.0:
            terms.append((c_base * coef_base[0], b))
            shift += c_base * coef_base[1]
        out = output(out_dtype)
        seen = None if in_pass is None else in_pass + [None] * (len(terms) - len(in_pass))  # the base is not reported
        after = combine_linear([x for _, x in terms], [m for m, _ in terms], shift, out, wide=wide, measure=measured, pool=work,
                               input_scopes=seen, passed=None if window is None else window.passed)  # fmt: skip
        if in_pass is not None:
            record["before"] = [_scope_dict(acc.scope()) for acc in in_pass]
        if after is not None:
            record["after"] = _scope_dict(after)
        return TensorResult(out.to("cpu"), record)
    ctx = MethodContext(entry.key, seed, device, scratch=work)
    if method.into is not None:
        inputs = [AlignedInput(x, a, sh) for (a, sh), x in zip(coef, xs, strict=True)]
        base_in = AlignedInput(b, *coef_base) if b is not None else None
        result = work.get(entry.shape, wide, device, "result") if out_dtype != wide else output(wide)  # (shape,) wide
        job = BlockInputs(result, inputs, base_in, list(weights), entry.params, ctx, wide,
                          input_scopes=in_pass, output_scope=RunningScope() if in_pass is not None else None)  # fmt: skip
        method.into(job)
        if in_pass is not None and job.measured:  # the block form measured inputs and result in its pass
            record["before"] = [_scope_dict(acc.scope()) for acc in in_pass]
            record["after"] = _scope_dict(job.output_scope.scope())
            measured = False
        elif in_pass is not None:  # it did not: measure the inputs now (the result below)
            record["before"] = [_scope_dict(measure(x)) for x in xs]
    else:
        aligned = [x.to(wide) * a + sh if (a, sh) != (1.0, 0.0) else x.to(wide) for (a, sh), x in zip(coef, xs, strict=True)]
        bb = None if b is None else (b.to(wide) * coef_base[0] + coef_base[1] if coef_base != (1.0, 0.0) else b.to(wide))
        del xs
        result = method.fn(aligned, bb, list(weights), entry.params, ctx)  # (shape,)
    if measured:
        record["after"] = _scope_dict(measure(result))
    out = result if result.dtype == out_dtype else output(out_dtype).copy_(result)
    return TensorResult(out.to(entry.out_dtype).to("cpu"), record)


def subset_options(entry: TensorPlan, scope: ScopeOptions, weights: Sequence[float]) -> tuple[ScopeOptions, list[float]]:
    """The scope options and weights of a tensor merged over a subset of the models (``keys: union``).

    The subset's weights are renormalised to the same total as all models' weights (equal when they
    are all zero); fusion weights are taken for the subset; a ``{model: N}`` target is N's position in it.

    Example:
        >>> from wsa_cli.merge.plan import TensorPlan
        >>> e = TensorPlan("w", (2,), torch.float32, torch.float32, "merge", "linear", {}, False, False, "affine", models=(0, 2))
        >>> subset_options(e, ScopeOptions(), [1.0, 1.0, 2.0])[1]
        [1.3333333333333333, 2.6666666666666665]
    """
    if entry.models is None:
        return scope, list(weights)
    idx = entry.models
    total, sub = sum(weights), [weights[i] for i in idx]
    sub = [w * total / sum(sub) for w in sub] if sum(sub) > 0 else [total / len(idx)] * len(idx)
    changes: dict[str, Any] = {}
    if scope.weights is not None:
        changes["weights"] = [scope.weights[i] for i in idx]
    if isinstance(scope.target, int) and not isinstance(scope.target, bool):
        t = scope.target % len(weights)
        changes["target"] = idx.index(t) if t in idx else "fused"  # the plan turns alignment off when t is not there
    return (dataclasses.replace(scope, **changes) if changes else scope), sub


def merge_planned(entry: TensorPlan, tensors: Sequence[torch.Tensor], base: torch.Tensor | None, *, scope: ScopeOptions,
                  weights: Sequence[float], **kw: Any) -> TensorResult:  # fmt: skip
    """:func:`merge_tensor` for a planned key: over the models that hold it, and with a ``rows:`` split.

    ``tensors`` are the tensors of ``entry.models`` (all models when None). With ``entry.rows`` the
    first ``rows`` rows are merged and the rest copied from ``entry.row_source``.
    """
    opts, w = subset_options(entry, scope, weights)
    if entry.rows is None or entry.action != "merge":
        res = merge_tensor(entry, tensors, base, scope=opts, weights=w, **kw)
        if entry.models is not None and entry.action == "merge":
            res.record["models"] = list(entry.models)
        return res
    n = entry.rows
    head = dataclasses.replace(entry, shape=(n, *entry.shape[1:]))
    idx = entry.models if entry.models is not None else tuple(range(len(tensors)))
    tail = tensors[idx.index(entry.row_source)][n:]
    res = merge_tensor(head, [t[:n] for t in tensors], None if base is None else base[:n], scope=opts, weights=w, **kw)
    out = torch.cat([res.tensor, tail.to("cpu", entry.out_dtype)])
    res.record["row_ranges"] = entry.row_ranges()
    if entry.models is not None:
        res.record["models"] = list(entry.models)
    return TensorResult(out, res.record)


def count_nonfinite(tensor: torch.Tensor, chunk: int = 1 << 22) -> int:
    """How many values of ``tensor`` are NaN or infinite (0 for integer tensors); chunked, no model-sized mask.

    Example:
        >>> count_nonfinite(torch.tensor([1.0, float("nan"), float("inf")]))
        2
    """
    if not tensor.dtype.is_floating_point:
        return 0
    flat = tensor.detach().reshape(-1)
    wide = tensor.dtype.itemsize < 2  # float8: isfinite and sum are not implemented for it
    bad = 0
    for part in flat.split(chunk):
        x = part.float() if wide else part
        # a NaN or Inf makes the sum NaN/Inf, so a finite sum proves the chunk clean (about 30x cheaper
        # than isfinite on a CPU); a non-finite sum (or one that overflowed) is counted exactly
        if not math.isfinite(float(x.sum())):
            bad += int(x.numel() - torch.isfinite(x).sum().item())
    return bad


def _nonfinite_check(plan: StagePlan, key: str, record: dict[str, Any], out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> None:
    """Count NaN/Inf in a merged tensor; record them (and each input's, to tell a broken layer from a
    constant one), or refuse the output when the recipe says ``output.nonfinite: error``."""
    bad = count_nonfinite(out)
    if not bad:
        return
    if plan.spec.output is not None and plan.spec.output.nonfinite == "error":
        raise OutputError(f"merged tensor has {bad} NaN/Inf value(s) of {out.numel()}; refused (the recipe sets "
                          "output.nonfinite: error); nothing was written", key=key)  # fmt: skip
    record["nonfinite"] = bad
    if record["action"] == "merge":
        counts = [count_nonfinite(t) for t in inputs]
        record["nonfinite_inputs"] = counts
        constant = [i for i in record.get("constant_not_rescaled", []) if counts[i] == 0]  # all-NaN is not constant
        if constant:
            record["constant_not_rescaled"] = constant
        else:
            record.pop("constant_not_rescaled", None)


def _open_input(m: InputPlan) -> CheckpointReader:
    """A stage input: a checkpoint with the recipe's key/strip_prefix, an earlier stage's output, or a slices view."""
    if m.view is not None:
        return m.view.opener()
    if m.ref.stage is not None:
        return open_checkpoint(m.path)
    return open_checkpoint(m.path, container_key=m.ref.key, strip_prefix=m.ref.strip_prefix)


def _open_sources(plan: StagePlan) -> tuple[list[CheckpointReader], CheckpointReader | None]:
    readers: list[CheckpointReader] = []
    try:
        for m in plan.models:
            readers.append(_open_input(m))
        base = _open_input(plan.base) if plan.base is not None else None
    except BaseException:
        for r in readers:
            r.close()
        raise
    return readers, base


def _permute(plan: StagePlan, readers: Sequence[CheckpointReader], device: torch.device) -> tuple[list[Source], list[dict[str, str]]]:
    """Apply the recipe's ``permutation:`` block, then a ``rescale: fp`` if asked; needs the models in memory.

    Returns the models and, for ``fp``, one report per model (key -> what the function-preserving
    rescale did, or why it was not possible).
    """
    from wsa_cli.permute.recipe import fp_rescale_inputs, permute_inputs

    perm = plan.spec.permutation
    assert perm is not None
    states = [r.state_dict() for r in readers]
    aligned = permute_inputs(states, perm.spec, perm.reference, perm.seed, device)
    if plan.spec.scope.rescale not in MODEL_RESCALE_MODES:
        return list(aligned), []
    rescaled, reports = fp_rescale_inputs(aligned, perm.spec, plan.scope, device)
    return list(rescaled), reports


def _fingerprints(plan: StagePlan) -> list[dict[str, Any]]:
    mode = plan.spec.output.provenance if plan.spec.output else "fast"
    out = []
    for m in [*plan.models, *([plan.base] if plan.base else [])]:
        if m.ref.stage is not None:
            with open_checkpoint(m.path) as r:
                files = r.files()
            out.append(input_fingerprint(m.label, files, mode, from_stage=True))
        else:
            out.append(input_fingerprint(m.label, m.files or [m.path], mode))
    return out


@dataclasses.dataclass
class StageInputs:
    """A stage's opened inputs and what identifies its output: the readers (permuted sources when the
    recipe asks), the base, the fingerprints, the header metadata and the merge id shared by model and report."""

    readers: list[CheckpointReader]
    base: CheckpointReader | None
    sources: list[Source]
    fp_reports: list[dict[str, str]]
    fingerprints: list[dict[str, Any]]
    metadata: dict[str, str]
    merge_id: str


def stage_identity(plan: StagePlan, recipe: Recipe, fingerprints: list[dict[str, Any]]) -> tuple[dict[str, str], str]:
    """The safetensors metadata of a stage's output and its merge id (the same in model header and report)."""
    mode = plan.spec.output.provenance if plan.spec.output else "fast"
    metadata = merge_metadata(recipe_sha256=recipe.sha256, stage=plan.spec.name, method=plan.spec.method, inputs=fingerprints, mode=mode)
    # the model's header and its report carry the same id: a model and a report of different runs are told apart
    merge_id = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode("utf-8")).hexdigest()[:32]
    if plan.writes_report:
        metadata["wsa_merge_id"] = merge_id
    return metadata, merge_id


def stage_fingerprints(plan: StagePlan) -> list[dict[str, Any]]:
    """The provenance fingerprints of a stage's inputs (what its merge id is computed from)."""
    return _fingerprints(plan)


@contextlib.contextmanager
def open_stage(plan: StagePlan, recipe: Recipe, dev: torch.device, *, fingerprints: list[dict[str, Any]] | None = None) -> Iterator[StageInputs]:
    """Open a stage's inputs (and apply its ``permutation:`` block); closed when the block ends.

    ``fingerprints``: the inputs' provenance when already computed (``provenance: sha256`` reads every input for it).
    """
    readers, base_reader = _open_sources(plan)
    try:
        sources: list[Source] = list(readers)
        fp_reports: list[dict[str, str]] = []
        if plan.spec.permutation is not None:
            sources, fp_reports = _permute(plan, readers, dev)
        fingerprints = _fingerprints(plan) if fingerprints is None else fingerprints
        metadata, merge_id = stage_identity(plan, recipe, fingerprints)
        yield StageInputs(readers, base_reader, sources, fp_reports, fingerprints, metadata, merge_id)
    finally:
        for r in readers:
            r.close()
        if base_reader is not None:
            base_reader.close()


def stream_tensors(
    plan: StagePlan,
    inputs: StageInputs,
    write: Callable[[str, torch.Tensor], None],
    *,
    keys: Sequence[str] | None = None,
    device: torch.device,
    progress: ProgressFn | None = None,
    prefetch: int = 1,
    overlap: bool = True,
) -> list[dict[str, Any]]:
    """Merge ``keys`` (default: every planned key, in plan order) and hand each result to ``write``; return the records.

    With ``overlap`` key ``i`` is merged while key ``i-1`` is written (two output buffers, two keys'
    inputs mapped); without, each key is written before the next is merged (half of both: what a
    ``--max-memory`` ceiling may ask for, see :mod:`wsa_cli.merge.cost`).
    """
    dev = device
    sources, base_reader = inputs.sources, inputs.base
    pin = dev.type == "cuda"
    entries = {t.key: t for t in plan.tensors}
    order = {t.key: i for i, t in enumerate(plan.tensors)}
    largest = max((t.numel_bytes for t in plan.tensors), default=1)
    # read buffers: while key i is merged, the read-ahead fills keys i+1 .. i+prefetch, and key
    # i-1 may still be written: prefetch + 2 sets never collide; one buffer per input and the base
    ring_sets = prefetch + 2
    ring = Scratch(pin_memory=pin)

    def ring_buffer(slot: int, member: int) -> torch.Tensor:
        return ring.bytes(largest, f"read{slot % ring_sets}.{member}")

    views = dev.type == "cpu"  # the merge reads mapped files directly; CUDA copies from pinned buffers

    def read(src: Source, key: str, buf: torch.Tensor) -> torch.Tensor:
        if not isinstance(src, CheckpointReader):
            return source_get(src, key)
        if views:
            src.will_need(key)  # starts reading from disk what the page cache lacks
            return src.view(key)
        return src.get(key, out=buf)

    def release(key: str) -> None:
        # key is merged and written: unmap its pages, so the process holds a few tensors, not the model
        if views:
            for src in [*sources, *([base_reader] if base_reader is not None else [])]:
                if isinstance(src, CheckpointReader) and key in src:  # keys: union -- not every model holds it
                    src.release(key)

    def load(key: str) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        # runs in the prefetch thread: only reading (CPU: mapped views; CUDA: into this key's ring slot)
        entry, slot = entries[key], order[key]
        srcs = sources if entry.models is None else [sources[i] for i in entry.models]
        srcs = srcs[:1] if entry.action == "copy" else srcs
        ts = [read(s, key, ring_buffer(slot, i)) for i, s in enumerate(srcs)]
        b = read(base_reader, key, ring_buffer(slot, len(sources))) if base_reader is not None and entry.action != "copy" else None
        if pin and not all(isinstance(s, CheckpointReader) for s in srcs):
            ts = [t.pin_memory() for t in ts]
        return ts, b

    def window(key: str, ts: Sequence[torch.Tensor], b: torch.Tensor | None) -> PageWindow | None:
        # a merged key's mapped inputs (and base), in merge_tensor's order, released behind its passes
        entry = entries[key]
        srcs = sources if entry.models is None else [sources[i] for i in entry.models]
        readers = [*srcs, *([base_reader] if b is not None else [])]
        if not views or entry.action != "merge" or not all(isinstance(r, CheckpointReader) for r in readers):
            return None
        return PageWindow(readers, key, [t.element_size() for t in [*ts, *([b] if b is not None else [])]])

    scratches = [Scratch(), Scratch()] if overlap else [Scratch()]  # key i merges into scratches[i % 2] while key i-1 is written
    work = Scratch()  # working buffers, used only while a key is merged
    records = []
    wanted = [t.key for t in plan.tensors] if keys is None else list(keys)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsa-write") as write_behind:
        pending: Future[None] | None = None
        written = None  # a copied key being written: its inputs' pages may be the output, released after the write
        for i, (key, (ts, b)) in enumerate(read_ahead(load, wanted, depth=prefetch)):
            res = merge_planned(entries[key], ts, b, scope=plan.scope, weights=plan.weights, seed=plan.spec.seed,
                               device=dev, align_base=plan.spec.scope.align_base, scratch=scratches[i % len(scratches)], work=work,
                               pages=window(key, ts, b))  # fmt: skip
            _nonfinite_check(plan, key, res.record, res.tensor, ts)
            merged = entries[key].action == "merge"  # the result lives in a scratch buffer, not in the inputs' pages
            if merged:
                release(key)  # so the inputs' mapped pages held at once are one key's, not two
            if pending is not None:
                pending.result()  # key i-1 is on disk: its scratch, ring slot and mapped pages may go
                if written is not None:
                    release(written)
            pending, written = write_behind.submit(write, key, res.tensor), None if merged else key
            if not overlap:
                pending.result()
                if written is not None:
                    release(written)
                pending = None
            records.append(res.record)
            del ts, b, res
            if progress is not None:
                progress(1, key)
        if pending is not None:
            pending.result()
            if written is not None:
                release(written)
    return records


def finish_stage(plan: StagePlan, recipe: Recipe, records: list[dict[str, Any]], inputs: StageInputs | None,
                 writer: SafetensorsWriter, *, fingerprints: list[dict[str, Any]] | None = None, merge_id: str | None = None,
                 fp_reports: list[dict[str, str]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Hand ``writer`` a stage's side files and report (from the records of every tensor) and return its summary.

    ``inputs`` gives fingerprints, merge id and fp reports; without it (assembling parts written
    elsewhere) they are passed by name.
    """
    fingerprints = inputs.fingerprints if inputs is not None else fingerprints or []
    merge_id = inputs.merge_id if inputs is not None else merge_id
    fp_reports = inputs.fp_reports if inputs is not None else fp_reports or []
    side = _folder_side_files(plan, recipe, records, fingerprints, writer)
    summary = _summary(plan, records, writer.shard_names)
    if writer.orphans_removed:
        summary["warnings"].append(f"removed {len(writer.orphans_removed)} temporary file(s) of killed wsa runs next to "
                                   f"the output (e.g. {writer.orphans_removed[0].name})")  # fmt: skip
    if fp_reports:
        summary["function_preserving"] = _fp_counts(fp_reports)
    if plan.spec.output is not None and plan.spec.output.report:
        report = {**_report(plan, recipe, records, fingerprints, summary, writer.shard_names), "merge_id": merge_id}
        if plan.folder_output:  # what --force may replace later: everything this merge put in the folder
            report["output"]["written"] = sorted({*side, plan.report_path.name})
        if fp_reports:
            report["function_preserving"] = [{"model": i, "layers": r} for i, r in enumerate(fp_reports)]
        name = plan.report_path.name
        writer.add_text(name, json.dumps(report, indent=2, allow_nan=False) + "\n")
        summary["report"] = str(plan.report_path)
    return summary


def run_stage(
    plan: StagePlan,
    recipe: Recipe,
    *,
    device: torch.device | str = "cpu",
    force: bool = False,
    progress: ProgressFn | None = None,
    prefetch: int = 1,
    overlap: bool = True,
) -> dict[str, Any]:
    """Execute one planned stage and return its summary (what the CLI prints).

    Writes ``plan.output`` atomically, with the merge report next to it (or inside the folder).
    ``overlap``: see :func:`stream_tensors`.
    """
    dev = resolve_device(device)
    with open_stage(plan, recipe, dev) as inputs, \
            SafetensorsWriter(plan.output, plan.out_infos, metadata=inputs.metadata, max_shard_bytes=plan.max_shard_bytes,
                              force=force or plan.temporary, replace_own_only=not plan.temporary) as writer:  # fmt: skip
        records = stream_tensors(plan, inputs, writer.write, device=dev, progress=progress, prefetch=prefetch, overlap=overlap)
        return finish_stage(plan, recipe, records, inputs, writer)


def _folder_side_files(plan: StagePlan, recipe: Recipe, records: list[dict[str, Any]], fingerprints: list[dict[str, Any]],
                       writer: SafetensorsWriter) -> list[str]:  # fmt: skip
    """Hand the writer a folder output's non-weight files; return every name the folder will hold but the report.

    The template model's tree is copied (``config.json`` with the output dtype when ``output.dtype``
    is set); the model card and the recipe copy are generated. All of it commits with the model.
    """
    names = list(writer.shard_names) + ([INDEX_NAME] if len(writer.shard_names) > 1 else [])
    out_dtype = plan.spec.output.dtype if plan.spec.output is not None else None
    for name, src in plan.copy_files:
        text = config_with_dtype(src, out_dtype) if name == "config.json" and out_dtype is not None else None
        if text is not None:
            writer.add_text(name, text)
        else:
            writer.add_copy(name, src)
        names.append(name)
    if not plan.folder_output:
        return names
    planned = plan.to_dict()
    inputs = [{**fp, "weight": m.ref.weight} for fp, m in zip(fingerprints[: len(plan.models)], plan.models, strict=True)]
    inputs += [{**fingerprints[-1], "role": "base"}] if plan.base is not None else []
    cards = [c for m in [*plan.models, *([plan.base] if plan.base else [])] if m.ref.stage is None
             for c in [parent_card(m.path)] if c is not None]  # fmt: skip
    writer.add_text(CARD_NAME, model_card(
        name=plan.output.name, method=plan.spec.method, parameters=planned["parameters"], seed=plan.spec.seed,
        scope=planned["scope"], inputs=inputs, provenance=plan.spec.output.provenance if plan.spec.output else "fast",
        records=records, parents=card_fields(cards), recipe_name=RECIPE_COPY_NAME,
        report_name=plan.report_path.name if plan.writes_report else None,
    ))  # fmt: skip
    text = recipe.text
    if not text and recipe.path.is_file():
        text = recipe.path.read_text(encoding="utf-8")
    writer.add_text(RECIPE_COPY_NAME, text)
    return [*names, CARD_NAME, RECIPE_COPY_NAME]


def _fp_counts(reports: list[dict[str, str]]) -> list[dict[str, int]]:
    """Per model: how many layers the function-preserving rescale scaled, and how many it could not."""
    return [{"model": i, "rescaled": sum(v.startswith("scaled") for v in r.values()),
             "not_rescaled": sum(not v.startswith("scaled") for v in r.values())} for i, r in enumerate(reports)]  # fmt: skip


def _summary(plan: StagePlan, records: list[dict[str, Any]], shards: list[str]) -> dict[str, Any]:
    constant = [r["key"] for r in records if r.get("constant_not_rescaled")]
    warnings = list(plan.warnings)
    bad = [r for r in records if r.get("nonfinite")]
    if bad:
        where = "the output" if plan.spec.output is not None else f"the temporary output of stage {plan.spec.name!r}"
        warnings.append(f"{len(bad)} merged tensor(s) of {where} hold NaN/Inf values (e.g. {bad[0]['key']!r}: "
                        f"{bad[0]['nonfinite']} value(s)); set output.nonfinite: error to refuse such a merge")  # fmt: skip
    return {
        "name": plan.spec.name,
        "output": str(plan.output),
        "temporary": plan.temporary,
        "method": plan.spec.method,
        "files": list(shards),
        "tensors": len(records),
        "merged": sum(r["action"] == "merge" for r in records),
        "copied": sum(r["action"] == "copy" for r in records),
        "aligned": sum(bool(r.get("aligned")) for r in records),
        "constant_not_rescaled": constant,
        "copied_files": [name for name, _ in plan.copy_files],
        "warnings": warnings,
        "report": None,
    }


def _report(plan: StagePlan, recipe: Recipe, records: list[dict[str, Any]], fingerprints: list[dict[str, Any]],
            summary: dict[str, Any], shards: list[str]) -> dict[str, Any]:  # fmt: skip
    planned = plan.to_dict()
    skipped = [{"key": r["key"], "why": r["reason"]} for r in records if r["action"] == "copy"]
    not_rescaled = [{"key": r["key"], "models": r["constant_not_rescaled"], "why": "constant layer (std 0) cannot be rescaled"}
                    for r in records if r.get("constant_not_rescaled")]  # fmt: skip
    return {
        "format": REPORT_FORMAT,
        "version": 1,
        "wsa_version": __version__,
        "recipe": recipe.path.name,
        "recipe_sha256": recipe.sha256,
        "stage": plan.spec.name,
        "method": planned["method"],
        "parameters": planned["parameters"],
        "seed": plan.spec.seed,
        "scope": planned["scope"],
        "permutation": planned["permutation"],
        "inputs": [{**fp, "weight": m.ref.weight} for fp, m in zip(fingerprints[: len(plan.models)], plan.models, strict=True)]
        + ([{**fingerprints[-1], "role": "base"}] if plan.base is not None else []),
        "output": {"name": plan.output.name, "files": list(shards), "copied_files": summary["copied_files"]},
        "counts": {k: summary[k] for k in ("tensors", "merged", "copied", "aligned")},
        "copied_not_merged": skipped,
        "constant_not_rescaled": not_rescaled,
        **({"dropped": list(plan.dropped)} if plan.dropped else {}),
        "tensors": records,
    }


def run_plans(
    recipe: Recipe,
    plans: Sequence[StagePlan],
    *,
    device: torch.device | str = "cpu",
    force: bool = False,
    progress: ProgressFn | None = None,
    overlap: bool = True,
) -> list[dict[str, Any]]:
    """Run every stage in order; intermediate outputs without ``output:`` are removed at the end."""
    summaries = []
    try:
        for plan in plans:
            summaries.append(run_stage(plan, recipe, device=device, force=force, progress=progress, overlap=overlap))
    finally:
        for plan in plans:  # an intermediate output lives in this run's own hidden folder: remove it whole
            if plan.temporary:
                shutil.rmtree(plan.output.parent, ignore_errors=True)
    return summaries


def merge_threads(plans: Sequence[StagePlan], device: torch.device, *, requested: int | None = None) -> ThreadPlan:
    """The compute threads of a merge: memory-bound when every planned method has a linear form (see ``wsa_cli/threads.py``)."""
    memory_bound = all(get_method(t.method).linear_form is not None for p in plans for t in p.tensors if t.method)
    return choose_threads("merge", device=device.type, requested=requested, memory_bound=memory_bound)


def merge_recipe(
    recipe: str | Path | Recipe,
    *,
    device: torch.device | str = "cpu",
    force: bool = False,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    threads: int | None = None,
    max_memory: int | str | None = None,
    on_cost: Callable[[Any], None] | None = None,
    split: Any = None,
) -> MergeResult:
    """Load, validate, plan and (unless ``dry_run``) run a recipe: the library call behind ``wsa merge``.

    Returns a :class:`~wsa_cli.merge.result.MergeResult` whose ``stages`` are the plans (dry run)
    or what each stage wrote; ``warnings`` are the plan's (things a person should see).
    ``threads``: compute threads of the run (``None``: :func:`wsa_cli.threads.choose_threads` decides).
    The predicted cost (:func:`wsa_cli.merge.cost.predict_merge`, under the ``max_memory`` ceiling)
    is in the result and handed to ``on_cost`` before anything runs; ``split``
    (:class:`wsa_cli.merge.parts.Split`) runs the merge in parts, one of them, on Ray, or assembles.

    Example:
        >>> merge_recipe("recipes/average.yaml", force=True).final["output"]  # doctest: +SKIP
        'recipes/out/average.safetensors'
    """
    from wsa_cli.merge.cost import parse_size, predict_merge

    ceiling = None if max_memory is None else parse_size(max_memory)  # a bad size fails before anything is opened
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    plans = plan_recipe(r, force=force)
    dev = resolve_device(device)  # fail on a missing device before writing anything
    cpu = merge_threads(plans, dev, requested=threads)
    warnings = [w for p in plans for w in p.warnings]
    with compute_threads(cpu):
        cost = predict_merge(plans, dev, max_memory=ceiling, force=force)
    if split is not None:
        from wsa_cli.merge.parts import plan_split

        warnings += plan_split(plans, split)  # a recipe that cannot be split fails here, before anything runs
    if dry_run:
        return MergeResult(str(r.path), r.sha256, True, str(dev), [p.to_dict() for p in plans], warnings=warnings, threads=cpu.to_dict(),
                           cost=cost.to_dict())  # fmt: skip
    if on_cost is not None:
        on_cost(cost)
    announce_total(progress, sum(len(p.tensors) for p in plans))
    with compute_threads(cpu):
        if split is None:
            stages = run_plans(r, plans, device=dev, force=force, progress=progress, overlap=cost.overlap)
        else:
            from wsa_cli.merge.parts import run_split

            stages = run_split(r, plans, split, device=dev, force=force, progress=progress, cost=cost)
    warnings = [w for s in stages for w in s["warnings"]]  # the plans' and what the run found (NaN/Inf, orphans)
    final = stages[-1]
    if "part" in final:
        notes = [f"wrote part {final['part']['part']}/{final['part']['parts']} ({final['tensors']} tensors) into {final['output']}"
                 + (" (already there and verified: skipped)" if final["part"]["skipped"] else "")]  # fmt: skip
    else:
        notes = [f"wrote {final['output']} ({final['tensors']} tensors)" + (f"; report {final['report']}" if final["report"] else "")]
    return MergeResult(str(r.path), r.sha256, False, str(dev), stages, warnings=warnings, notes=notes, threads=cpu.to_dict(),
                       cost=cost.to_dict())  # fmt: skip


__all__ = ["MergeResult", "Scratch", "TensorResult", "count_nonfinite", "merge_recipe", "merge_tensor", "merge_threads", "run_plans", "run_stage"]
