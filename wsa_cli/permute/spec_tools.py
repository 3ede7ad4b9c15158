"""The ``wsa spec`` subcommands as library calls: get a spec (infer, guess, template), list, check.

Each returns a result: a spec (:class:`SpecResult`: its YAML, written to a file or shown),
the built-in templates (:class:`TemplateList`) or a check (:class:`SpecCheckResult`).

Example:
    >>> list_templates().templates[0]["name"]
    'digits-mlp'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsa_cli.permute.spec import PermutationSpec
from wsa_cli.results import Result, Table, Text, View


@dataclass
class SpecResult(Result):
    """A spec, as YAML: written to ``output``, or shown when ``output`` is None."""

    command = "spec"

    spec: PermutationSpec
    text: str
    output: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"output": None if self.output is None else str(self.output), "spec": self.spec.to_dict()}

    def render(self) -> list[View]:
        return [] if self.output is not None else [Text(self.text)]


@dataclass
class TemplateList(Result):
    """The built-in spec templates."""

    command = "spec-list"

    templates: list[dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        return {"templates": self.templates}

    def rows(self) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        return ("name", "description"), list(self.templates)

    def render(self) -> list[View]:
        return [Table("built-in spec templates", ("name", "description"), [[t["name"], t["description"]] for t in self.templates])]


@dataclass
class SpecCheckResult(Result):
    """What ``wsa spec check`` found: groups, covered keys, scaling rules, the functional check."""

    command = "spec-check"

    spec: str
    checkpoint: str
    report: Any  # wsa_cli.permute.check.CheckReport
    axes_per_group: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "checkpoint": self.checkpoint, "ok": True, **self.report.to_dict()}

    def rows(self) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        return ("group", "size", "axes"), [{"group": g, "size": n, "axes": self.axes_per_group[g]} for g, n in self.report.groups.items()]

    def render(self) -> list[View]:
        columns, rows = self.rows()
        r = self.report
        caption = (f"{r.permuted_keys} of {r.keys} keys permuted; "
                   f"{len(r.scaling_possible)} layers can be rescaled function-preservingly")  # fmt: skip
        return [Table(f"{self.spec}: ok for {self.checkpoint}", columns, [[row[c] for c in columns] for row in rows], caption=caption)]

    def all_notes(self) -> list[str]:
        lines = [f"no function-preserving scale for {k}: {why}" for k, why in self.report.scaling_not_possible.items()]
        f = self.report.functional
        if f is not None:
            msg = f"functional check passed: random permutations change outputs by at most {f['permutation_max_abs_diff']:.3g}"
            if "rescale_max_abs_diff" in f:
                msg += f", random scalings by at most {f['rescale_max_abs_diff']:.3g}"
            lines.append(msg + f" (outputs up to {f['output_max_abs']:.3g})")
        return [*lines, *self.notes]


def _shapes(checkpoint: str | Path, container_key: str | None = None, strip_prefix: str | None = None) -> dict[str, tuple[int, ...]]:
    from wsa_cli.io import open_checkpoint

    with open_checkpoint(checkpoint, container_key=container_key, strip_prefix=strip_prefix) as r:
        return {i.key: tuple(i.shape) for i in r.infos()}


def _emit(spec: PermutationSpec, header: str, out: str | Path | None, *, force: bool, inputs: Sequence[str | Path] = (),
          with_sizes: bool = True) -> SpecResult:  # fmt: skip
    """Render ``spec``; write it atomically to ``out`` (never over the checkpoint it was read from)."""
    from wsa_cli.io import atomic_write_text, check_output
    from wsa_cli.permute.specfile import render_spec

    text = render_spec(spec, header=header, with_sizes=with_sizes)
    if out is None:
        return SpecResult(spec, text)
    check_output(out, inputs, force=force)
    atomic_write_text(out, text)
    return SpecResult(spec, text, Path(out), notes=[f"wrote {out} ({len(spec.sizes)} groups, {len(spec.axes)} keys)"])


def infer_from_model(model: str, input_shape: tuple[int, ...] | None, out: str | Path | None = None, *,
                     force: bool = False) -> SpecResult:  # fmt: skip
    """Trace a model (a built-in task name or ``package.module:factory``) and derive its spec."""
    from wsa_cli.errors import InvalidValueError
    from wsa_cli.permute.factory import load_model_source
    from wsa_cli.permute.infer import infer_spec
    from wsa_cli.tasks import TASKS

    source = load_model_source(model, input_shape)
    if source.input_shape is None:
        raise InvalidValueError(f"model {model!r} needs an input shape (e.g. 3,32,32) to be traced", option="input_shape")
    spec = infer_spec(source.fresh(None), source.input_shape)
    header = f"permutation spec inferred by wsa spec infer --model {model} --input-shape " + ",".join(map(str, source.input_shape))
    return _emit(spec, header, out, force=force, with_sizes=model not in TASKS)  # a task comes in any width


def guess_from_checkpoint(checkpoint: str | Path, out: str | Path | None = None, *, force: bool = False,
                          container_key: str | None = None, strip_prefix: str | None = None) -> SpecResult:  # fmt: skip
    """Guess a spec from a checkpoint's names and shapes (plain chains only; refuses anything unsure)."""
    from wsa_cli.permute.guess import guess_spec

    spec = guess_spec(_shapes(checkpoint, container_key, strip_prefix))
    header = (f"permutation spec guessed from {Path(checkpoint).name}: assumes a plain chain in storage order.\n"
              "Verify with: wsa spec check SPEC CKPT --model package.module:factory")  # fmt: skip
    return _emit(spec, header, out, force=force, inputs=(checkpoint,))


