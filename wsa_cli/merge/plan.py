"""The merge plan: every decision made, and every check passed, before any tensor is read.

:func:`plan_recipe` opens each input's *header* only (shapes and dtypes), checks that the models
line up (same keys, shapes and dtypes -- naming the key and the file when not), that the base
model fits, that methods get the model count and parameters they need, that override patterns
match something, and that the output may be written. Its result, a list of :class:`StagePlan`,
is what ``wsa merge --dry-run`` prints and what :mod:`wsa_cli.merge.executor` runs.

A later stage that merges an earlier stage's output is planned from that stage's *planned*
output (keys, shapes, dtypes), so a multi-stage recipe is validated end to end up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import secrets
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import ConfigError, InvalidValueError, MismatchError, OutputError, WsaError
from wsa_cli.scope.gaussian import Scope
from wsa_cli.fusion.pipeline import ScopeOptions
from wsa_cli.fusion.rescale import MODEL_RESCALE_MODES
from wsa_cli.fusion.scopefile import ScopeTable
from wsa_cli.io import TensorInfo, dtype_name, numel, open_checkpoint
from wsa_cli.io.open import MERGE_REPORT_NAME, RECIPE_COPY_NAME, side_tree
from wsa_cli.io.writer import (
    INDEX_NAME, SINGLE_FILE_NAME, check_output_kind, check_outputs, check_replaceable, plan_shards, temp_tag,
)  # fmt: skip
from wsa_cli.merge.gradients import has_gradient, layer_count, layer_position, params_at, positions
from wsa_cli.merge.registry import MergeMethod, get_method
from wsa_cli.recipe.schema import ModelRef, OutputSpec, Recipe, StageSpec
from wsa_cli.scope.selection import matches_any

#: Name of the JSON report inside a folder output (the readers skip it).
REPORT_NAME = MERGE_REPORT_NAME
#: The model card a folder output gets (generated; the template model's card is not copied).
CARD_NAME = "README.md"


@dataclass(frozen=True)
class TensorPlan:
    """What happens to one tensor key.

    ``action``: ``merge`` (the method combines the K tensors) or ``copy`` (integer/bool tensors:
    the first model's tensor is copied, never averaged). ``layer``: the scope selector picks it.
    ``align``: it is rescaled onto its target scope before the method runs.
    """

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype  # stored dtype of the inputs
    out_dtype: torch.dtype
    action: str
    method: str | None
    params: dict[str, Any]
    layer: bool
    align: bool
    rescale: str
    rule: int | None = None  # index of the matching override
    reason: str = ""
    #: the models this tensor is read from (None: all); a ``copy`` copies the first of them
    models: tuple[int, ...] | None = None
    #: row counts differ (``rows:``): rows ``[0, rows)`` are merged, ``[rows, shape[0])`` copied from ``models[row_source]``
    rows: int | None = None
    row_source: int | None = None
    #: a ``slices:`` stage: the input key each of its models gives (``FILE:KEY``), in model order
    origin: tuple[str, ...] | None = None

    @property
    def numel_bytes(self) -> int:
        """Bytes of the stored tensor (one input's copy)."""
        return numel(self.shape) * self.dtype.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "shape": list(self.shape),
            "dtype": dtype_name(self.dtype),
            "out_dtype": dtype_name(self.out_dtype),
            "action": self.action,
            "method": self.method,
            "params": dict(self.params),
            "layer": self.layer,
            "align": self.align,
            "rescale": self.rescale if self.align else None,
            "override": self.rule,
            "reason": self.reason or None,
            **({"models": list(self.models)} if self.models is not None else {}),
            **({"row_ranges": self.row_ranges()} if self.rows is not None else {}),
            **({"from": list(self.origin)} if self.origin is not None else {}),
        }

    def row_ranges(self) -> list[dict[str, Any]]:
        """Where the output's rows come from (a ``rows:`` split): ``[start, stop)`` per range."""
        assert self.rows is not None and self.models is not None
        ranges = [{"rows": [0, self.rows], "action": "merge", "models": list(self.models)}]
        if self.rows < self.shape[0]:
            ranges.append({"rows": [self.rows, self.shape[0]], "action": "copy", "models": [self.row_source]})
        return ranges


@dataclass
class InputPlan:
    """One input model of a stage: a checkpoint on disk, or an earlier stage's output."""

    ref: ModelRef
    infos: dict[str, TensorInfo]
    path: Path  # file or folder to open (for a stage input: that stage's output path)
    extra_files: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    #: a model of a ``slices:`` stage (:class:`~wsa_cli.merge.slices.SliceView`): its layers renamed from several checkpoints
    view: Any = None

    @property
    def label(self) -> str:
        return self.ref.label

    @property
    def shown(self) -> str:
        """How messages name this input: its path, or the stage whose (temporary) output it is."""
        return f"the output of stage {self.ref.stage!r}" if self.ref.stage is not None else str(self.path)


@dataclass
class StagePlan:
    """A fully validated stage: inputs, per-tensor plan, output layout."""

    spec: StageSpec
    models: list[InputPlan]
    base: InputPlan | None
    tensors: list[TensorPlan]
    output: Path
    temporary: bool  # an intermediate stage without 'output:' (removed after the run)
    scope: ScopeOptions
    weights: list[float]
    #: (name inside the output folder, source): the template model's non-weight tree (an empty
    #: source folder is created empty)
    copy_files: list[tuple[str, Path]]
    max_shard_bytes: int | None
    #: things that do not stop the merge but that a person should see (``wsa merge`` prints them)
    warnings: list[str] = field(default_factory=list)
    #: keys left out (``keys: intersection``): {"key", "missing_in": [model indices], "why"}
    dropped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out_infos(self) -> list[TensorInfo]:
        return [TensorInfo(t.key, t.shape, t.out_dtype) for t in self.tensors]

    @property
    def report_path(self) -> Path:
        if self.output.suffix == ".safetensors":
            return self.output.with_name(f"{self.output.stem}.{REPORT_NAME}")
        return self.output / REPORT_NAME

    @property
    def writes_report(self) -> bool:
        return self.spec.output is not None and self.spec.output.report

    @property
    def folder_output(self) -> bool:
        """A Hugging Face-style folder output: it also gets a model card and a copy of the recipe."""
        return self.spec.output is not None and self.output.suffix != ".safetensors"

    @property
    def written_paths(self) -> list[Path]:
        """Every path this stage creates or replaces: the model (file or folder), its shards, index and report."""
        paths = [self.output]
        if self.output.suffix != ".safetensors":
            n = len(plan_shards(self.out_infos, self.max_shard_bytes))
            names = [SINGLE_FILE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
            paths += [self.output / name for name in names] + ([self.output / INDEX_NAME] if n > 1 else [])
            paths += [self.output / name for name, _ in self.copy_files]
            if self.folder_output:
                paths += [self.output / CARD_NAME, self.output / RECIPE_COPY_NAME]
        if self.writes_report:
            paths.append(self.report_path)
        return paths

    def input_paths(self) -> list[Path]:
        """The files and model folders this stage reads from disk (earlier stages' outputs excluded)."""
        found: list[Path] = []
        for m in [*self.models, *([self.base] if self.base else [])]:
            if m.ref.stage is None:
                found += [m.path, *m.files]
        return found

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.action] = counts.get(t.action, 0) + 1
        return {
            "name": self.spec.name,
            "output": str(self.output),
            "temporary": self.temporary,
            "models": [{"input": m.label, "path": str(m.path), "weight": m.ref.weight} for m in self.models],
            "base": None if self.base is None else {"input": self.base.label, "path": str(self.base.path)},
            "method": self.spec.method,
            "parameters": get_method(self.spec.method).resolve_params(self.spec.parameters),
            "seed": self.spec.seed,
            "scope": {
                "align": self.scope.align,
                "fusion": self.scope.fusion,
                "target": _target_repr(self.spec.scope.target),
                "rescale": self.spec.scope.rescale,  # 'fp' shows as fp, though tensors then use 'none'
                "weights": self.scope.weights,
                "include": list(self.scope.selector.include),
                "exclude": list(self.scope.selector.exclude),
                "align_base": self.spec.scope.align_base,
            },
            "permutation": None if self.spec.permutation is None else {
                "spec": str(self.spec.permutation.spec), "reference": self.spec.permutation.reference, "seed": self.spec.permutation.seed,
            },
            "copy_files": [name for name, _ in self.copy_files],
            "max_shard_bytes": self.max_shard_bytes,
            "counts": {"tensors": len(self.tensors), **counts, "aligned": sum(t.align for t in self.tensors)},
            "warnings": list(self.warnings),
            **({"keys": self.spec.keys} if self.spec.keys != "strict" else {}),
            **({"rows": self.spec.rows if isinstance(self.spec.rows, str) else {"from": self.spec.rows}} if self.spec.rows != "error" else {}),
            **({"dropped": list(self.dropped)} if self.dropped else {}),
            "tensors": [t.to_dict() for t in self.tensors],
        }  # fmt: skip


def _target_repr(target: object) -> Any:
    if isinstance(target, Scope):
        return target.to_dict()
    if isinstance(target, int):
        return {"model": target}
    return str(target)


def _cfg(recipe: Recipe, line: int | None, message: str) -> ConfigError:
    return ConfigError(message, path=recipe.path, line=line)


def _load_input(recipe: Recipe, ref: ModelRef, done: dict[str, StagePlan]) -> InputPlan:
    if ref.stage is not None:
        prev = done[ref.stage]
        return InputPlan(ref, {i.key: i for i in prev.out_infos}, prev.output)
    assert ref.path is not None
    try:
        reader = open_checkpoint(ref.path, container_key=ref.key, strip_prefix=ref.strip_prefix)
    except InvalidValueError as exc:  # e.g. key: on a safetensors file
        raise ConfigError(f"{ref.text}: {exc.message}", path=recipe.path, line=ref.line) from None
    with reader:  # headers only: no tensor data is read here
        infos = {i.key: i for i in reader.infos()}
        return InputPlan(ref, infos, ref.path, extra_files=reader.extra_files(), files=reader.files())


def _rows_only(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Shapes that differ in the first dimension only (e.g. embeddings of two vocabulary sizes)."""
    return len(a) == len(b) >= 1 and a[1:] == b[1:] and a[0] != b[0]


def _check_same(ref: InputPlan, other: InputPlan, key: str, what: str, dtype_free: bool, rows_differ: bool) -> None:
    """``key``'s shape and dtype in ``other`` against ``ref`` (both hold it)."""
    info, o, where = ref.infos[key], other.infos[key], other.shown
    if o.shape != info.shape and not (rows_differ and _rows_only(o.shape, info.shape)):
        hint = " (rows: common or {from: N} merges tensors whose row counts differ)" if _rows_only(o.shape, info.shape) else ""
        raise MismatchError(f"{what}: has shape {o.shape}, expected {info.shape} as in {ref.shown}{hint}", path=where, key=key)
    if o.dtype != info.dtype:
        both_float = o.dtype.is_floating_point and info.dtype.is_floating_point
        if not (dtype_free and both_float):
            hint = " (set output.dtype to merge mixed float dtypes)" if both_float else ""
            raise MismatchError(
                f"{what}: has dtype {dtype_name(o.dtype)}, expected {dtype_name(info.dtype)} as in {ref.shown}{hint}",
                path=where, key=key,
            )  # fmt: skip


def _check_fit(ref: InputPlan, other: InputPlan, what: str, dtype_free: bool, *, skip: frozenset[str] = frozenset(),
               rows_differ: bool = False) -> None:  # fmt: skip
    """``other`` must hold exactly ``ref``'s keys with the same shapes (and dtypes unless ``dtype_free``).

    ``skip``: keys that may be missing on either side (int/bool buffers, copied from the first model
    holding them); ``rows_differ``: shapes may differ in the first dimension (``rows:``)."""
    where = other.shown
    for key in ref.infos:
        if key not in other.infos:
            if key in skip:
                continue
            raise MismatchError(f"{what}: tensor is missing (present in {ref.shown})", path=where, key=key)
        _check_same(ref, other, key, what, dtype_free, rows_differ)
    extra = [k for k in other.infos if k not in ref.infos and k not in skip]
    if extra:
        raise MismatchError(f"{what}: tensor is not in {ref.shown} ({len(extra)} extra tensor(s))", path=where, key=extra[0])


def _method_at(recipe: Recipe, name: str, line: int | None) -> MergeMethod:
    try:
        return get_method(name)
    except InvalidValueError as exc:
        raise _cfg(recipe, line, exc.message) from None


def _params_at(recipe: Recipe, method: MergeMethod, given: dict[str, Any], line: int | None) -> dict[str, Any]:
    try:
        return method.resolve_params(given)
    except InvalidValueError as exc:
        raise _cfg(recipe, line, exc.message) from None


def _check_method(recipe: Recipe, stage: StageSpec, method: MergeMethod, params: dict[str, Any], k: int, has_base: bool,
                  method_line: int | None, params_line: int | None, n_layers: int = 0) -> None:  # fmt: skip
    """One (method, parameters) pair against ``k`` models and the base, each error at its recipe line:
    the model count at the method, a missing base at the method (or at the parameters that ask for
    it), the method's own checks (e.g. copy's model index) at the parameters. Parameters with
    gradients are checked at every layer position of a model with ``n_layers`` layers."""
    try:
        method.check_model_count(k)
    except InvalidValueError as exc:
        raise _cfg(recipe, method_line, exc.message) from None
    if method.uses_base(params) and not has_base:
        line = method_line if method.needs_base else params_line
        raise _cfg(recipe, line, f"method {method.name!r} needs a base model: add 'base: PATH' to stage {stage.name!r}")
    spots = positions(n_layers) if has_gradient(params) else [None]
    for x in spots:
        try:
            method.validate(params if x is None else params_at(params, x), k, has_base)
        except InvalidValueError as exc:
            where = "" if x is None else f" (where the gradients give {_gradient_text(params, x)})"
            raise _cfg(recipe, params_line, exc.message + where) from None


def _gradient_text(params: dict[str, Any], x: float) -> str:
    at = params_at(params, x)
    return ", ".join(f"{name}={at[name]:g}" for name, v in params.items() if isinstance(v, list))


def _plan_stage(recipe: Recipe, stage: StageSpec, done: dict[str, StagePlan], stage_folder: Path, force: bool) -> StagePlan:
    L = stage.lines
    if stage.slices:
        models, base = _slice_inputs(recipe, stage)
    else:
        models = [_load_input(recipe, ref, done) for ref in stage.models]
        base = _load_input(recipe, stage.base, done) if stage.base is not None else None
    out_spec = stage.output
    dtype_free = out_spec is not None and out_spec.dtype is not None
    ref = models[0]
    keyplans, dropped = _line_up(recipe, stage, models, dtype_free)
    lenient = bool(dropped) or any(kp.rows is not None or len(kp.present) < len(models) for kp in keyplans)
    if base is not None and not lenient:
        _check_fit(ref, base, "base model does not fit the models", dtype_free)

    # methods: the stage's and every override's; model count, base, parameters
    k = len(models)
    method = _method_at(recipe, stage.method, L.get("method", stage.line))
    params = _params_at(recipe, method, stage.parameters, L.get("parameters", L.get("method", stage.line)))
    rules: list[tuple[MergeMethod, dict[str, Any]]] = []
    for rule in stage.overrides:
        rm = _method_at(recipe, rule.method, rule.lines.get("method", rule.line)) if rule.method else method
        given = {**stage.parameters, **rule.parameters} if rm is method else dict(rule.parameters)
        rules.append((rm, _params_at(recipe, rm, given, rule.lines.get("parameters", rule.line))))
    used = {method.name: L.get("method", stage.line)}
    for rule, (rm, _) in zip(stage.overrides, rules, strict=True):
        used.setdefault(rm.name, rule.lines.get("method", rule.line))
    pairs = [(method, params, L.get("parameters", L.get("method", stage.line)))]
    pairs += [(rm, rp, rule.lines.get("parameters", rule.line)) for rule, (rm, rp) in zip(stage.overrides, rules, strict=True)]
    n_layers = layer_count(ref.infos)  # parameter gradients are spread over these layers
    for how, resolved, params_line in pairs:
        _check_method(recipe, stage, how, resolved, k, base is not None, used[how.name], params_line, n_layers)
    if base is not None and not any(how.uses_base(resolved) for how, resolved, _ in pairs):
        raise _cfg(recipe, L.get("base"), f"a base model is given but no method of stage {stage.name!r} uses one")

    # scope options
    sspec = stage.scope
    weights = [m.ref.weight for m in models]
    if sum(weights) <= 0:
        raise _cfg(recipe, L.get("models"), "model weights must not all be zero")
    fusion_weights = sspec.weights if sspec.weights is not None else weights
    if len(fusion_weights) != k:
        raise _cfg(recipe, sspec.lines.get("weights"), f"scope.weights has {len(fusion_weights)} entries for {k} models")
    target = sspec.target
    if isinstance(target, int) and not -k <= target < k:
        raise _cfg(recipe, sspec.lines.get("target"), f"scope.target model {target} is out of range for {k} models")
    if sspec.rescale in MODEL_RESCALE_MODES and stage.permutation is None:
        raise _cfg(recipe, sspec.lines.get("rescale"), f"scope.rescale: {sspec.rescale} (function-preserving) needs a "
                   "permutation: block; its spec carries the scaling rules")  # fmt: skip
    # a whole-model mode (fp) runs before the merge (see executor.run_stage); per tensor it is 'none'
    tensor_rescale = "none" if sspec.rescale in MODEL_RESCALE_MODES else sspec.rescale
    scope = ScopeOptions(
        align=sspec.align, fusion=sspec.fusion, target=target, rescale=tensor_rescale, weights=list(fusion_weights),
        selector=sspec.selector(),
    ).resolved()  # a scope-file target is loaded once, here  # fmt: skip
    table = scope.target if isinstance(scope.target, ScopeTable) else None

    # per-tensor plan
    out_dtype = out_spec.dtype if out_spec is not None else None
    tensors: list[TensorPlan] = []
    rule_hits = [0] * len(stage.overrides)
    resized: list[tuple[str, int, int]] = []  # (key, numel in the scope file, numel here)
    buffers_copied: list[str] = []  # int/bool tensors only some models hold (copied from the first that has them)
    for kp in keyplans:
        key, info, present = kp.key, kp.info, kp.present
        partial = len(present) < k
        where = f"models[{present[0]}]"
        if not info.dtype.is_floating_point:
            src = kp.row_source if kp.row_source is not None else present[0]
            if partial:
                buffers_copied.append(key)
                why = f"{dtype_name(info.dtype)} buffer only in {_which(present)}: copied from models[{src}]"
            else:
                why = f"{dtype_name(info.dtype)} tensor: copied from models[{src}], not averaged"
            tensors.append(TensorPlan(key, info.shape, info.dtype, info.dtype, "copy", None, {}, False, False, tensor_rescale,
                                      reason=why, models=(src,) if src != 0 else None))  # fmt: skip
            continue
        layer = scope.selector.selects(key, info.shape, info.dtype)
        m, p, align, rescale, rule_index = method, params, sspec.align and layer, tensor_rescale, None
        for i, rule in enumerate(stage.overrides):
            if matches_any(key, rule.match):
                rule_hits[i] += 1
                m, p = rules[i]
                align = rule.align if rule.align is not None else align
                rescale = rule.rescale or rescale
                rule_index = i
                break
        if align and table is not None:
            if key not in table.layers:
                raise MismatchError("the target scope file has no entry for this layer", path=str(target), key=key)
            measured_on = table.numel.get(key)
            if measured_on is not None and measured_on != numel(info.shape):
                resized.append((key, measured_on, numel(info.shape)))
        if has_gradient(p):  # each tensor gets its layer's value of every gradient
            p = params_at(p, layer_position(key, n_layers))
        copy_why = ""
        if partial and len(present) == 1:
            copy_why = f"only in {where}: copied from it (keys: union)"
        elif partial:
            try:
                m.check_model_count(len(present))
                m.validate(p, len(present), base is not None)
            except InvalidValueError as exc:
                copy_why = f"only in {_which(present)}; method {m.name!r} cannot merge {len(present)} model(s) ({exc.message}): copied from {where}"
        if copy_why:
            tensors.append(TensorPlan(key, info.shape, info.dtype, out_dtype or info.dtype, "copy", None, {}, layer, False,
                                      rescale, rule=rule_index, reason=copy_why, models=(present[0],)))  # fmt: skip
            continue
        if partial and isinstance(target, int) and target % k not in present:
            align = False  # the target model lacks this tensor: merged as it is
        if base is not None and lenient:
            _check_base(base, ref if key in ref.infos else models[present[0]], key, info.shape, kp.rows, dtype_free)
        tensors.append(TensorPlan(key, info.shape, info.dtype, out_dtype or info.dtype, "merge", m.name, p, layer, align,
                                  rescale, rule=rule_index, models=present if partial or kp.rows is not None else None, rows=kp.rows,
                                  row_source=kp.row_source))  # fmt: skip
    warnings = []
    if stage.slices:
        from wsa_cli.merge.slices import config_warnings

        tensors = [_with_origin(t, models) for t in tensors]
        if stage.output is not None and stage.output.is_folder:
            warnings += config_warnings(models[0].view)
    if buffers_copied and stage.keys != "union":
        shown = ", ".join(buffers_copied[:5]) + (f" and {len(buffers_copied) - 5} more" if len(buffers_copied) > 5 else "")
        warnings.append(f"{len(buffers_copied)} int/bool buffer(s) are not in every model and are copied from the first "
                        f"model that has them: {shown}")  # fmt: skip
    if dropped:
        shown = ", ".join(d["key"] for d in dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        warnings.append(f"keys: intersection drops {len(dropped)} tensor(s) not in every model: {shown}")
    if resized:
        key, there, here = resized[0]
        warnings.append(f"{target}: {len(resized)} layer(s) of the scope file were measured on tensors of another size "
                        f"(e.g. {key!r}: {there} values there, {here} here); check that the file belongs to these models")  # fmt: skip
    for i, hits in enumerate(rule_hits):
        if hits == 0:
            rule = stage.overrides[i]
            raise _cfg(recipe, rule.line, f"overrides[{i}] matches no floating-point tensor ({', '.join(rule.match)})")

    # output, extra files, permutation
    temporary = out_spec is None
    # an intermediate stage writes into this run's own hidden folder: no user file can have its name
    output = out_spec.path if out_spec is not None else stage_folder / f"{stage.name}.safetensors"
    copy_files = _copy_files(recipe, stage, models, output)
    if stage.permutation is not None:
        _check_permutation(recipe, stage, models)
    plan = StagePlan(
        spec=stage, models=models, base=base, tensors=tensors, output=output, temporary=temporary, scope=scope,
        weights=weights, copy_files=copy_files, max_shard_bytes=_shard_bytes(out_spec, models[0], output),
        warnings=warnings, dropped=dropped,
    )  # fmt: skip
    inputs = plan.input_paths()
    check_outputs(plan.written_paths, inputs, force=force, output=output)  # model, shards, index, report: one check
    if out_spec is not None and not out_spec.report and plan.report_path.is_file():
        # not deleted (it may be the user's), but it describes an older model once this one is written
        plan.warnings.append(f"{plan.report_path} is left from an earlier merge: output.report is false, so it is not "
                             "rewritten and will not describe the new model")  # fmt: skip
    if out_spec is not None:
        check_output_kind(output)  # a missing output folder is created when writing
        if force and plan.folder_output and output.is_dir():
            check_replaceable(output)  # --force replaces an earlier wsa output, never a folder holding other files
    return plan


def _slice_inputs(recipe: Recipe, stage: StageSpec) -> tuple[list[InputPlan], InputPlan | None]:
    """A ``slices:`` stage's models and base: one renaming view per source index (see :mod:`wsa_cli.merge.slices`)."""
    from wsa_cli.merge.slices import plan_views

    views, base_view = plan_views(recipe, stage)

    def as_input(v: Any, label: str, weight: float) -> InputPlan:
        ref = ModelRef(path=v.refs[0].path, stage=None, weight=weight, line=v.refs[0].line, text=label)
        return InputPlan(ref, dict(v.infos), v.refs[0].path, extra_files=list(v.extra_files), files=list(v.files), view=v)

    def label(v: Any, i: int | None) -> str:
        names = "+".join(r.text for r in v.refs)
        return f"slices.sources[{i}]({names})" if i is not None else f"slices.base({names})"

    models = [as_input(v, label(v, i), v.refs[0].weight) for i, v in enumerate(views)]
    base = as_input(base_view, label(base_view, None), 1.0) if base_view is not None else None
    return models, base


def _with_origin(t: TensorPlan, models: Sequence[InputPlan]) -> TensorPlan:
    from dataclasses import replace

    picked = t.models if t.models is not None else tuple(range(len(models)))
    picked = picked[:1] if t.action == "copy" else picked
    return replace(t, origin=tuple(models[i].view.source_text(t.key) for i in picked))


def _shard_bytes(out_spec: OutputSpec | None, first: InputPlan, output: Path) -> int | None:
    """The output's maximum shard size: ``output.shard_size``; else, for a folder output whose first
    model is sharded (several weight files), its largest shard's size on disk, so the merge is split
    in about the same pieces; else None (one file)."""
    if out_spec is None or output.suffix == ".safetensors":
        return None
    if out_spec.shard_size is not None:
        return out_spec.shard_size
    sharded = first.view.sharded if first.view is not None else len(first.files) > 1  # a slices view spans several checkpoints
    if first.ref.stage is None and sharded:
        return max(f.stat().st_size for f in first.files)
    return None


@dataclass(frozen=True)
class _KeyPlan:
    """One output key: its shape/dtype, the models holding it, and (rows differ) the row split."""

    key: str
    info: TensorInfo
    present: tuple[int, ...]
    rows: int | None = None  # rows every model holding the key has
    row_source: int | None = None  # the model whose shape the output has and whose other rows it copies


def _which(present: Sequence[int]) -> str:
    return ", ".join(f"models[{i}]" for i in present)


def _line_up(recipe: Recipe, stage: StageSpec, models: Sequence[InputPlan], dtype_free: bool) -> tuple[list[_KeyPlan], list[dict[str, Any]]]:
    """The output's keys under the stage's ``keys:`` and ``rows:`` policies (docs/merge.md), and the dropped keys.

    Keys come in the first model's order, then keys only later models hold. Wherever two models hold
    a key its shape (but for ``rows:``, the first dimension) and dtype must agree."""
    k = len(models)
    order: dict[str, list[int]] = {}
    for i, m in enumerate(models):
        for key in m.infos:
            order.setdefault(key, []).append(i)
    row_from = None if stage.rows == "error" else 0 if stage.rows == "common" else int(stage.rows)
    if row_from is not None and not 0 <= row_from < k:
        raise _cfg(recipe, stage.lines.get("rows"), f"rows.from {row_from} is out of range for {k} models")
    rows_differ = row_from is not None
    if stage.keys == "strict":  # int/bool buffers only some models hold are copied from the first that has them
        skip = frozenset(key for key, p in order.items() if len(p) < k and not models[p[0]].infos[key].dtype.is_floating_point)
        for i, m in enumerate(models[1:], start=1):
            _check_fit(models[0], m, f"models[{i}] does not line up with models[0]", dtype_free, skip=skip, rows_differ=rows_differ)
    plans: list[_KeyPlan] = []
    dropped: list[dict[str, Any]] = []
    for key, present in order.items():
        if len(present) < k and stage.keys == "intersection":
            missing = [i for i in range(k) if i not in present]
            dropped.append({"key": key, "missing_in": missing, "why": f"not in {_which(missing)} (keys: intersection)"})
            continue
        first = models[present[0]]
        for i in present[1:]:
            _check_same(first, models[i], key, f"models[{i}] does not line up with models[{present[0]}]", dtype_free, rows_differ)
        info = first.infos[key]
        shapes = {models[i].infos[key].shape for i in present}
        if len(shapes) == 1:
            plans.append(_KeyPlan(key, info, tuple(present)))
            continue
        src = row_from if row_from in present else present[0]
        plans.append(_KeyPlan(key, models[src].infos[key], tuple(present), min(s[0] for s in shapes), src))
    return plans, dropped


def _check_base(base: InputPlan, ref: InputPlan, key: str, shape: tuple[int, ...], rows: int | None, dtype_free: bool) -> None:
    """Under ``keys:``/``rows:`` policies the base must hold every merged key (at least the merged rows)."""
    what = "base model does not fit the models"
    o = base.infos.get(key)
    if o is None:
        raise MismatchError(f"{what}: tensor is missing (present in {ref.shown})", path=base.shown, key=key)
    if rows is not None and len(o.shape) == len(shape) and o.shape[1:] == shape[1:] and o.shape[0] >= rows:
        return
    if o.shape != shape:
        raise MismatchError(f"{what}: has shape {o.shape}, expected {shape} as in {ref.shown}", path=base.shown, key=key)
    _check_same(ref, base, key, what, dtype_free, False)


def _side_files(folder: Path | None, extra_files: Sequence[Path]) -> list[tuple[str, Path]]:
    """A template model's non-weight files: its folder's whole tree, or (an index or file input) its extra files."""
    if folder is not None and folder.is_dir():
        return side_tree(folder)
    return [(p.name, p) for p in extra_files if p.name != CARD_NAME]


def _copy_files(recipe: Recipe, stage: StageSpec, models: Sequence[InputPlan], output: Path) -> list[tuple[str, Path]]:
    out = stage.output
    if out is None or out.copy_files_from is False or output.suffix == ".safetensors":
        return []
    source = out.copy_files_from
    line = out.lines.get("copy_files_from")

    def of(m: InputPlan) -> list[tuple[str, Path]]:
        return _side_files(m.path if m.ref.stage is None else None, m.extra_files)

    if source is None:
        return of(models[0])
    if isinstance(source, int) and not isinstance(source, bool):
        if not 0 <= source < len(models):
            raise _cfg(recipe, line, f"output.copy_files_from {source} is out of range for {len(models)} models")
        files = of(models[source])
        if not files:
            raise _cfg(recipe, line, f"models[{source}] ({models[source].label}) has no config/tokenizer files to copy")
        return files
    assert isinstance(source, Path)
    with open_checkpoint(source) as reader:
        return _side_files(source, reader.extra_files())


def _check_permutation(recipe: Recipe, stage: StageSpec, models: Sequence[InputPlan]) -> None:
    """The ``permutation:`` block: reference in range, spec valid for the models."""
    perm = stage.permutation
    assert perm is not None
    k = len(models)
    if not 0 <= perm.reference < k:
        raise _cfg(recipe, perm.lines.get("reference", perm.line), f"permutation.reference {perm.reference} is out of range for {k} models")
    from wsa_cli.permute.specfile import load_spec

    shapes = {key: info.shape for key, info in models[perm.reference].infos.items()}
    try:
        load_spec(str(perm.spec), shapes=shapes)  # resolves and checks the spec against the models' shapes
    except WsaError as exc:
        line = perm.lines.get("spec", perm.line)
        raise _cfg(recipe, line, f"permutation.spec {perm.spec}: {exc}") from None


def plan_recipe(recipe: Recipe, *, force: bool = False) -> list[StagePlan]:
    """Validate every stage of ``recipe`` against the models' headers and plan every tensor.

    Raises :class:`ConfigError` (recipe line), :class:`MismatchError` (key and file),
    :class:`InputNotFoundError`, :class:`CheckpointError` or :class:`OutputError`; reads no tensor.

    Example:
        >>> from wsa_cli.recipe import load_recipe
        >>> plans = plan_recipe(load_recipe("recipes/average.yaml"))  # doctest: +SKIP
        >>> plans[-1].tensors[0].action  # doctest: +SKIP
        'merge'
    """
    final = recipe.stages[-1].output
    assert final is not None  # enforced by the schema
    stage_folder = stage_folder_for(final.path)
    done: dict[str, StagePlan] = {}
    plans = []
    for stage in recipe.stages:
        plan = _plan_stage(recipe, stage, done, stage_folder, force)
        done[stage.name] = plan
        plans.append(plan)
    inputs = [f for p in plans for f in p.input_paths()]
    for p in plans:  # no stage may write over (or into) what any stage reads
        try:
            check_outputs(p.written_paths, inputs, force=True)
        except OutputError as exc:
            raise OutputError(f"the output of stage {p.spec.name!r} {exc.message}", path=exc.path) from None
    return plans


def stage_folder_for(final_output: Path) -> Path:
    """The hidden folder, next to the final output, where this run's intermediate stages are written.

    Its name carries the process id and a random part (no user file can collide with it, and a
    later run can tell a dead run's leftover from a live one's); the executor removes it at the end.
    """
    return final_output.parent / f".wsa-stages.{temp_tag()}.{secrets.token_hex(4)}.wsa-tmp"
