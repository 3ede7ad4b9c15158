"""The registry of interpolation modes: how the two endpoints are prepared before walking the line.

A mode is a ``prepare(a, b, opts) -> (a', b')`` function over state dicts (any
``Mapping[str, Tensor]``; wsa passes lazy ones); the path is then ``(1 - alpha) a' + alpha b'``.
Several modes run side by side in one ``wsa interpolate`` call, so a table shows the same pair
with and without alignment.

Built-in (in listing order): ``naive`` and ``wsa`` (:mod:`wsa_cli.interpolate.plain_modes`),
``permuted``, ``permuted+wsa`` and ``permuted+fp``
(:mod:`wsa_cli.interpolate.permuted_modes`). Users add modes with :func:`register_mode`, or from
an installed package through the entry-point group ``wsa.interpolation_modes`` (each entry point
names a :class:`Mode`).

Example:
    >>> MODES.names()[:2]
    ['naive', 'wsa']
"""

from __future__ import annotations

from collections.abc import Iterable

from wsa_cli.errors import InvalidValueError
from wsa_cli.interpolate.mode_base import Mode, ModeOptions, PrepareFn, StateDict
from wsa_cli.registry import Registry


def _builtin_modes() -> Iterable[Mode]:
    from wsa_cli.interpolate import permuted_modes as pm
    from wsa_cli.interpolate import plain_modes as plain

    return [
        Mode("naive", plain.prepare_naive, "plain interpolation of the checkpoints as they are"),
        Mode("wsa", plain.prepare_wsa, "both endpoints rescaled onto their fused layer scopes first (as in wsa merge)"),
        Mode("permuted", pm.prepare_permuted, "B's hidden units permuted into A's order (weight matching; needs --spec)"),
        Mode("permuted+wsa", pm.prepare_permuted_wsa, "permuted, then both rescaled onto their fused layer scopes (needs --spec)"),
        Mode("permuted+fp", pm.prepare_permuted_fp, "permuted, then function-preserving rescale toward the fused scopes (needs --spec)"),
    ]


#: Every interpolation mode by name: the built-ins, then plug-ins.
MODES: Registry[Mode] = Registry("interpolation mode", _builtin_modes, entry_point_group="wsa.interpolation_modes")


def register_mode(name: str, prepare: PrepareFn, description: str) -> Mode:
    """Add a mode (a name already taken is a ``ValueError``); ``description`` is one line for the docs.

    Example:
        >>> _ = register_mode("swap", lambda a, b, opts: (b, a), "B to A instead of A to B")
        >>> MODES.get("swap").description
        'B to A instead of A to B'
        >>> MODES.unregister("swap")
    """
    return MODES.register(Mode(name, prepare, description))


def get_mode(name: str) -> Mode:
    """Look a mode up by name (:class:`InvalidValueError` listing the known modes when unknown).

    Example:
        >>> get_mode("naive").name
        'naive'
    """
    return MODES.get(name)


def parse_modes(spec: str) -> list[Mode]:
    """Parse a comma-separated list of mode names (``naive,wsa``), in the given order, no duplicates.

    Example:
        >>> [m.name for m in parse_modes("wsa, naive")]
        ['wsa', 'naive']
    """
    names = [n.strip() for n in (spec or "").split(",") if n.strip()]
    if not names:
        raise InvalidValueError(f"no mode given; choose from {', '.join(MODES)}")
    seen: list[str] = []
    for n in names:
        if n in seen:
            raise InvalidValueError(f"mode {n!r} is listed twice")
        seen.append(n)
    return [get_mode(n) for n in names]


__all__ = ["MODES", "Mode", "ModeOptions", "PrepareFn", "StateDict", "get_mode", "parse_modes", "register_mode"]
