"""Read tensors ahead on a background thread so that I/O overlaps with compute.

File reads (``os.preadv``) and torch kernels both release the GIL, so while the caller computes
on tensor ``k`` the thread is already reading ``k + 1``. Memory stays bounded: at most ``depth``
tensors are in flight besides the one the caller holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch


def prefetch(load: Callable[[str], torch.Tensor], keys: Sequence[str], *, depth: int = 1) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, load(key))`` in order, loading up to ``depth`` keys ahead in a thread.

    An exception from ``load`` is raised in the caller at the key where it happened; closing the
    generator early cancels what is still queued.

    Example:
        >>> with open_checkpoint("model.safetensors") as r:  # doctest: +SKIP
        ...     for key, tensor in prefetch(r.get, r.keys()):
        ...         ...
    """
    if depth <= 0:
        for key in keys:
            yield key, load(key)
        return
    pending: deque[tuple[str, Future[torch.Tensor]]] = deque()
    it = iter(keys)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsa-prefetch") as pool:
        try:
            for key in it:
                pending.append((key, pool.submit(load, key)))
                if len(pending) > depth:
                    done_key, fut = pending.popleft()
                    yield done_key, fut.result()
            while pending:
                done_key, fut = pending.popleft()
                yield done_key, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()
