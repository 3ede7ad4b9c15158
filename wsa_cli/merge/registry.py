"""The merge-method registry: every method is a named, documented function with typed parameters.

A method combines the K (already scope-aligned, float32+) tensors of one key into one tensor::

    fn(tensors: list[Tensor], base: Tensor | None, weights: list[float], params: dict, ctx: MethodContext) -> Tensor

``weights`` are the recipe's per-model weights as written (default 1.0 each); each method says
whether it normalises them. Published variants are configured instances of one function
(see :mod:`wsa_cli.merge.task_vectors`), not copies. ``wsa methods`` lists this registry.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from wsa_cli.merge.buffers import Scratch

from wsa_cli.errors import UsageError


@dataclass(frozen=True)
class Param:
    """One method parameter: name, Python type, default, one-line doc and an optional range check.

    Example:
        >>> Param("t", float, 0.5, "interpolation factor", lo=0.0, hi=1.0).check(0.3)
        0.3
    """

    name: str
    type: type
    default: Any
    doc: str
    lo: float | None = None
    hi: float | None = None
    #: open interval ends (lo < x rather than lo <= x)
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value: Any) -> Any:
        """Return ``value`` converted to the parameter's type, or raise :class:`UsageError` saying why."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise UsageError(f"parameter {self.name!r} must be true or false, got {value!r}")
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"parameter {self.name!r} must be an integer, got {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"parameter {self.name!r} must be a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, self.type):
            raise UsageError(f"parameter {self.name!r} must be a {self.type.__name__}, got {value!r}")
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise UsageError(f"parameter {self.name!r} must be {'>' if self.lo_open else '>='} {self.lo:g}, got {value!r}")
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise UsageError(f"parameter {self.name!r} must be {'<' if self.hi_open else '<='} {self.hi:g}, got {value!r}")
        return value


@dataclass(frozen=True)
class MethodContext:
    """What a method may need besides the tensors: the key (for seeded randomness), seed, device,
    and a pool of reusable working buffers (``None``: the method allocates its own)."""

    key: str
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    scratch: Scratch | None = field(default=None, compare=False, repr=False)

    def generator_seed(self, index: int) -> int:
        """A stable 63-bit seed for model ``index`` at this key (independent of device and key order).

        Example:
            >>> MethodContext("fc.weight", seed=0).generator_seed(1) == MethodContext("fc.weight", seed=0).generator_seed(1)
            True
        """
        digest = hashlib.sha256(f"{self.seed}\0{self.key}\0{index}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


MergeFn = Callable[[list[torch.Tensor], "torch.Tensor | None", list[float], Mapping[str, Any], MethodContext], torch.Tensor]
#: For methods whose result is a fixed linear combination ``sum_i c_i x_i + c_base * base``:
#: ``(weights, params, has_base) -> (c_1..c_K, c_base)``. The executor then folds the WSA
#: rescaling into the coefficients and makes one pass over each input (no aligned copies).
LinearForm = Callable[[list[float], Mapping[str, Any], bool], tuple[list[float], float]]
#: For methods that can read their inputs block by block (see :class:`wsa_cli.merge.kernel.AlignedInput`):
#: ``(out, inputs, base, weights, params, ctx, wide) -> None`` writes the result into ``out``.
#: The executor passes the WSA alignment inside the inputs, so no aligned copy of a tensor is made.
IntoFn = Callable[..., None]


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    ``needs_base``: requires ``base:`` in the recipe. ``min_models`` / ``max_models`` bound K.
    ``reference`` names the paper the formula comes from.
    """

    name: str
    fn: MergeFn
    summary: str
    reference: str
    params: tuple[Param, ...] = ()
    needs_base: bool = False
    min_models: int = 1
    max_models: int | None = None
    #: optional closed linear form of ``fn`` (see :data:`LinearForm`); must agree with ``fn``
    linear_form: LinearForm | None = None
    #: optional block-by-block form of ``fn`` (see :data:`IntoFn`); must agree with ``fn``
    into: IntoFn | None = None

    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``; unknown names and bad values raise :class:`UsageError`.

        Example:
            >>> get_method("slerp").resolve_params({"t": 0.25})["t"]
            0.25
        """
        known = {p.name: p for p in self.params}
        out = {p.name: p.default for p in self.params}
        for name, value in given.items():
            if name not in known:
                hint = difflib.get_close_matches(name, list(known), n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else (f"; it takes {', '.join(known)}" if known else "; it takes none")
                raise UsageError(f"method {self.name!r} has no parameter {name!r}{extra}")
            out[name] = known[name].check(value)
        return out

    def check_model_count(self, k: int) -> None:
        if k < self.min_models:
            raise UsageError(f"method {self.name!r} needs at least {self.min_models} model(s), got {k}")
        if self.max_models is not None and k > self.max_models:
            raise UsageError(f"method {self.name!r} takes at most {self.max_models} model(s), got {k}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "reference": self.reference,
            "needs_base": self.needs_base,
            "models": f"{self.min_models}+" if self.max_models is None else (str(self.min_models) if self.min_models == self.max_models else f"{self.min_models}-{self.max_models}"),
            "parameters": [{"name": p.name, "type": p.type.__name__, "default": p.default, "doc": p.doc} for p in self.params],
        }


METHODS: dict[str, MergeMethod] = {}


def register_method(method: MergeMethod) -> MergeMethod:
    """Add a method to the registry (a later registration with the same name is a bug)."""
    if method.name in METHODS:
        raise UsageError(f"merge method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """Look a method up by name; unknown names raise :class:`UsageError` with a did-you-mean.

    Example:
        >>> get_method("ties").needs_base
        True
    """
    _load_builtins()
    try:
        return METHODS[name]
    except KeyError:
        hint = difflib.get_close_matches(name, list(METHODS), n=1)
        extra = f"did you mean {hint[0]!r}? " if hint else ""
        raise UsageError(f"unknown merge method {name!r}; {extra}known: {', '.join(METHODS)}") from None


def all_methods() -> list[MergeMethod]:
    """Every registered method, in registration order."""
    _load_builtins()
    return list(METHODS.values())


def _load_builtins() -> None:
    # importing the method modules registers them (one small module per method), in listing order
    import importlib

    for name in ("linear", "task_arithmetic", "ties", "dare", "slerp", "copy"):
        importlib.import_module(f"wsa_cli.merge.{name}")


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i x_i`` accumulated in the tensors' (float32+) dtype, one tensor at a time."""
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights, tensors):
        out.add_(t, alpha=float(w))
    return out
