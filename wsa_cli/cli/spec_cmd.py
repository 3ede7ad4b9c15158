"""``wsa spec infer|guess|check|template|list``: get and verify permutation specs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from wsa_cli.cli.common import ForceOpt, FormatOpt, JsonOpt, KeyOpt, OutputFormat, QuietOpt, StripPrefixOpt, finish, flags, resolve_format

app = typer.Typer(
    no_args_is_help=True,
    help="Permutation specs: which tensor axes share a permutation (for wsa align and the permuted modes).",
)

OutOpt = Annotated[
    Optional[str],
    typer.Option("--out", "-o", help="Write the spec YAML here (default: print it on stdout)."),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", help="Model factory package.module:factory (no arguments) or a built-in task name."),
]
ShapeOpt = Annotated[
    Optional[str],
    typer.Option("--input-shape", help="One input's shape without the batch axis, e.g. 3,32,32."),
]
FLAGS = {"input_shape": "--input-shape", "model": "--model", "out": "--out", "config": "--config"}


@app.command("infer")
def infer(
    model: Annotated[str, typer.Option("--model", help="Model factory package.module:factory (no arguments) or a built-in task name.")],
    input_shape: ShapeOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Trace the model with torch.fx and derive its permutation groups and scaling rules."""
    from wsa_cli.permute.factory import parse_input_shape
    from wsa_cli.permute.spec_tools import infer_from_model

    with flags(FLAGS):
        result = infer_from_model(model, parse_input_shape(input_shape), out, force=force)
    finish(result, OutputFormat.table, quiet=quiet)


@app.command("guess")
def guess(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint whose names and shapes form a plain Linear/Conv(+BN) chain.")],
    out: OutOpt = None,
    key: KeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Guess a spec from names and shapes alone (plain chains only; refuses anything unsure, saying why)."""
    from wsa_cli.permute.spec_tools import guess_from_checkpoint

    with flags(FLAGS):
        result = guess_from_checkpoint(checkpoint, out, force=force, container_key=key, strip_prefix=strip_prefix)
    finish(result, OutputFormat.table, quiet=quiet)


@app.command("template")
def template(
    name: Annotated[str, typer.Argument(help="digits-mlp, digits-cnn, mlp, vgg, resnet, or from a config.json: bert, gpt2, llama (see docs/spec.md).")],
    checkpoint: Annotated[
        Optional[str], typer.Argument(help="A checkpoint of that architecture (sizes, biases and names come from it); optional with --config.")
    ] = None,
    config: Annotated[
        Optional[str], typer.Option("--config", help="The model's config.json (bert, gpt2, llama; default: the one next to CHECKPOINT).")
    ] = None,
    out: OutOpt = None,
    key: KeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a built-in template filled in for a checkpoint."""
    from wsa_cli.permute.spec_tools import template_for_checkpoint

    with flags(FLAGS):
        result = template_for_checkpoint(name, checkpoint, out, force=force, container_key=key, strip_prefix=strip_prefix, config=config)
    finish(result, OutputFormat.table, quiet=quiet)


@app.command("list")
def list_templates(fmt: FormatOpt = None, as_json: JsonOpt = False) -> None:
    """List the built-in templates."""
    from wsa_cli.permute.spec_tools import list_templates as templates

    finish(templates(), resolve_format(fmt, as_json))


@app.command("check")
def check(
    spec: Annotated[str, typer.Argument(help="Spec YAML (or a built-in template name).")],
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint the spec must describe.")],
    model: ModelOpt = None,
    input_shape: ShapeOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random permutations, scales and inputs.")] = 0,
    key: KeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check a spec against a checkpoint; with --model also permute every group at random and confirm the outputs do not change."""
    from wsa_cli.permute.factory import parse_input_shape
    from wsa_cli.permute.spec_tools import check_spec

    with flags(FLAGS):
        result = check_spec(spec, checkpoint, model=model, input_shape=parse_input_shape(input_shape), seed=seed,
                            container_key=key, strip_prefix=strip_prefix)  # fmt: skip
    finish(result, resolve_format(fmt, as_json), quiet=quiet)
