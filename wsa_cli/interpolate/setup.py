"""Everything an interpolation run needs, checked and parsed from what a user wrote, before any tensor is read.

:func:`prepare_interpolation` turns the options as text (``--alphas 0:1:11``, ``--modes
naive,wsa``, ``--target fused``, ``--fail-above loss_barrier=0.1``...) into the objects
:func:`~wsa_cli.interpolate.run.run_interpolation` takes, and refuses combinations that would
only fail after a long run (a barrier gate without an evaluator, a permuted mode without a
spec). Errors are :class:`~wsa_cli.errors.InvalidValueError` naming the option.

Example:
    >>> setup = prepare_interpolation(alphas="0,0.5,1", modes="naive")
    >>> setup.alphas, [m.name for m in setup.modes]
    ([0.0, 0.5, 1.0], ['naive'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wsa_cli.errors import InvalidValueError
from wsa_cli.gates import Gate, parse_gates
from wsa_cli.interpolate.alphas import parse_alphas
from wsa_cli.interpolate.barrier import BARRIER_METRICS
from wsa_cli.interpolate.diagnostics import DIAGNOSTIC_METRICS
from wsa_cli.interpolate.evaluators import Evaluator, resolve_evaluator
from wsa_cli.interpolate.mode_base import Mode, ModeOptions
from wsa_cli.interpolate.modes import parse_modes
from wsa_cli.interpolate.recipe_options import options_from_recipe, scope_options
from wsa_cli.interpolate.run import gate_metrics


@dataclass
class InterpolationSetup:
    """The parsed, checked inputs of one interpolation run."""

    alphas: list[float]
    modes: list[Mode]
    options: ModeOptions
    evaluator: Evaluator | None
    gates: list[Gate] = field(default_factory=list)


def prepare_interpolation(
    *,
    alphas: str = "0:1:11",
    modes: str = "naive,wsa",
    evaluator: str | None = None,
    recipe: str | Path | None = None,
    fusion: str | None = None,
    target: str | None = None,
    rescale: str | None = None,
    weights: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    spec: str | Path | None = None,
    seed: int | None = None,
    recalibrate_bn: bool = False,
    split: str = "test",
    fail_above: Sequence[str] = (),
    device: str = "auto",
    model_folder: str | Path | None = None,
    limit: int | None = None,
) -> InterpolationSetup:
    """Parse and check every option of an interpolation (see the module doc); reads no tensor.

    ``model_folder`` / ``limit``: for the ``hf-*`` evaluators, the folder with config and tokenizer
    (the CLI passes checkpoint A's) and the number of examples.
    """
    from wsa_cli.device import resolve_device
    from wsa_cli.permute.specfile import check_spec_source

    grid = parse_alphas(alphas)
    mode_list = parse_modes(modes)
    gates = parse_gates(fail_above, gate_metrics([m.name for m in mode_list]))
    for gate in gates:  # a gate that cannot be computed must fail now, not after the run
        if gate.name in BARRIER_METRICS and evaluator is None:
            raise InvalidValueError(f"barrier metrics need an evaluator (data-free gates: {', '.join(DIAGNOSTIC_METRICS)})",
                                    option="fail_above", value=gate.metric)  # fmt: skip
        if gate.name in DIAGNOSTIC_METRICS and evaluator is not None:
            raise InvalidValueError(f"a data-free diagnostic, not computed with an evaluator (gates: {', '.join(BARRIER_METRICS)})",
                                    option="fail_above", value=gate.metric)  # fmt: skip
    if recalibrate_bn and evaluator is None:
        raise InvalidValueError("needs an evaluator (running statistics are re-estimated on its data)", option="recalibrate_bn")
    if split not in ("test", "train"):
        raise InvalidValueError("choose test or train", option="split", value=split)
    dev = resolve_device(device)
    if spec is not None:
        check_spec_source(spec)  # a missing or broken spec fails now, even when no mode ends up using it
    from_recipe = options_from_recipe(recipe, rescale=rescale) if recipe is not None else None
    scope = scope_options(from_recipe, fusion=fusion, target=target, rescale=rescale, weights=weights, include=include, exclude=exclude)
    hf = {"model_folder": model_folder, "limit": limit} if evaluator is not None and evaluator.strip().startswith("hf-") else {}
    if limit is not None and not hf:
        raise InvalidValueError("applies to the hf-* evaluators only", option="limit", value=str(limit))
    ev = resolve_evaluator(evaluator, recalibrate_bn=recalibrate_bn, split=split, **hf) if evaluator is not None else None
    if from_recipe is not None:  # the recipe's permutation block, unless given explicitly
        spec = spec if spec is not None else from_recipe.spec
        seed = seed if seed is not None else from_recipe.seed
    needs_spec = [m.name for m in mode_list if m.name.startswith("permuted")]
    if needs_spec and spec is None:
        raise InvalidValueError(f"is needed by mode '{needs_spec[0]}' (a permutation spec file or a built-in template such as digits-mlp)",
                                option="spec")  # fmt: skip
    opts = ModeOptions(scope=scope, spec=Path(spec) if spec is not None else None, seed=seed if seed is not None else 0, device=dev)
    return InterpolationSetup(grid, mode_list, opts, ev, gates)
