"""``wsa align``: put several models into one reference's unit order and write them out.

Reads the reference and each other model, resolves the spec against the reference (and checks
every model has the same keys and shapes), runs weight matching for each model against the
reference (or takes the permutations from a ``--perms`` file), applies them, optionally verifies
with the model factory that each aligned model computes what the original computed, and writes
the aligned checkpoints plus the permutations file. Nothing is written unless every model
aligned and verified.

Example:
    >>> report = run_align(AlignOptions("a.safetensors", ["b.safetensors"], "digits-mlp", "b_al.safetensors"))  # doctest: +SKIP
    >>> report.models[0]["objective"][-1]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import ConfigError, InvalidValueError, MismatchError
from wsa_cli.permute.apply import apply_permutation, check_perms
from wsa_cli.permute.matching import MatchResult, weight_matching
from wsa_cli.progress import ProgressFn
from wsa_cli.results import Result, Table, View
from wsa_cli.permute.spec import PermutationSpec, shapes_of
from wsa_cli.permute.specfile import load_spec

#: aligned outputs must match the originals to this fraction of the output magnitude
VERIFY_RTOL = 1e-4


@dataclass
class AlignOptions:
    """Inputs of one ``wsa align`` run (fields mirror the CLI options)."""

    reference: str | Path
    others: Sequence[str | Path]
    spec: str | Path  # a YAML file or a built-in template name
    out: str | Path
    seed: int = 0
    max_sweeps: int = 100
    device: torch.device | str = "cpu"
    perms_in: str | Path | None = None
    perms_out: str | Path | None = None
    model: str | None = None  # factory for verification
    input_shape: tuple[int, ...] | None = None
    force: bool = False
    container_key: str | None = None  # the state dict's entry inside pickled checkpoints
    strip_prefix: str | None = None  # a prefix removed from every key of every checkpoint


#: CSV and table columns of an align run (one row per aligned model).
ALIGN_COLUMNS = ("source", "output", "sweeps", "objective_start", "objective_end", "seconds", "max_abs_diff")


@dataclass
class AlignReport(Result):
    """What ``wsa align`` did: per model the sweeps, objective, output and verification."""

    command = "align"

    reference: str
    spec: str
    groups: dict[str, int]
    models: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    perms_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "spec": self.spec, "groups": self.groups, "models": self.models,
                "outputs": self.outputs, "perms_file": self.perms_file}

    def rows(self) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        rows = [
            {
                "source": m["source"],
                "output": m.get("output"),
                "sweeps": m["sweeps"],
                "objective_start": m["objective"][0] if m["objective"] else None,
                "objective_end": m["objective"][-1] if m["objective"] else None,
                "seconds": m["seconds"],
                "max_abs_diff": m.get("max_abs_diff"),
            }
            for m in self.models
        ]
        return ALIGN_COLUMNS, rows

    def render(self) -> list[View]:
        _, rows = self.rows()
        return [Table(f"aligned to {self.reference} ({len(self.groups)} groups)", ALIGN_COLUMNS, [[r[c] for c in ALIGN_COLUMNS] for r in rows])]

    def all_notes(self) -> list[str]:
        sweeps = ["objective per sweep for " + m["source"] + ": " + " -> ".join(f"{v:.6g}" for v in m["objective"])
                  for m in self.models if m["objective"]]  # fmt: skip
        return [f"wrote {', '.join(self.outputs)} and {self.perms_file}", *self.notes, *sweeps]


def check_same_shapes(spec_shapes: Mapping[str, Sequence[int]], state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Every model must have the reference's keys and shapes (MismatchError naming the key)."""
    for k, shape in spec_shapes.items():
        if k not in state:
            raise MismatchError("the reference has this tensor but this model does not", path=path, key=k)
        if tuple(state[k].shape) != tuple(shape):
            raise MismatchError(f"has shape {tuple(state[k].shape)}, the reference has {tuple(shape)}", path=path, key=k)
    for k in state:
        if k not in spec_shapes:
            raise MismatchError("this model has a tensor the reference does not", path=path, key=k)


