"""The progress callback every long-running library call accepts.

``progress(n, label)`` says that ``n`` more units of work are done (tensors, evaluations,
epochs), the last one named ``label``. Library code calls it and never draws anything; the CLI
turns it into a progress bar on stderr. ``None`` means nobody is listening. A callback that
wants to know how many units to expect gets a ``set_total(n)`` attribute; the library calls it
through :func:`announce_total` as soon as it knows (after reading the inputs' headers).

Example:
    >>> done = []
    >>> report: ProgressFn = lambda n, label: done.append((n, label))
    >>> report(1, "fc1.weight"); done
    [(1, 'fc1.weight')]
"""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(n, label)``: ``n`` more units done, the last one called ``label``.
ProgressFn = Callable[[int, str], None]


def announce_total(progress: ProgressFn | None, total: int) -> None:
    """Tell ``progress`` how many units the run will report, if it has a ``set_total`` attribute.

    Example:
        >>> seen = []
        >>> def report(n, label): pass
        >>> report.set_total = seen.append
        >>> announce_total(report, 12); seen
        [12]
    """
    setter = getattr(progress, "set_total", None)
    if setter is not None:
        setter(total)
