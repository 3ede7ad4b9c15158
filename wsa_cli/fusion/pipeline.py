"""The Weight Scope Alignment step shared by merge, interpolate, demo and permutation modes.

For every *layer* (a tensor the :class:`~wsa_cli.scope.LayerSelector` selects) the pipeline

1. measures each model's scope ``N(mu_i, s_i^2)`` (population std, float64 statistics),
2. picks the layer's target scope: the fusion of the K scopes (``target="fused"``, default), a
   fixed :class:`Scope`, the entry of a scope file (``wsa scope fuse`` output), or the scope of
   one of the models (an ``int`` index),
3. maps each model's layer onto the target with :func:`~wsa_cli.fusion.rescale_tensor`
   (``affine`` by default; ``std`` keeps the mean; ``none`` leaves it). A constant layer
   (``s_i == 0``) is never rescaled and is reported as such by the caller.

Everything here works one tensor at a time: :func:`compute_target_scopes` reads tensor ``k`` of
every model, measures it, drops it, and moves on, so memory stays at one tensor per model.

Example:
    >>> import torch
    >>> a = {"w": torch.tensor([[0.0, 2.0]])}
    >>> b = {"w": torch.tensor([[4.0, 8.0]])}
    >>> opts = ScopeOptions()
    >>> table = compute_target_scopes([a, b], opts, "cpu")
    >>> per_model, target = table["w"]
    >>> per_model, target
    ([Scope(mean=1.0, std=1.0), Scope(mean=6.0, std=2.0)], Scope(mean=3.5, std=2.958039891549808))
    >>> align_tensor(a["w"], per_model[0], target, opts)[0]
    tensor([[0.5420, 6.4580]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Union

import torch

from wsa_cli.errors import MismatchError, InvalidValueError
from wsa_cli.fusion.fuse import FUSION_METHODS, fuse_scopes, normalize_weights
from wsa_cli.scope.gaussian import Scope
from wsa_cli.fusion.rescale import RESCALE_MODES, rescale_tensor
from wsa_cli.fusion.scopefile import ScopeTable, load_scope_file
from wsa_cli.io.base import CheckpointReader, numel
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.scope.stats import tensor_scope
from wsa_cli.progress import ProgressFn

#: What a target may be: "fused", a fixed scope, a scope file (path or loaded table), a model index.
Target = Union[str, Scope, ScopeTable, "PathLike[str]", int]
#: A model as the pipeline sees it: a lazy reader or an in-memory state dict.
Source = CheckpointReader | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ScopeOptions:
    """How layer scopes are fused and how layers are aligned (every choice documented in docs/scope.md).

    Fields:
        align: rescale layers onto the target scope (False: tensors pass through unchanged).
        fusion: ``moments`` (default) | ``precision`` | ``stats-mean`` (see :mod:`wsa_cli.fusion.fuse`).
        target: ``"fused"`` (default); a :class:`Scope` applied to every layer; a scope-file path
            or :class:`ScopeTable`; or an ``int`` model index (align everyone onto that model).
        rescale: ``affine`` (default, lands on mean and std) | ``std`` (scale only) | ``none``.
        weights: per-model fusion weights (normalised; None = equal), e.g. client data sizes.
        selector: which tensors are layers (default: floating tensors with ndim >= 2).

    Example:
        >>> ScopeOptions(fusion="precision", weights=[1, 3]).fusion
        'precision'
    """

    align: bool = True
    fusion: str = "moments"
    target: Target = "fused"
    rescale: str = "affine"
    weights: list[float] | None = None
    selector: LayerSelector = field(default_factory=LayerSelector)

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_METHODS:
            raise InvalidValueError(f"unknown fusion method {self.fusion!r}; choose from {', '.join(FUSION_METHODS)}", option="fusion")
        if self.rescale not in RESCALE_MODES:
            raise InvalidValueError(f"unknown rescale mode {self.rescale!r}; choose from {', '.join(RESCALE_MODES)}", option="rescale")
        if isinstance(self.target, bool) or not isinstance(self.target, (str, Scope, ScopeTable, PathLike, int)):
            raise InvalidValueError(f"scope target must be 'fused', a Scope, a scope file or a model index, got {self.target!r}")
        if isinstance(self.target, Scope) and not self.target.std >= 0:
            raise InvalidValueError(f"fixed target scope needs std >= 0, got {self.target}")
        if self.weights is not None:
            object.__setattr__(self, "weights", [float(w) for w in self.weights])

    def resolved(self) -> ScopeOptions:
        """A copy whose scope-file target (a path) is loaded once into a :class:`ScopeTable`."""
        if isinstance(self.target, (PathLike,)) or (isinstance(self.target, str) and self.target != "fused"):
            table = load_scope_file(Path(self.target))  # type: ignore[arg-type]
            return ScopeOptions(self.align, self.fusion, table, self.rescale, self.weights, self.selector)
        return self


def align_coefficients(source: Scope, target: Scope, options: ScopeOptions) -> tuple[float, float, bool]:
    """The alignment as ``y = scale * w + shift``; returns ``(scale, shift, rescaled?)``.

    ``affine``: ``scale = s_t / s_i``, ``shift = mu_t - scale * mu_i``; ``std``: same scale,
    ``shift = mu_i - scale * mu_i``; ``none``, alignment off, or a constant layer: ``(1, 0, False)``.
    Lets a linear merge fold the alignment into its weights (one pass over each input).

    Example:
        >>> align_coefficients(Scope(2.0, 1.0), Scope(0.0, 2.0), ScopeOptions())
        (2.0, -4.0, True)
    """
    if not options.align or options.rescale == "none" or source.std == 0.0:
        return 1.0, 0.0, False
    scale = target.std / source.std
    if options.rescale == "affine":
        return scale, target.mean - scale * source.mean, True
    return scale, source.mean - scale * source.mean, True


def source_keys(src: Source) -> list[str]:
    """Tensor names of a reader or state dict, in storage order."""
    return list(src.keys())


def source_info(src: Source, key: str) -> tuple[tuple[int, ...], torch.dtype]:
    """``(shape, dtype)`` of one tensor without loading it (readers) or from the tensor (dicts)."""
    if isinstance(src, CheckpointReader):
        info = src.info(key)
        return info.shape, info.dtype
    t = src[key]
    return tuple(t.shape), t.dtype


def source_get(src: Source, key: str) -> torch.Tensor:
    """Load one tensor (CPU for readers; as stored for dicts)."""
    return src.get(key) if isinstance(src, CheckpointReader) else src[key]


def source_name(src: Source, index: int) -> str:
    """A name for error messages: the reader's path, or ``model[i]`` for an in-memory dict."""
    return str(src.path) if isinstance(src, CheckpointReader) else f"model[{index}]"


