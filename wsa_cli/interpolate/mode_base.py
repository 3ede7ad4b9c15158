"""What an interpolation mode is: a ``prepare(a, b, options) -> (a', b')`` function over state dicts.

Kept apart from the registry (:mod:`wsa_cli.interpolate.modes`) so that the modules defining
built-in modes and the registry listing them do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsa_cli.fusion.pipeline import ScopeOptions

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ModeOptions:
    """Everything a mode may need besides the two endpoints.

    Fields:
        scope: fusion/target/rescale/layer options for scope alignment, as in ``wsa merge``.
        spec: a permutation spec file (modes such as ``permuted`` need it; ``--spec``).
        seed: seed for modes with randomness (e.g. weight matching's sweep order).
        device: where modes do their tensor math.
        model_factory: optional ``callable() -> nn.Module`` for modes that need the architecture.
        cache: work shared by the modes of one run (weight matching runs once for all the
            permuted modes); :func:`~wsa_cli.interpolate.run_interpolation` gives every run a
            fresh one, so nothing outlives the run.

    Example:
        >>> ModeOptions().scope.fusion
        'moments'
    """

    scope: ScopeOptions = field(default_factory=ScopeOptions)
    spec: Path | None = None
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    model_factory: Callable[[], Any] | None = None
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


PrepareFn = Callable[[StateDict, StateDict, ModeOptions], "tuple[StateDict, StateDict]"]


@dataclass(frozen=True)
class Mode:
    """A named interpolation mode; ``description`` is one line shown in ``--help`` and the docs."""

    name: str
    prepare: PrepareFn
    description: str

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in " ,."):
            raise ValueError(f"mode name {self.name!r} must be non-empty without spaces, commas or dots")
