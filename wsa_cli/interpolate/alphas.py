"""The alpha grid of an interpolation: ``0:1:25`` (start:stop:count) or an explicit list.

``alpha`` is the weight of the second checkpoint: the model at ``alpha`` is
``(1 - alpha) * A + alpha * B``, so ``alpha = 0`` is A and ``alpha = 1`` is B. Values outside
``[0, 1]`` extrapolate beyond the endpoints; they are evaluated and shown, but barriers are measured
on ``[0, 1]`` only. Both endpoints must be on the grid: every barrier is measured against them.
"""

from __future__ import annotations

import math

from wsa_cli.errors import InvalidValueError

#: Upper bound on grid size: a typo such as ``0:1:25000`` should not start a day-long run.
MAX_ALPHAS = 10_001


def parse_alphas(spec: str) -> list[float]:
    """Parse an alpha grid into a sorted list of distinct floats that contains 0 and 1.

    Forms:

    * ``START:STOP:COUNT`` -- ``COUNT`` evenly spaced values from START to STOP, both included
      (like ``numpy.linspace``); the first and last values are exactly START and STOP;
    * ``a,b,c`` -- an explicit list (sorted; duplicates are an error).

    Example:
        >>> parse_alphas("0:1:5")
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> parse_alphas("1, 0, 0.5")
        [0.0, 0.5, 1.0]
    """
    text = (spec or "").strip()
    if not text:
        raise _bad(text, "empty; expected START:STOP:COUNT (e.g. 0:1:25) or a list (e.g. 0,0.5,1)")
    if ":" in text:
        values = _parse_range(text)
    else:
        values = [_number(part, text) for part in text.split(",")]
        if len(set(values)) != len(values):
            dup = sorted(v for v in set(values) if values.count(v) > 1)
            raise _bad(text, f"value {dup[0]:g} is listed twice")
        values.sort()
    if len(values) > MAX_ALPHAS:
        raise _bad(text, f"{len(values)} values; at most {MAX_ALPHAS} are allowed")
    missing = [name for name, v in (("0", 0.0), ("1", 1.0)) if v not in values]
    if missing:
        raise _bad(text, f"the grid must contain the endpoints 0 and 1 (missing {' and '.join(missing)}); "
                   "barriers are measured against them")
    return values


def _parse_range(text: str) -> list[float]:
    parts = text.split(":")
    if len(parts) != 3:
        raise _bad(text, "expected START:STOP:COUNT, e.g. 0:1:25")
    start, stop = _number(parts[0], text), _number(parts[1], text)
    raw = parts[2].strip()
    try:
        count = int(raw)
    except ValueError:
        raise _bad(text, f"COUNT {raw!r} is not a whole number") from None
    if count < 2:
        raise _bad(text, f"COUNT must be at least 2, got {count}")
    if count > MAX_ALPHAS:
        raise _bad(text, f"{count} values; at most {MAX_ALPHAS} are allowed")
    if not stop > start:
        raise _bad(text, "STOP must be greater than START")
    step = count - 1
    # start + (stop - start) * i / step, with the ends pinned exactly (no 0.9999999 for 1.0)
    values = [start + (stop - start) * i / step for i in range(count)]
    values[0], values[-1] = start, stop
    return values


def _number(part: str, text: str) -> float:
    raw = part.strip()
    try:
        value = float(raw)
    except ValueError:
        raise _bad(text, f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise _bad(text, f"{raw!r} is not a finite number")
    return value + 0.0  # -0.0 -> 0.0


def _bad(text: str, message: str) -> InvalidValueError:
    return InvalidValueError(message, option="alphas", value=text)
