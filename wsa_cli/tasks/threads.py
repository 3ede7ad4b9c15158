"""Run tiny models on one CPU thread.

The built-in models have a few thousand to a few hundred thousand parameters; a matrix multiply
of that size takes microseconds, so PyTorch's intra-op thread pool costs more in hand-offs than it
saves, and on a busy machine (other processes on the same cores) the threads wait on each other:
we measured a 4-epoch digits-mlp training at 0.1 s on one thread and 1.2 s on two with the
machine loaded. Larger models keep PyTorch's setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Models with at most this many parameters train and evaluate on one CPU thread.
SMALL_MODEL_PARAMS = 5_000_000


@contextmanager
def small_model_threads(device: torch.device | str, n_params: int) -> Iterator[None]:
    """Within the block, use one intra-op thread when a small model runs on the CPU; restore after.

    Example:
        >>> with small_model_threads("cpu", 10_000):
        ...     torch.get_num_threads()
        1
    """
    dev = torch.device(device)
    prev = torch.get_num_threads()
    if dev.type != "cpu" or n_params > SMALL_MODEL_PARAMS or prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
