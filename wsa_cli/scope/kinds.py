"""A coarse *kind* for each tensor, from its key, shape and dtype, used in tables and reports.

Kinds: ``integer`` (int/bool), ``complex``, ``buffer`` (BatchNorm running stats, masks, position ids),
``norm`` (norm scales/shifts), ``embedding``, ``conv`` (ndim >= 3 weight), ``matrix`` (2-D
weight), ``bias``, ``vector`` (other 1-D floats), ``scalar``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

#: The leaves of a BatchNorm module's running statistics (``bn1.running_mean``, ``bn1.running_var``).
BN_RUNNING_STATS = ("running_mean", "running_var")
#: Every tensor leaf a BatchNorm module stores.
BN_LEAVES = ("weight", "bias", *BN_RUNNING_STATS, "num_batches_tracked")


def is_bn_running_stat(key: str) -> bool:
    """True for a BatchNorm running-statistics key.

    Example:
        >>> is_bn_running_stat("layer1.bn.running_var"), is_bn_running_stat("layer1.bn.weight")
        (True, False)
    """
    return key.rpartition(".")[2] in BN_RUNNING_STATS


LAYER_KINDS = ("matrix", "conv", "embedding", "bias", "norm", "vector", "scalar", "buffer", "integer", "complex")

_BUFFER = re.compile(r"(running_mean|running_var|num_batches_tracked|position_ids|\.masked_bias|attn\.bias$|inv_freq)")
_NORM = re.compile(r"(^|[._])(norm|ln|bn|layernorm|layer_norm|batchnorm|rmsnorm|ln_f|ln_\d+|bn\d+|norm\d+)([._]|$)", re.I)
_EMBED = re.compile(r"(embed|wte|wpe|tok_emb|pos_emb|lm_head)", re.I)


def layer_kind(key: str, shape: Sequence[int], dtype: torch.dtype) -> str:
    """Classify one tensor.

    Example:
        >>> layer_kind("features.0.weight", (16, 3, 3, 3), torch.float32)
        'conv'
        >>> layer_kind("bn1.num_batches_tracked", (), torch.int64)
        'integer'
    """
    if dtype.is_complex:
        return "complex"
    if not dtype.is_floating_point:
        return "integer"
    if _BUFFER.search(key):
        return "buffer"
    ndim = len(shape)
    if _NORM.search(key) and ndim <= 1:
        return "norm"
    if _EMBED.search(key) and ndim == 2:
        return "embedding"
    if ndim >= 3:
        return "conv"
    if ndim == 2:
        return "matrix"
    if ndim == 1:
        return "bias" if key.endswith("bias") else "vector"
    return "scalar"
