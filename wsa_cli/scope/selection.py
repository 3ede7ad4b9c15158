"""Which tensors count as *layers* whose scope is measured, fused and aligned.

Default rule: floating-point tensors with ``ndim >= 2`` (weight matrices, conv kernels,
embeddings). Biases, norm scales and buffers are not layers by default; ``include`` patterns add
them back, ``exclude`` patterns remove layers. A pattern is a shell glob matched against the full
key (``*.weight``, ``encoder.*``), or a regular expression when prefixed with ``re:``. Exclude wins
over include.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from wsa_cli.errors import InvalidValueError


def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise InvalidValueError(f"bad regular expression {pattern!r}: {exc}") from None
    return re.compile(fnmatch.translate(pattern))


def matches_any(key: str, patterns: Sequence[str]) -> bool:
    """True when ``key`` matches one of the glob / ``re:`` patterns.

    Example:
        >>> matches_any("fc1.weight", ["*.weight"]), matches_any("fc1.bias", ["re:^fc\\\\d\\\\.w"])
        (True, False)
    """
    for pattern in patterns:
        rx = _compile(pattern)
        # globs describe the whole key; a regex may match anywhere (anchor it with ^...$ if needed)
        if (rx.search(key) if pattern.startswith("re:") else rx.fullmatch(key)) is not None:
            return True
    return False


@dataclass(frozen=True)
class LayerSelector:
    """Decides whether a tensor is a layer, from its key, shape and dtype.

    Example:
        >>> sel = LayerSelector(include=["*.bias"])
        >>> sel.selects("fc.bias", (10,), torch.float32), sel.selects("fc.weight", (10, 4), torch.float16)
        (True, True)
    """

    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    min_ndim: int = 2

    def __post_init__(self) -> None:
        for p in (*self.include, *self.exclude):
            _compile(p)  # fail early on a bad regex
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def selects(self, key: str, shape: Sequence[int], dtype: torch.dtype) -> bool:
        if not dtype.is_floating_point:
            return False
        if self.exclude and matches_any(key, self.exclude):
            return False
        if len(shape) >= self.min_ndim:
            return True
        return bool(self.include) and matches_any(key, self.include)