def resolve_target(key: str, scopes: Sequence[Scope], options: ScopeOptions) -> Scope:
    """The target scope of one layer, given the K models' scopes of that layer.

    Raises :class:`MismatchError` when a scope file has no entry for the layer, and
    :class:`InvalidValueError` for a model index out of range.

    Example:
        >>> resolve_target("w", [Scope(0.0, 1.0), Scope(2.0, 1.0)], ScopeOptions(target=1))
        Scope(mean=2.0, std=1.0)
    """
    target = options.target
    if isinstance(target, Scope):
        return target
    if isinstance(target, int):
        if not -len(scopes) <= target < len(scopes):
            raise InvalidValueError(f"scope target model index {target} is out of range for {len(scopes)} models")
        return scopes[target]
    if isinstance(target, str) and target == "fused":
        return fuse_scopes(scopes, options.weights, options.fusion)
    table = target if isinstance(target, ScopeTable) else load_scope_file(Path(target))  # type: ignore[arg-type]
    if key not in table.layers:
        where = "target scope file" if isinstance(target, ScopeTable) else str(target)
        raise MismatchError("the target scope file has no entry for this layer", path=where, key=key)
    return table.layers[key]


def compute_target_scopes(
    sources: Sequence[Source],
    options: ScopeOptions,
    device: torch.device | str | None = None,
    *,
    progress: ProgressFn | None = None,
) -> dict[str, tuple[list[Scope], Scope]]:
    """Per-layer scopes of every model and the layer's target scope.

    Only keys that ``options.selector`` selects (judged on the first model's shape and dtype) are
    returned, in the first model's order. Reads one tensor at a time from each model. Every
    selected key must exist in every model with the same shape (else :class:`MismatchError`).

    Example:
        >>> import torch
        >>> sd = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
        >>> list(compute_target_scopes([sd, sd], ScopeOptions(), "cpu"))
        ['w']
    """
    if not sources:
        raise InvalidValueError("need at least one model to compute scopes")
    opts = options.resolved()
    normalize_weights(opts.weights, len(sources))  # validate the weights once, up front
    dev = torch.device(device) if device is not None else torch.device("cpu")
    first = sources[0]
    keys = [k for k in source_keys(first) if opts.selector.selects(k, *source_info(first, k))]
    _check_aligned(sources, keys, opts.selector)
    table: dict[str, tuple[list[Scope], Scope]] = {}
    for key in keys:
        scopes = [tensor_scope(source_get(src, key), dev) for src in sources]  # one tensor alive at a time
        table[key] = (scopes, resolve_target(key, scopes, opts))
        if progress is not None:
            progress(1, key)
    return table


