"""Reusable named buffers, so a long run allocates (and page-faults) each working tensor once.

A fresh CPU tensor of tens of MB is a fresh ``mmap``: every page is faulted in and zeroed on first
touch, which on a 2-core machine cost TIES about twice its arithmetic per key. The executor keeps
two output pools (one is written while the other is filled) and one working pool that methods
reach through :attr:`wsa_cli.merge.registry.MethodContext.scratch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wsa_cli.io.base import numel


class Scratch:
    """Flat buffers by name, dtype and device, grown as needed and handed out as views.

    A buffer handed out is valid until the next request for the same name and dtype. With
    ``pin_memory`` CPU buffers are pinned (asynchronous copies to CUDA). The merge's read buffers
    (one per input and key in flight), its output buffers and the methods' working buffers are
    all pools of this one class; so are the two rotating read buffers of ``wsa inspect``.

    Example:
        >>> s = Scratch()
        >>> s.get((2, 3), torch.float32, torch.device("cpu")).shape
        torch.Size([2, 3])
        >>> s.get((4,), torch.float32, torch.device("cpu"), "mask").data_ptr() != s.get((6,), torch.float32, torch.device("cpu")).data_ptr()
        True
    """

    def __init__(self, *, pin_memory: bool = False) -> None:
        self.pin_memory = pin_memory
        self._bufs: dict[tuple[str, torch.dtype, str], torch.Tensor] = {}

    def get(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device, name: str = "") -> torch.Tensor:
        n = numel(shape)
        key = (name, dtype, str(device))
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            pin = self.pin_memory and torch.device(device).type == "cpu"
            buf = torch.empty(max(n, 1), dtype=dtype, device=device, pin_memory=pin)
            self._bufs[key] = buf
        return buf[:n].view(tuple(shape))

    def bytes(self, nbytes: int, name: str) -> torch.Tensor:
        """A CPU ``uint8`` buffer of ``nbytes`` (for ``reader.get(key, out=...)``), reused by name."""
        return self.get((nbytes,), torch.uint8, torch.device("cpu"), name)


__all__ = ["Scratch"]
