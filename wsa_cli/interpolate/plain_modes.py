"""The two scope modes of ``wsa interpolate``: the checkpoints as they are, and scope-aligned.

* ``naive`` -- the checkpoints as they are.
* ``wsa`` -- each layer of both endpoints mapped onto the pair's target scope (by default their
  fused scope) with the pipeline that ``wsa merge`` uses: same ``fusion``, ``target``,
  ``rescale`` and layer selection options. Tensors keep their stored dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from wsa_cli.fusion.pipeline import align_tensor, compute_target_scopes
from wsa_cli.interpolate.mode_base import ModeOptions, StateDict
from wsa_cli.interpolate.path import LazyStateDict


def prepare_naive(a: StateDict, b: StateDict, opts: ModeOptions) -> tuple[StateDict, StateDict]:
    """Plain interpolation: the endpoints unchanged."""
    return a, b


def prepare_wsa(a: StateDict, b: StateDict, opts: ModeOptions) -> tuple[StateDict, StateDict]:
    """Map every selected layer of both endpoints onto the pair's target scope (the pipeline wsa merge uses).

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
