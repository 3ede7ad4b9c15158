"""Unmapping a key's input pages as the merge's pass over them moves on.

On the CPU a merge reads its inputs as views into the files' memory maps: every page it touches
counts in the process's resident memory until it is unmapped (the data stays in the OS page
cache). Released whole after the key, K inputs of the largest tensor are held at once; released
behind the pass, a window of :data:`WINDOW` bytes per input is, whatever K, so peak memory
stays under a budget that does not grow with the number of models.
"""

from __future__ import annotations

from collections.abc import Sequence

from wsa_cli.io import CheckpointReader

#: Bytes of each input read past before they are released (a few blocks: one madvise per input per step).
WINDOW = 16 << 20


class PageWindow:
    """The mapped inputs of one key: ``passed(n)`` after a pass has read their first ``n`` elements,
    ``done(i)`` after a pass over input ``i`` alone (a scope measurement; the merge reads it again
    from the page cache).

    Example:
        >>> w = PageWindow([], "w", [])
        >>> w.passed(10); w.done(0)
    """

    __slots__ = ("_itemsizes", "_key", "_last", "_readers")

    def __init__(self, readers: Sequence[CheckpointReader], key: str, itemsizes: Sequence[int]) -> None:
        self._readers, self._key, self._itemsizes = list(readers), key, list(itemsizes)
        self._last = 0  # bytes of the widest input released so far

    def passed(self, elements: int) -> None:
        """Release every input's first ``elements`` values once a window's worth more has been read."""
        widest = max(self._itemsizes, default=1) * elements
        if widest - self._last < WINDOW:
            return
        self._last = widest
        for reader, size in zip(self._readers, self._itemsizes, strict=True):
            reader.release(self._key, size * elements)

    def done(self, i: int) -> None:
        """Release input ``i`` whole (it is read again later, from the page cache)."""
        if i < len(self._readers):
            self._readers[i].release(self._key)


__all__ = ["WINDOW", "PageWindow"]
