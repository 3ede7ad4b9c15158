"""Map a layer's weights onto a target scope before merging (the WSA rescaling step).

Modes:

* ``affine`` (default): ``(w - mu_i) / s_i * s_t + mu_t`` -- lands exactly on the target mean and
  (population) std.
* ``std``: ``(w - mu_i) * s_t / s_i + mu_i`` -- scale about the layer's own mean, keep the mean.
* ``none``: leave the tensor as it is.

A constant layer (``s_i == 0``) cannot be rescaled; it is returned unchanged and the caller
reports it.

Recipes also accept ``rescale: fp`` (function-preserving, :data:`MODEL_RESCALE_MODES`): it acts
on whole models, not one tensor (a layer is scaled by ``c`` and the next layer by ``1/c``, or the
following BatchNorm absorbs it), so it lives in :mod:`wsa_cli.permute.rescale` and needs a
permutation spec's scaling rules; per tensor it means ``none``.
"""

from __future__ import annotations

import torch

from wsa_cli.errors import InvalidValueError
from wsa_cli.scope.gaussian import Scope

RESCALE_MODES = ("affine", "std", "none")
#: Rescale modes that act on a whole model at once (recipe ``scope.rescale`` only).
MODEL_RESCALE_MODES = ("fp",)


def rescale_tensor(w: torch.Tensor, source: Scope, target: Scope, mode: str = "affine") -> tuple[torch.Tensor, bool]:
    """Rescale ``w`` (scope ``source``) onto ``target``; return ``(tensor, was_rescaled)``.

    Computes in float64 when ``w`` is float64 and in float32 otherwise, returning the compute
    dtype; the caller casts to the output dtype once, after merging.

    Example:
        >>> w = torch.tensor([1.0, 3.0])
        >>> rescale_tensor(w, Scope(2.0, 1.0), Scope(0.0, 2.0))[0]
        tensor([-2.,  2.])
    """
    if mode not in RESCALE_MODES:
        raise InvalidValueError(f"unknown rescale mode {mode!r}; choose from {', '.join(RESCALE_MODES)}", option="rescale")
    compute = w if w.dtype in (torch.float32, torch.float64) else w.to(torch.float32)
    if mode == "none" or source.std == 0.0:
        return compute, False
    scale = target.std / source.std
    if mode == "affine":
        return (compute - source.mean) * scale + target.mean, True
    return (compute - source.mean) * scale + source.mean, True
