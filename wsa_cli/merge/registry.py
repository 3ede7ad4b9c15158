"""The merge-method registry: every method is a named, documented function with typed parameters.

A method combines the K (already scope-aligned, float32+) tensors of one key into one tensor::

    fn(tensors: list[Tensor], base: Tensor | None, weights: list[float], params: dict, ctx: MethodContext) -> Tensor

``weights`` are the recipe's per-model weights as written (default 1.0 each); each method says
whether it normalises them. Published variants are configured instances of one function
(see :mod:`wsa_cli.merge.task_vectors`), not copies. ``wsa methods`` lists this registry.

The built-in methods live one family per module in :mod:`wsa_cli.merge.methods`; each module
lists its methods in a ``METHODS`` tuple, and every module of that package is collected here, so
adding a method is adding one file. Users add methods with :func:`register_method`, or from an
installed package through the entry-point group ``wsa.merge_methods`` (each entry point names a
:class:`MergeMethod`).

Example:
    >>> [m.name for m in all_methods()][:3]
    ['breadcrumbs', 'breadcrumbs_ties', 'copy']
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from wsa_cli.buffers import Scratch
    from wsa_cli.merge.kernel import AlignedInput
    from wsa_cli.scope.stats import RunningScope

from wsa_cli.errors import InvalidValueError
from wsa_cli.registry import Registry


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
    #: the allowed values of a string parameter (None: any)
    choices: tuple[str, ...] | None = None

    @property
    def range_text(self) -> str | None:
        """The allowed range as text: ``[0, 1]``, ``[0, 1)``, ``> 0``, ``<= 1``, ``threshold | exact``
        (a string's choices); None when unbounded.

        Example:
            >>> Param("p", float, 0.5, "", lo=0.0, hi=1.0, hi_open=True).range_text, Param("s", float, 1.0, "").range_text
            ('[0, 1)', None)
        """
        if self.choices is not None:
            return " | ".join(self.choices)
        if self.lo is not None and self.hi is not None:
            return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return None

    def check(self, value: Any) -> Any:
        """Return ``value`` converted to the parameter's type, or raise :class:`InvalidValueError` saying why.

        Numbers must be finite: a range check alone (``x <= 1``) would let NaN through. A number
        (float) parameter also takes a non-empty list of numbers, a gradient over the layers (see
        :mod:`wsa_cli.merge.gradients`): each entry is checked as the number would be.

        Example:
            >>> Param("scale", float, 1.0, "lambda").check(float("nan"))
            Traceback (most recent call last):
            ...
            wsa_cli.errors.InvalidValueError: parameter 'scale' must be a finite number, got nan
        """
        if isinstance(value, (list, tuple)):
            if self.type is not float:
                raise InvalidValueError(f"parameter {self.name!r} takes one value, got the list {list(value)!r} "
                                        "(a list, a gradient over the layers, is only for number parameters)")  # fmt: skip
            if not value:
                raise InvalidValueError(f"parameter {self.name!r}: a gradient needs at least one number, got []")
            out = []
            for i, item in enumerate(value):
                if isinstance(item, (list, tuple)):
                    raise InvalidValueError(f"parameter {self.name!r}: gradient entry {i} must be a number, got {item!r}")
                try:
                    out.append(self.check(item))
                except InvalidValueError as exc:
                    raise InvalidValueError(f"{exc.message} (gradient entry {i})") from None
            return out
        if self.type is bool:
            if not isinstance(value, bool):
                raise InvalidValueError(f"parameter {self.name!r} must be true or false, got {value!r}")
            return value
        if self.type in (int, float) and isinstance(value, float) and not math.isfinite(value):
            raise InvalidValueError(f"parameter {self.name!r} must be a finite number, got {value!r}")
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidValueError(f"parameter {self.name!r} must be an integer, got {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidValueError(f"parameter {self.name!r} must be a number, got {value!r}")
            try:
                value = float(value)
            except OverflowError:  # an int too large for a float
                raise InvalidValueError(f"parameter {self.name!r} must be a finite number, got an integer that large") from None
        elif not isinstance(value, self.type):
            raise InvalidValueError(f"parameter {self.name!r} must be a {self.type.__name__}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            hint = difflib.get_close_matches(str(value), list(self.choices), n=1)
            extra = f"did you mean {hint[0]!r}? " if hint else ""
            raise InvalidValueError(f"parameter {self.name!r} {value!r} is not known; {extra}choose from {', '.join(self.choices)}")
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise InvalidValueError(f"parameter {self.name!r} must be {'>' if self.lo_open else '>='} {self.lo:g}, got {value!r}")
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise InvalidValueError(f"parameter {self.name!r} must be {'<' if self.hi_open else '<='} {self.hi:g}, got {value!r}")
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


@dataclass
class BlockInputs:
    """Everything a block form (:data:`IntoFn`) gets: where to write, the aligned inputs, the rest.

    The executor passes the WSA alignment inside the inputs (``a * x + b`` applied block by
    block), so no aligned copy of a tensor is made.

    Example:
        >>> from wsa_cli.merge.kernel import AlignedInput
        >>> job = BlockInputs(torch.empty(2), [AlignedInput(torch.ones(2))], None, [1.0], {}, MethodContext("w"), torch.float32)
        >>> job.k, job.has_base
        (1, False)
    """

    out: torch.Tensor  # (shape,) written in place, any float dtype
    inputs: list[AlignedInput]  # K inputs of the out's shape, in their stored dtype
    base: AlignedInput | None
    weights: list[float]
    params: Mapping[str, Any]
    ctx: MethodContext
    wide: torch.dtype  # the math dtype (float32, or float64 when an input is float64)
    #: Asked for when the merge reports scopes it does not align with: one accumulator per input and
    #: one for the result. A block form that reads every input block and writes every result block
    #: in flat order may fold each block into them while it is in cache (``RunningScope.add_`` on a
    #: float64 copy: the blocks of :func:`~wsa_cli.scope.stats.tensor_scope`, so the same bits) and
    #: set ``measured``; otherwise the executor measures the inputs and the result after the merge.
    input_scopes: list[RunningScope] | None = None
    output_scope: RunningScope | None = None
    measured: bool = False

    @property
    def k(self) -> int:
        return len(self.inputs)

    @property
    def has_base(self) -> bool:
        return self.base is not None


#: For methods that can read their inputs block by block (see :class:`wsa_cli.merge.kernel.AlignedInput`):
#: ``(job: BlockInputs) -> None`` writes the result into ``job.out``.
IntoFn = Callable[[BlockInputs], None]
#: ``params -> bool``: whether these parameters make the method read the base model.
BaseRule = Callable[[Mapping[str, Any]], bool]
#: ``(params, k, has_base) -> None``: checks that depend on the model count; raises :class:`InvalidValueError`.
ParamCheck = Callable[[Mapping[str, Any], int, bool], None]


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    ``needs_base``: requires ``base:`` in the recipe (``base_rule`` decides instead when the
    parameters do). ``min_models`` / ``max_models`` bound K; ``param_check`` adds checks that
    depend on K. ``reference`` names the paper the formula comes from.
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
    #: optional: whether the base is read, from the parameters (default: ``needs_base``)
    base_rule: BaseRule | None = None
    #: optional: parameter checks that depend on the model count (see :data:`ParamCheck`)
    param_check: ParamCheck | None = None

    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``; unknown names and bad values raise :class:`InvalidValueError`.

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
                raise InvalidValueError(f"method {self.name!r} has no parameter {name!r}{extra}")
            out[name] = known[name].check(value)
        return out

    def check_model_count(self, k: int) -> None:
        """Raise :class:`InvalidValueError` unless ``min_models <= k <= max_models``.

        Example:
            >>> get_method("slerp").check_model_count(2)
        """
        if k < self.min_models:
            raise InvalidValueError(f"method {self.name!r} needs at least {self.min_models} model(s), got {k}")
        if self.max_models is not None and k > self.max_models:
            raise InvalidValueError(f"method {self.name!r} takes at most {self.max_models} model(s), got {k}")

    def uses_base(self, params: Mapping[str, Any]) -> bool:
        """Whether the method reads the base model with these (resolved) parameters.

        Example:
            >>> get_method("ties").uses_base({}), get_method("copy").uses_base({"model": -1})
            (True, True)
        """
        return self.base_rule(params) if self.base_rule is not None else self.needs_base

    def validate(self, params: Mapping[str, Any], k: int, has_base: bool) -> None:
        """Check resolved ``params`` against ``k`` models and the base: :class:`InvalidValueError` when wrong.

        Example:
            >>> get_method("copy").validate({"model": 2}, 2, has_base=False)
            Traceback (most recent call last):
            ...
            wsa_cli.errors.InvalidValueError: copy: model index 2 is out of range for 2 models
        """
        self.check_model_count(k)
        if self.uses_base(params) and not has_base:
            raise InvalidValueError(f"method {self.name!r} needs a base model")
        if self.param_check is not None:
            self.param_check(params, k, has_base)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "reference": self.reference,
            "needs_base": self.needs_base,
            "models": f"{self.min_models}+" if self.max_models is None else (str(self.min_models) if self.min_models == self.max_models else f"{self.min_models}-{self.max_models}"),
            "parameters": [{"name": p.name, "type": p.type.__name__, "default": p.default, "doc": p.doc, "range": p.range_text}
                           for p in self.params],
        }


def builtin_methods() -> list[MergeMethod]:
    """The ``METHODS`` of every module of :mod:`wsa_cli.merge.methods` (modules in sorted order), by name.

    Example:
        >>> "ties" in [m.name for m in builtin_methods()]
        True
    """
    from wsa_cli.merge import methods as package

    found: list[MergeMethod] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found.extend(getattr(module, "METHODS", ()))
    return sorted(found, key=lambda m: m.name)


#: Every merge method by name: the built-ins (loaded on first use), then plug-ins.
METHODS: Registry[MergeMethod] = Registry("merge method", builtin_methods, entry_point_group="wsa.merge_methods")


def register_method(method: MergeMethod) -> MergeMethod:
    """Add a user's method; a name already registered is a programming error (``ValueError``).

    Example:
        >>> import dataclasses
        >>> same = dataclasses.replace(get_method("linear"), name="mean")
        >>> register_method(same).name
        'mean'
        >>> METHODS.unregister("mean")
    """
    if not isinstance(method, MergeMethod):
        raise TypeError(f"register_method takes a MergeMethod, got {type(method).__name__}")
    return METHODS.register(method)


def get_method(name: str) -> MergeMethod:
    """Look a method up by name; unknown names raise :class:`InvalidValueError` with a did-you-mean.

    Example:
        >>> get_method("ties").needs_base
        True
    """
    return METHODS.get(name)


def all_methods() -> list[MergeMethod]:
    """Every registered method (built-ins and plug-ins), sorted by name.

    Example:
        >>> [m.name for m in all_methods()][-2:]
        ['task_arithmetic', 'ties']
    """
    return sorted(METHODS.items(), key=lambda m: m.name)


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i x_i`` accumulated in the tensors' (float32+) dtype, one tensor at a time."""
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights, tensors, strict=True):
        out.add_(t, alpha=float(w))
    return out
