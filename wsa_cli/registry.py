"""One pattern for every table of named things users pick from: merge methods, interpolation
modes, evaluators.

A :class:`Registry` holds the built-ins (one literal list next to the lookup, loaded on first
use so that ``wsa --help`` imports nothing heavy), plus whatever users add: in Python with
:meth:`Registry.register`, or from an installed package through an entry point in the
registry's group (``[project.entry-points."wsa.merge_methods"]`` in the package's
``pyproject.toml``; each entry point names the object to add). One rule for duplicates
everywhere: a name is registered once; a second registration is a programming error
(:class:`ValueError`), and an entry point that collides is a plug-in error naming the package.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Colour:
    ...     name: str
    >>> colours = Registry("colour", lambda: [Colour("red"), Colour("green")])
    >>> colours.get("green")
    Colour(name='green')
    >>> colours.get("gren")
    Traceback (most recent call last):
    ...
    wsa_cli.errors.InvalidValueError: unknown colour 'gren'; did you mean 'green'? known: red, green
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from wsa_cli.errors import InvalidValueError, PluginError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named items of one kind: built-ins first (in their listed order), then plug-ins."""

    def __init__(
        self,
        kind: str,
        builtins: Callable[[], Iterable[T]],
        *,
        entry_point_group: str | None = None,
        name_of: Callable[[T], str] = lambda item: item.name,  # type: ignore[attr-defined]
        from_entry_point: Callable[[Any, str], T] | None = None,
    ) -> None:
        """``from_entry_point(entry_point, where)`` makes the item of one entry point (default: what
        it names, loaded now); ``where`` describes the entry point for error messages."""
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._builtins = builtins
        self._name_of = name_of
        self._from_entry_point = from_entry_point
        self._items: dict[str, T] | None = None
        self._builtin_names: frozenset[str] = frozenset()

    def _table(self) -> dict[str, T]:
        if self._items is None:
            items: dict[str, T] = {}
            for item in self._builtins():
                name = self._name_of(item)
                if name in items:
                    raise ValueError(f"built-in {self.kind} {name!r} is listed twice")
                items[name] = item
            self._items = items
            self._builtin_names = frozenset(items)
            if self.entry_point_group:
                try:
                    self._load_entry_points(self.entry_point_group)
                except BaseException:
                    self._items = None  # not half-filled: the next lookup tries (and fails) again
                    raise
        return self._items

    def _load_entry_points(self, group: str) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=group):
            where = f"entry point {ep.name!r} of {ep.dist.name if ep.dist else 'an installed package'} (group {group})"
            try:
                item = self._from_entry_point(ep, where) if self._from_entry_point else ep.load()
                name = self._name_of(item)
            except PluginError:
                raise
            except Exception as exc:  # noqa: BLE001 - importing user code may raise anything
                raise PluginError(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc
            if name in self._table_unchecked():
                raise PluginError(f"{where} adds {self.kind} {name!r}, which already exists")
            self._table_unchecked()[name] = item

    def _table_unchecked(self) -> dict[str, T]:
        assert self._items is not None
        return self._items

    def get(self, name: str) -> T:
        """The item called ``name``; an unknown name is an :class:`InvalidValueError` with a did-you-mean."""
        table = self._table()
        try:
            return table[name]
        except KeyError:
            hint = difflib.get_close_matches(str(name), list(table), n=1)
            extra = f"did you mean {hint[0]!r}? " if hint else ""
            raise InvalidValueError(f"unknown {self.kind} {name!r}; {extra}known: {', '.join(table)}") from None

    def register(self, item: T) -> T:
        """Add a plug-in item; a name that is already registered is a programming error (``ValueError``)."""
        table = self._table()
        name = self._name_of(item)
        if name in table:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        table[name] = item
        return item

    def unregister(self, name: str) -> None:
        """Remove a plug-in item (built-ins stay)."""
        if name in self._builtin_names:
            raise ValueError(f"built-in {self.kind} {name!r} cannot be removed")
        self._table().pop(name, None)

    def names(self) -> list[str]:
        return list(self._table())

    def items(self) -> list[T]:
        return list(self._table().values())

    def is_builtin(self, name: str) -> bool:
        self._table()
        return name in self._builtin_names

    def __contains__(self, name: object) -> bool:
        return name in self._table()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._table()))

    def __len__(self) -> int:
        return len(self._table())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"<Registry of {self.kind}s: {', '.join(self._table())}>"
