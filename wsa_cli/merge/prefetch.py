"""Overlap reading with compute: a background thread loads the next keys while the current one merges.

The loader runs at most ``depth`` keys ahead (a bounded queue), so memory stays at
``depth + 2`` sets of K tensors: the queued ones, the one being loaded and the one being merged.
Reading releases the GIL inside safetensors/mmap and torch kernels release it too, so on a CPU the
two overlap; on CUDA the loader also pins host memory so the copy to the device can be async.

Example:
    >>> with Prefetcher(["a", "b"], lambda k: k.upper()) as items:
    ...     list(items)
    [('a', 'A'), ('b', 'B')]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class Prefetcher(Generic[T]):
    """Iterate ``(key, load(key))`` in order, with ``load`` running ``depth`` keys ahead in a thread.

    An exception in ``load`` is re-raised in the consuming thread at the key where it happened.
    Leaving the ``with`` block early (or an error in the consumer) stops the thread promptly.
    """

    def __init__(self, keys: Iterable[str], load: Callable[[str], T], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")  # programming error, never user input
        self._keys = list(keys)
        self._load = load
        self._queue: queue.Queue[tuple[str, Any, BaseException | None] | object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wsa-prefetch", daemon=True)
        self._started = False

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        for key in self._keys:
            if self._stop.is_set():
                return
            try:
                value = self._load(key)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
                self._put((key, None, exc))
                return
            if not self._put((key, value, None)):
                return
        self._put(_DONE)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        if not self._started:
            self._started = True
            self._thread.start()
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            key, value, exc = item  # type: ignore[misc]
            if exc is not None:
                raise exc
            yield key, value

    def close(self) -> None:
        """Stop the loader and wait for it (drops anything it had read ahead)."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._started:
            self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
