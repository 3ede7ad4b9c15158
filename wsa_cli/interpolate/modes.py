"""Interpolation modes (contract C4): how the two endpoints are prepared before walking the line.

A mode is a ``prepare(a, b, opts) -> (a', b')`` function over state dicts (any
``Mapping[str, Tensor]``; wsa passes lazy ones); the path is then ``(1 - alpha) a' + alpha b'``.
Several modes run side by side in one ``wsa interpolate`` call, so a table shows the same pair
with and without alignment.

Built-in:

* ``naive`` -- the checkpoints as they are.
* ``wsa`` -- each layer of both endpoints mapped onto the pair's target scope (by default their
  fused scope) with the pipeline that ``wsa merge`` uses (contract C2): same ``fusion``,
  ``target``, ``rescale`` and layer selection options. Tensors keep their stored dtype.

Other areas register more modes (``register_mode``); permutation modes arrive from
``wsa_cli.permute.modes`` (imported at the bottom of this file when it exists).

Example:
    >>> list(MODES)[:2]
    ['naive', 'wsa']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import UsageError
from wsa_cli.fusion.pipeline import ScopeOptions, align_tensor, compute_target_scopes
from wsa_cli.interpolate.path import LazyStateDict

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ModeOptions:
    """Everything a mode may need besides the two endpoints.

    Fields:
        scope: fusion/target/rescale/layer options for scope alignment (C2), as in ``wsa merge``.
        spec: a permutation spec file (modes such as ``permuted`` need it; ``--spec``).
        seed: seed for modes with randomness (e.g. weight matching's sweep order).
        device: where modes do their tensor math.
        model_factory: optional ``callable() -> nn.Module`` for modes that need the architecture.

    Example:
        >>> ModeOptions().scope.fusion
        'moments'
    """

    scope: ScopeOptions = field(default_factory=ScopeOptions)
    spec: Path | None = None
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    model_factory: Callable[[], Any] | None = None


PrepareFn = Callable[[StateDict, StateDict, ModeOptions], "tuple[StateDict, StateDict]"]


@dataclass(frozen=True)
class Mode:
    """A registered interpolation mode."""

    name: str
    prepare: PrepareFn
    description: str


#: Registry of modes by name, in registration order (naive first).
MODES: dict[str, Mode] = {}


def register_mode(name: str, prepare: PrepareFn, description: str) -> Mode:
    """Add (or replace) a mode. ``description`` is one line shown in ``--help`` and the docs.

    Example:
        >>> _ = register_mode("swap", lambda a, b, opts: (b, a), "B to A instead of A to B")
        >>> MODES["swap"].description
        'B to A instead of A to B'
        >>> del MODES["swap"]
    """
    if not name or any(c in name for c in " ,"):
        raise UsageError(f"mode name {name!r} must be non-empty without spaces or commas")
    mode = Mode(name, prepare, description)
    MODES[name] = mode
    return mode


def get_mode(name: str) -> Mode:
    """Look a mode up by name (UsageError listing the known modes when unknown).

    Example:
        >>> get_mode("naive").name
        'naive'
    """
    try:
        return MODES[name]
    except KeyError:
        raise UsageError(f"unknown interpolation mode {name!r}; choose from {', '.join(MODES)}") from None


def parse_modes(spec: str) -> list[Mode]:
    """Parse ``--modes naive,wsa`` into registered modes (in the given order, no duplicates).

    Example:
        >>> [m.name for m in parse_modes("wsa, naive")]
        ['wsa', 'naive']
    """
    names = [n.strip() for n in (spec or "").split(",") if n.strip()]
    if not names:
        raise UsageError(f"--modes is empty; choose from {', '.join(MODES)}")
    seen: list[str] = []
    for n in names:
        if n in seen:
            raise UsageError(f"--modes lists {n!r} twice")
        seen.append(n)
    return [get_mode(n) for n in names]


# -- built-in modes ---------------------------------------------------------------------------


def prepare_naive(a: StateDict, b: StateDict, opts: ModeOptions) -> tuple[StateDict, StateDict]:
    """Plain interpolation: the endpoints unchanged."""
    return a, b


def prepare_wsa(a: StateDict, b: StateDict, opts: ModeOptions) -> tuple[StateDict, StateDict]:
    """Map every selected layer of both endpoints onto the pair's target scope (C2 pipeline).

    Scopes are measured once, one tensor at a time; the rescaling itself happens lazily when a
    tensor is read (so data-free diagnostics never hold a whole model). Rescaled tensors are cast
    back to their stored dtype; non-layer tensors pass through untouched.
    """
    table = compute_target_scopes([a, b], opts.scope, opts.device)

    def aligner(index: int) -> Callable[[str, torch.Tensor], torch.Tensor]:
        def transform(key: str, tensor: torch.Tensor) -> torch.Tensor:
            entry = table.get(key)
            if entry is None:
                return tensor
            scopes, target = entry
            aligned, rescaled = align_tensor(tensor.to(opts.device), scopes[index], target, opts.scope)
            # back to where and what the endpoint was: state dicts handed on are CPU tensors in the stored dtype
            return aligned.to(device=tensor.device, dtype=tensor.dtype) if rescaled else tensor

        return transform

    return LazyStateDict(a, aligner(0)), LazyStateDict(b, aligner(1))


register_mode("naive", prepare_naive, "plain interpolation of the checkpoints as they are")
register_mode("wsa", prepare_wsa, "both endpoints rescaled onto their fused layer scopes first (as in wsa merge)")

# the permutation modes (permuted, permuted+wsa, permuted+fp) register themselves on import; last,
# because they build on the registry above
import wsa_cli.permute.modes  # noqa: E402, F401
