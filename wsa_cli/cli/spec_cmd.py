"""``wsa spec infer|guess|check|template``: get and verify permutation specs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import (
    FormatOpt, ForceOpt, JsonOpt, OutputFormat, note, print_table, resolve_format, to_csv, to_json, write_stdout,
)

app = typer.Typer(
    no_args_is_help=True,
    help="Permutation specs: which tensor axes share a permutation (for wsa align and the permuted modes).",
)

OutOpt = Annotated[
    Optional[str],  # noqa: UP007
    typer.Option("--out", "-o", help="Write the spec YAML here (default: print it on stdout)."),
]
ModelOpt = Annotated[
    Optional[str],  # noqa: UP007
    typer.Option("--model", help="Model factory package.module:factory (no arguments) or a built-in task name."),
]
ShapeOpt = Annotated[
    Optional[str],  # noqa: UP007
    typer.Option("--input-shape", help="One input's shape without the batch axis, e.g. 3,32,32."),
]


def _emit_spec(
    spec, out: str | None, force: bool, header: str, quiet: bool = False, with_sizes: bool = True,  # noqa: ANN001
    inputs: tuple[str, ...] = (),
) -> None:
    from wsa_cli.io import atomic_write_text, check_output

    from wsa_cli.permute.specfile import render_spec

    text = render_spec(spec, header=header, with_sizes=with_sizes)
    if out is None:
        write_stdout(text)
        return
    check_output(out, inputs, force=force)  # never replace the checkpoint the spec was read from
    atomic_write_text(out, text)
    note(f"wrote {out} ({len(spec.sizes)} groups, {len(spec.axes)} keys)", quiet=quiet)


def _shapes(checkpoint: str) -> dict[str, tuple[int, ...]]:
    from wsa_cli.io import open_checkpoint

    with open_checkpoint(checkpoint) as r:
        return {i.key: tuple(i.shape) for i in r.infos()}


@app.command("infer")
def infer(
    model: Annotated[str, typer.Option("--model", help="Model factory package.module:factory (no arguments) or a built-in task name.")],
    input_shape: ShapeOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Trace the model with torch.fx and derive its permutation groups and scaling rules."""
    from wsa_cli.errors import UsageError
    from wsa_cli.permute.factory import load_model_source, parse_input_shape
    from wsa_cli.permute.infer import infer_spec

    source = load_model_source(model, parse_input_shape(input_shape))
    if source.input_shape is None:
        raise UsageError(f"--model {model}: pass --input-shape (e.g. 3,32,32) so the model can be traced")
    from wsa_cli.tasks import TASKS

    spec = infer_spec(source.fresh(None), source.input_shape)
    # a built-in task comes in any width: leave the group sizes to the checkpoint
    _emit_spec(spec, out, force, f"permutation spec inferred by wsa spec infer --model {model} --input-shape "
               + ",".join(map(str, source.input_shape)), with_sizes=model not in TASKS)


@app.command("guess")
def guess(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint whose names and shapes form a plain Linear/Conv(+BN) chain.")],
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Guess a spec from names and shapes alone (plain chains only; refuses anything unsure, saying why)."""
    from wsa_cli.permute.guess import guess_spec

    spec = guess_spec(_shapes(checkpoint))
    _emit_spec(spec, out, force, f"permutation spec guessed from {Path(checkpoint).name}: assumes a plain chain in storage order.\n"
               "Verify with: wsa spec check SPEC CKPT --model package.module:factory", inputs=(checkpoint,))


@app.command("template")
def template(
    name: Annotated[str, typer.Argument(help="digits-mlp, digits-cnn, mlp, vgg or resnet (see docs/spec.md).")],
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint of that architecture (sizes, biases and names come from it).")],
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """Write a built-in template filled in for a checkpoint."""
    from wsa_cli.permute.templates import BUILTIN_TEMPLATES, builtin_spec

    spec = builtin_spec(name, _shapes(checkpoint))
    _emit_spec(spec, out, force, f"wsa spec template {name}: {BUILTIN_TEMPLATES[name][0]}", inputs=(checkpoint,))


@app.command("list")
def list_templates(fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """List the built-in templates."""
    from wsa_cli.permute.templates import BUILTIN_TEMPLATES

    rows = [{"name": n, "description": d} for n, (d, _) in BUILTIN_TEMPLATES.items()]
    out_fmt = resolve_format(fmt, as_json)
    if out_fmt is OutputFormat.table:
        print_table("built-in spec templates", ("name", "description"), [[r["name"], r["description"]] for r in rows])
    elif out_fmt is OutputFormat.csv:
        write_stdout(to_csv(rows, ("name", "description")))
    else:
        write_stdout(to_json(rows))


@app.command("check")
def check(
    spec: Annotated[str, typer.Argument(help="Spec YAML (or a built-in template name).")],
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint the spec must describe.")],
    model: ModelOpt = None,
    input_shape: ShapeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random permutations, scales and inputs.")] = 0,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a spec against a checkpoint; with --model also permute every group at random and confirm the outputs do not change."""
    from wsa_cli.errors import UsageError
    from wsa_cli.io import open_checkpoint
    from wsa_cli.permute.check import functional_check, structural_report
    from wsa_cli.permute.factory import load_model_source, parse_input_shape
    from wsa_cli.permute.specfile import load_spec

    with open_checkpoint(checkpoint) as r:
        state = r.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    resolved = load_spec(spec, shapes=shapes, checkpoint=checkpoint)
    report = structural_report(resolved, shapes)
    if model is not None:
        source = load_model_source(model, parse_input_shape(input_shape))
        if source.input_shape is None:
            raise UsageError(f"--model {model}: pass --input-shape (e.g. 3,32,32)")
        report.functional = functional_check(resolved, state, source, source.input_shape, seed=seed)
    data = {"spec": spec, "checkpoint": checkpoint, "ok": True, **report.to_dict()}
    out_fmt = resolve_format(fmt, as_json)
    if out_fmt is OutputFormat.json:
        write_stdout(to_json(data))
        return
    rows = [[g, n, sum(1 for v in resolved.axes.values() for e in v if e is not None and e.group == g)] for g, n in report.groups.items()]
    if out_fmt is OutputFormat.csv:  # one row per group, like the table
        write_stdout(to_csv([dict(zip(("group", "size", "axes"), r)) for r in rows], ("group", "size", "axes")))
        return
    print_table(f"{spec}: ok for {checkpoint}", ("group", "size", "axes"), rows,
                caption=f"{report.permuted_keys} of {report.keys} keys permuted; "
                f"{len(report.scaling_possible)} layers can be rescaled function-preservingly")
    for k, why in report.scaling_not_possible.items():
        note(f"no function-preserving scale for {k}: {why}")
    if report.functional is not None:
        f = report.functional
        msg = f"functional check passed: random permutations change outputs by at most {f['permutation_max_abs_diff']:.3g}"
        if "rescale_max_abs_diff" in f:
            msg += f", random scalings by at most {f['rescale_max_abs_diff']:.3g}"
        note(msg + f" (outputs up to {f['output_max_abs']:.3g})")
