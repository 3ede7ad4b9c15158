"""Parameter gradients: a number parameter given as a list is interpolated over the layer index.

mergekit's semantics (its planner read, not run against): a model with ``N`` numbered layers puts
layer ``i`` at ``x = i / (N - 1)`` (``x = 1`` when ``N = 1``); the list's points sit at
``0, 1/(len - 1), ..., 1`` and the value is linear in between (``x * (len - 1)`` split into the
point below and the fraction towards the next). Tensors outside the numbered layers take the
value at ``x = 0`` (the first value) when they come before the layers (embeddings) and at
``x = 1`` (the last value) when they come after them (a final norm, the head): see
:data:`AFTER_LAYERS`.

Example:
    >>> layer_index("model.layers.12.mlp.up_proj.weight"), layer_index("lm_head.weight")
    (12, None)
    >>> [gradient_value([0.0, 1.0], x) for x in (0.0, 0.25, 1.0)]
    [0.0, 0.25, 1.0]
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

#: The layer index of a key: the number after ``layers.``, ``layer.``, ``h.``, ``blocks.`` or
#: ``block.`` (``model.layers.12.``, ``encoder.layer.3.``, ``transformer.h.7.``, ``blocks.2.``);
#: the first such part of the key counts.
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
#: A tensor outside the numbered layers that comes after them (so takes the last value): a part
#: of its key is one of these names (``model.norm.weight``, ``lm_head.weight``, ``transformer.ln_f.bias``).
AFTER_LAYERS = re.compile(r"(?:^|\.)(?:norm|ln_f|final_layer_norm|final_layernorm|final_norm|lm_head|head|"
                          r"embed_out|classifier|score|pooler|output)(?:\.|$)")  # fmt: skip


def layer_index(key: str) -> int | None:
    """The layer number in ``key`` (see :data:`LAYER_INDEX`), or None outside the numbered layers."""
    m = LAYER_INDEX.search(key)
    return int(m.group(1)) if m else None


def layer_count(keys: Iterable[str]) -> int:
    """``N``: one more than the largest layer number among ``keys`` (0 without numbered layers).

    Example:
        >>> layer_count(["embed.weight", "h.0.w", "h.3.w", "ln_f.weight"])
        4
    """
    found = [i for i in (layer_index(k) for k in keys) if i is not None]
    return max(found) + 1 if found else 0


def layer_position(key: str, n_layers: int) -> float:
    """``x`` in [0, 1] of ``key``: ``i / (N - 1)`` for layer ``i`` (1 when N = 1); 0 before the layers, 1 after.

    Example:
        >>> layer_position("h.2.attn.weight", 5), layer_position("wte.weight", 5), layer_position("ln_f.weight", 5)
        (0.5, 0.0, 1.0)
    """
    i = layer_index(key)
    if i is None:
        return 1.0 if AFTER_LAYERS.search(key) else 0.0
    return i / (n_layers - 1) if n_layers > 1 else 1.0


def gradient_value(points: list[float], x: float) -> float:
    """The list ``points`` spread over [0, 1], read at ``x``: linear between neighbouring points."""
    if len(points) == 1:
        return float(points[0])
    scaled = x * (len(points) - 1)
    i0 = min(int(math.floor(scaled)), len(points) - 1)
    i1 = min(i0 + 1, len(points) - 1)
    frac = scaled - i0
    return float((1.0 - frac) * points[i0] + frac * points[i1])


def has_gradient(params: Mapping[str, Any]) -> bool:
    return any(isinstance(v, (list, tuple)) for v in params.values())


def params_at(params: Mapping[str, Any], x: float) -> dict[str, Any]:
    """``params`` with every list (gradient) replaced by its value at position ``x``.

    Example:
        >>> params_at({"density": [0.2, 0.6, 1.0], "scale": 1.0}, 0.75)
        {'density': 0.8, 'scale': 1.0}
    """
    return {k: gradient_value(list(v), x) if isinstance(v, (list, tuple)) else v for k, v in params.items()}


def positions(n_layers: int) -> list[float]:
    """Every ``x`` a key of a model with ``n_layers`` layers can have (the layers', and 0 and 1 outside)."""
    return sorted({0.0, 1.0, *(i / (n_layers - 1) if n_layers > 1 else 1.0 for i in range(n_layers))})
