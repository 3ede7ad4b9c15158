"""``wsa interpolate``: walk the straight line between two checkpoints and measure the barrier.

Library API (no printing, no exits)::

    from wsa_cli.interpolate import parse_alphas, run_interpolation, resolve_evaluator, ModeOptions
    res = run_interpolation("a.safetensors", "b.safetensors", alphas=parse_alphas("0:1:11"),
                            modes=["naive", "wsa"], evaluator=resolve_evaluator("digits-mlp"))
    res.modes[0].summary["loss_barrier"]

Modules: ``alphas`` (grid parsing), ``path`` (the blend, bit-exact endpoints), ``modes`` (the registry
of interpolation modes), ``barrier`` (every barrier definition), ``evaluators`` (plug-ins and built-in
tasks), ``diagnostics`` (data-free statistics), ``run`` (the orchestration), ``report`` (rows,
CSV, sparklines) and ``plot`` (optional matplotlib figure).
"""

from wsa_cli.interpolate.alphas import parse_alphas
from wsa_cli.interpolate.barrier import BARRIER_METRICS, BarrierSummary, summarize_curve
from wsa_cli.interpolate.diagnostics import DIAGNOSTIC_METRICS, path_diagnostics
from wsa_cli.interpolate.evaluators import Evaluator, load_plugin, resolve_evaluator
from wsa_cli.interpolate.modes import MODES, Mode, ModeOptions, get_mode, parse_modes, register_mode
from wsa_cli.interpolate.path import LazyStateDict, check_compatible, interpolate_state, lerp_tensor
from wsa_cli.interpolate.run import InterpolationResult, ModeCurve, run_interpolation

__all__ = [
    "BARRIER_METRICS",
    "DIAGNOSTIC_METRICS",
    "MODES",
    "BarrierSummary",
    "Evaluator",
    "InterpolationResult",
    "LazyStateDict",
    "Mode",
    "ModeCurve",
    "ModeOptions",
    "check_compatible",
    "get_mode",
    "interpolate_state",
    "lerp_tensor",
    "load_plugin",
    "parse_alphas",
    "parse_modes",
    "path_diagnostics",
    "register_mode",
    "resolve_evaluator",
    "run_interpolation",
    "summarize_curve",
]
