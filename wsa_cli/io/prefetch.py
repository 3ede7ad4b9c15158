"""Read tensors ahead on a background thread so that I/O overlaps with compute.

File reads (``os.preadv``) and torch kernels both release the GIL, so while the caller computes
on tensor ``k`` the thread is already reading ``k + 1``. Memory stays bounded: at most ``depth``
tensors are in flight besides the one the caller holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def prefetch(load: Callable[[str], T], keys: Iterable[str], *, depth: int = 1) -> Iterator[tuple[str, T]]:
    """Yield ``(key, load(key))`` in order, loading up to ``depth`` keys ahead in a thread.

    While the caller holds key ``i``, at most keys ``i+1 .. i+depth`` have been loaded or are
    loading (so ``depth + 1`` results exist at once: size reusable buffers by that). An exception
    from ``load`` is raised in the caller at the key where it happened; leaving the loop early
    (break, error) cancels what is queued and waits for the one load in flight.

    Example:
        >>> with open_checkpoint("model.safetensors") as r:  # doctest: +SKIP
        ...     for key, tensor in prefetch(r.get, r.keys()):
        ...         ...
    """
    if depth <= 0:
        for key in keys:
            yield key, load(key)
        return
    pending: deque[tuple[str, Future[T]]] = deque()
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