def align_states(
    spec: PermutationSpec,
    ref: Mapping[str, torch.Tensor],
    others: Sequence[Mapping[str, torch.Tensor]],
    *,
    seed: int = 0,
    max_sweeps: int = 100,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> list[tuple[dict[str, torch.Tensor], MatchResult]]:
    """Weight-match each of ``others`` to ``ref`` and return ``(aligned state, result)`` per model."""
    out = []
    for i, other in enumerate(others):
        res = weight_matching(spec, ref, other, seed=seed + i, max_sweeps=max_sweeps, device=device, progress=progress)
        out.append((apply_permutation(spec, other, res.perms), res))
    return out


def default_perms_path(out: Path, several: bool) -> Path:
    """``b_aligned.safetensors`` -> ``b_aligned.perms.json``; a folder gets ``perms.json`` inside."""
    if several:
        return out / "perms.json"
    name = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(name + ".perms.json")


def run_align(opts: AlignOptions, progress: ProgressFn | None = None) -> AlignReport:
    """Do the whole ``wsa align`` run (see the module docstring)."""
    from wsa_cli.io import atomic_write_text, check_output, open_checkpoint, save_safetensors
    from wsa_cli.io.writer import staged_output
    from wsa_cli.permute.check import max_output_diff
    from wsa_cli.permute.factory import load_model_source
    from wsa_cli.permute.permfile import load_perms, perms_document

    if not opts.others:
        raise InvalidValueError("give the reference and at least one model to align to it")
    several = len(opts.others) > 1
    out = Path(opts.out)
    inputs = [Path(opts.reference), *map(Path, opts.others), *([Path(opts.perms_in)] if opts.perms_in else [])]
    if several and out.suffix:
        raise InvalidValueError("with several models to align, the output names a folder (no suffix); each model is written inside", option="out", value=str(out))
    check_output(out, inputs, force=opts.force)
    perms_out = Path(opts.perms_out) if opts.perms_out else default_perms_path(out, several)
    if perms_out.resolve() == out.resolve():  # one would silently replace the other
        raise InvalidValueError("same path as the aligned output; choose another file for the permutations", option="perms_out", value=str(perms_out))
    inside_new_folder = several and perms_out.resolve().parent == out.resolve()
    if not inside_new_folder:  # (a file inside the new output folder cannot exist yet)
        check_output(perms_out, inputs, force=opts.force)
    source = load_model_source(opts.model, opts.input_shape, checkpoint=opts.reference) if opts.model else None
    if source is not None and source.input_shape is None:
        raise InvalidValueError(f"model {opts.model!r} needs an input shape (e.g. 3,32,32) so the outputs can be compared", option="input_shape")

    with open_checkpoint(opts.reference, container_key=opts.container_key, strip_prefix=opts.strip_prefix) as r:
        ref = r.state_dict()
    shapes = shapes_of(ref)
    spec = load_spec(opts.spec, shapes=shapes, checkpoint=opts.reference)
    others = []
    for p in opts.others:
        with open_checkpoint(p, container_key=opts.container_key, strip_prefix=opts.strip_prefix) as r:
            state = r.state_dict()
        check_same_shapes(shapes, state, p)
        others.append(state)

    loaded = load_perms(opts.perms_in) if opts.perms_in else None
    if loaded is not None and len(loaded) != len(others):
        raise ConfigError(f"the permutations file holds {len(loaded)} models but {len(others)} were given", path=opts.perms_in)
    report = AlignReport(str(opts.reference), str(opts.spec), dict(spec.sizes), perms_file=str(perms_out))
    aligned: list[dict[str, torch.Tensor]] = []
    all_perms: list[dict[str, torch.Tensor]] = []
    for i, (path, state) in enumerate(zip(opts.others, others, strict=True)):
        t0 = time.perf_counter()
        if loaded is not None:
            perms = loaded[i]["perms"]
            check_perms(spec, perms, path=str(opts.perms_in))
            res = MatchResult(perms, [])
        else:
            res = weight_matching(spec, ref, state, seed=opts.seed + i, max_sweeps=opts.max_sweeps, device=opts.device, progress=progress)
        new = apply_permutation(spec, state, res.perms)
        entry: dict[str, Any] = {
            "source": str(path),
            "sweeps": res.sweeps,
            "objective": res.objective,
            "seconds": time.perf_counter() - t0,
        }
        if source is not None:
            x = source.example(opts.seed)
            diff, scale = max_output_diff(source, state, new, x, res.perms)
            entry["max_abs_diff"] = diff
            entry["output_max_abs"] = scale
            if diff > VERIFY_RTOL * max(scale, 1e-6):
                raise MismatchError(
                    f"the aligned model computes something else (max abs diff {diff:.3g}, outputs up to {scale:.3g}): "
                    "the spec does not describe this model; run 'wsa spec check' with --model",
                    path=path,
                )
        aligned.append(new)
        all_perms.append(res.perms)
        report.models.append(entry)

    # -- write: only after every model aligned and verified ------------------------------------------
    meta = {"wsa": "align", "reference": str(opts.reference)}
    if not several:
        report.models[0]["output"] = str(out)
        save_safetensors(aligned[0], out, metadata={**meta, "source": str(opts.others[0])}, force=opts.force)
        report.outputs = [str(out)]
    else:
        with staged_output(out.resolve(), directory=True, force=True) as stage:
            names: list[str] = []
            for path, state in zip(opts.others, aligned, strict=True):
                stem = Path(path).name.split(".")[0] or "model"
                name, k = stem, 1
                while name in names:  # b.safetensors and other/b.safetensors must not collide
                    k += 1
                    name = f"{stem}-{k}"
                names.append(name)
                save_safetensors(state, stage / f"{name}.safetensors", metadata={**meta, "source": str(path)})
            report.outputs = [str(out / f"{n}.safetensors") for n in names]
            for e, o in zip(report.models, report.outputs, strict=True):
                e["output"] = o
    doc = perms_document(str(opts.reference), spec.sizes, [{**e, "perms": p} for e, p in zip(report.models, all_perms, strict=True)])
    atomic_write_text(perms_out, _json(doc))
    return report


def _json(doc: Mapping[str, Any]) -> str:
    import json
    import re

    text = json.dumps(doc, indent=2, allow_nan=False)
    # keep each permutation / objective list on one line
    return re.sub(r"\[\s+([-0-9.eE+,\s]+?)\s+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"