def template_for_checkpoint(name: str, checkpoint: str | Path | None, out: str | Path | None = None, *, force: bool = False,
                            container_key: str | None = None, strip_prefix: str | None = None,
                            config: str | Path | None = None) -> SpecResult:  # fmt: skip
    """A built-in template filled in for a checkpoint, or a transformer template filled from its ``config.json``.

    Transformer templates (``bert``, ``gpt2``, ``llama``) read ``config`` (default: the
    ``config.json`` next to ``checkpoint``); with a checkpoint the spec is also resolved against it.
    """
    from wsa_cli.errors import UsageError
    from wsa_cli.permute.hf_templates import CONFIG_TEMPLATES, config_spec, read_config
    from wsa_cli.permute.templates import BUILTIN_TEMPLATES, builtin_spec

    if name in CONFIG_TEMPLATES:
        if config is None and checkpoint is None:
            raise UsageError(f"the {name} template needs the model's config.json: --config FILE (or a checkpoint next to it)")
        cfg_path = Path(config) if config is not None else Path(checkpoint).parent / "config.json"  # type: ignore[arg-type]
        shapes = _shapes(checkpoint, container_key, strip_prefix) if checkpoint is not None else None
        spec = config_spec(name, read_config(cfg_path), shapes, config_path=cfg_path)
        header = f"wsa spec template {name} --config {cfg_path}: {CONFIG_TEMPLATES[name][1]}"
        return _emit(spec, header, out, force=force, inputs=tuple(p for p in (checkpoint, cfg_path) if p is not None))
    if checkpoint is None:
        raise UsageError(f"the {name} template needs a checkpoint: wsa spec template {name} CKPT")
    spec = builtin_spec(name, _shapes(checkpoint, container_key, strip_prefix))
    return _emit(spec, f"wsa spec template {name}: {BUILTIN_TEMPLATES[name][0]}", out, force=force, inputs=(checkpoint,))


def list_templates() -> TemplateList:
    """The built-in templates with a one-line description each."""
    from wsa_cli.permute.templates import BUILTIN_TEMPLATES

    from wsa_cli.permute.hf_templates import CONFIG_TEMPLATES

    rows = [{"name": n, "description": d} for n, (d, _) in BUILTIN_TEMPLATES.items()]
    return TemplateList(rows + [{"name": n, "description": d + " (--config)"} for n, (_, d, _) in CONFIG_TEMPLATES.items()])


def check_spec(spec: str | Path, checkpoint: str | Path, *, model: str | None = None, input_shape: tuple[int, ...] | None = None,
               seed: int = 0, container_key: str | None = None, strip_prefix: str | None = None) -> SpecCheckResult:  # fmt: skip
    """Check a spec against a checkpoint; with ``model`` also permute (and scale) at random and compare outputs."""
    from wsa_cli.errors import InvalidValueError
    from wsa_cli.io import open_checkpoint
    from wsa_cli.permute.check import functional_check, structural_report
    from wsa_cli.permute.factory import load_model_source
    from wsa_cli.permute.specfile import load_spec

    with open_checkpoint(checkpoint, container_key=container_key, strip_prefix=strip_prefix) as r:
        state = r.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    resolved = load_spec(spec, shapes=shapes, checkpoint=checkpoint)
    report = structural_report(resolved, shapes)
    if model is not None:
        source = load_model_source(model, input_shape, checkpoint=checkpoint)
        if source.input_shape is None:
            raise InvalidValueError(f"model {model!r} needs an input shape (e.g. 3,32,32)", option="input_shape")
        report.functional = functional_check(resolved, state, source, seed=seed)
    sites = resolved.sites()
    axes = {g: len(sites.get(g, [])) for g in report.groups}
    return SpecCheckResult(str(spec), str(checkpoint), report, axes)
