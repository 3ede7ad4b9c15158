"""Reusable named buffers, so a long merge allocates (and page-faults) each working tensor once.

A fresh CPU tensor of tens of MB is a fresh ``mmap``: every page is faulted in and zeroed on first
touch, which on a 2-core machine cost TIES about twice its arithmetic per key. The executor keeps
two output pools (one is written while the other is filled) and one working pool that methods
reach through :attr:`wsa_cli.merge.registry.MethodContext.scratch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Scratch:
    """Flat buffers by name, dtype and device, grown as needed and handed out as views.

    A buffer handed out is valid until the next request for the same name and dtype.

    Example:
        >>> s = Scratch()
        >>> s.get((2, 3), torch.float32, torch.device("cpu")).shape
        torch.Size([2, 3])
        >>> s.get((4,), torch.float32, torch.device("cpu"), "mask").data_ptr() != s.get((6,), torch.float32, torch.device("cpu")).data_ptr()
        True
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype, str], torch.Tensor] = {}

    def get(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device, name: str = "") -> torch.Tensor:
        numel = 1
        for d in shape:
            numel *= int(d)
        key = (name, dtype, str(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel].view(tuple(shape))


__all__ = ["Scratch"]