def _check_aligned(sources: Sequence[Source], keys: Sequence[str], selector: LayerSelector | None = None) -> None:
    """Every model has the first model's layers with the same shapes, and no layer the first lacks
    (it would be dropped without a word): :class:`MismatchError` naming the key and the file."""
    ref_name = source_name(sources[0], 0)
    wanted = set(keys)
    for i, src in enumerate(sources[1:], start=1):
        names = set(source_keys(src))
        for key in keys:
            if key not in names:
                raise MismatchError(f"tensor is missing (present in {ref_name})", path=source_name(src, i), key=key)
            shape, _ = source_info(src, key)
            ref_shape, _ = source_info(sources[0], key)
            if shape != ref_shape:
                raise MismatchError(f"has shape {shape}, expected {ref_shape} as in {ref_name}", path=source_name(src, i), key=key)
        if selector is not None:
            extra = [k for k in source_keys(src) if k not in wanted and selector.selects(k, *source_info(src, k))]
            if extra:
                raise MismatchError(f"layer is not in {ref_name} ({len(extra)} extra layer(s)); the models must have the same layers",
                                    path=source_name(src, i), key=extra[0])  # fmt: skip


def align_tensor(tensor: torch.Tensor, source: Scope, target: Scope, options: ScopeOptions) -> tuple[torch.Tensor, bool]:
    """Map one model's layer (scope ``source``) onto ``target``; return ``(float32+ tensor, rescaled?)``.

    With ``options.align`` off, or ``rescale="none"``, or a constant layer (``source.std == 0``),
    the tensor comes back unchanged (as float32, or float64 for float64 input) with ``False``.

    Example:
        >>> align_tensor(torch.tensor([1.0, 3.0]), Scope(2.0, 1.0), Scope(0.0, 2.0), ScopeOptions())
        (tensor([-2.,  2.]), True)
    """
    if not options.align:
        compute = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.to(torch.float32)
        return compute, False
    return rescale_tensor(tensor, source, target, options.rescale)


def fused_scope_table(
    sources: Sequence[Source],
    options: ScopeOptions,
    device: torch.device | str | None = None,
    *,
    names: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
) -> ScopeTable:
    """The unified scope of every layer as a :class:`ScopeTable` (what ``wsa scope fuse`` writes).

    Example:
        >>> sd = {"w": torch.tensor([[1.0, 3.0]])}
        >>> fused_scope_table([sd], ScopeOptions(), "cpu").layers["w"]
        Scope(mean=2.0, std=1.0)
    """
    table = compute_target_scopes(sources, options, device, progress=progress)
    sizes = {}
    for key in table:
        shape, _ = source_info(sources[0], key)
        sizes[key] = numel(shape)
    return ScopeTable(
        layers={k: target for k, (_, target) in table.items()},
        fusion=options.fusion,
        weights=normalize_weights(options.weights, len(sources)),
        sources=list(names) if names is not None else [source_name(s, i) for i, s in enumerate(sources)],
        numel=sizes,
    )
