"""Where a regularizer's target scopes come from, and the command-line syntax for them.

A target is one of

* a :class:`~wsa_cli.fusion.Scope`: the same fixed scope for every regularized layer;
* a :class:`~wsa_cli.fusion.ScopeTable` or a ``{key: Scope}`` mapping: one scope per layer;
* a path to a scope file (``.json``, format ``wsa-scopes``, written by ``wsa scope fuse``);
* a path to a checkpoint, a state dict ``{key: Tensor}`` or an ``nn.Module``: the scopes of its
  layers (as chosen by the selector).

Written as text (``wsa train --wsa-target``) a target is parsed by
:func:`wsa_cli.fusion.targets.parse_target` with ``accept=("init", "fixed", "file", "checkpoint")``:
``init`` (the task model's initial scopes), ``MEAN,STD``, a ``.json`` scope file or a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from wsa_cli.errors import ConfigError, InputNotFoundError, InvalidValueError
from wsa_cli.scope.gaussian import Scope
from wsa_cli.fusion.scopefile import ScopeTable, load_scope_file
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.scope.stats import tensor_scope

#: Anything a regularizer accepts as its target.
TargetLike = Scope | ScopeTable | Mapping[str, Scope] | Mapping[str, torch.Tensor] | nn.Module | str | Path


def scopes_of_state_dict(state: Mapping[str, torch.Tensor], selector: LayerSelector | None = None) -> dict[str, Scope]:
    """Per-layer scopes (float64 statistics) of the layers ``selector`` picks in a state dict.

    Example:
        >>> scopes_of_state_dict({"w": torch.tensor([[1.0, 3.0]]), "b": torch.zeros(1)})
        {'w': Scope(mean=2.0, std=1.0)}
    """
    sel = selector or LayerSelector()
    return {
        k: tensor_scope(v.detach())
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and sel.selects(k, tuple(v.shape), v.dtype)
    }


def resolve_target(target: TargetLike, selector: LayerSelector | None = None) -> Scope | dict[str, Scope]:
    """Normalise any :data:`TargetLike` into a fixed Scope or a ``{key: Scope}`` table.

    Example:
        >>> resolve_target(Scope(0.0, 0.1))
        Scope(mean=0.0, std=0.1)
    """
    if isinstance(target, Scope):
        if target.std <= 0:
            raise InvalidValueError(f"target std must be > 0, got {target.std}")
        return target
    if isinstance(target, ScopeTable):
        return dict(target.layers)
    if isinstance(target, nn.Module):
        return scopes_of_state_dict(target.state_dict(), selector)
    if isinstance(target, (str, Path)):
        p = Path(target)
        if not p.exists():
            raise InputNotFoundError("regularizer target not found", path=p)
        if p.suffix.lower() == ".json":
            return dict(load_scope_file(p).layers)
        from wsa_cli.io import open_checkpoint

        sel = selector or LayerSelector()
        with open_checkpoint(p) as reader:
            return {
                info.key: tensor_scope(reader.get(info.key))
                for info in reader.infos()
                if sel.selects(info.key, info.shape, info.dtype)
            }
    if isinstance(target, Mapping):
        values = list(target.values())
        if values and all(isinstance(v, Scope) for v in values):
            return dict(target)  # type: ignore[arg-type]
        if values and all(isinstance(v, torch.Tensor) for v in values):
            return scopes_of_state_dict(target, selector)  # type: ignore[arg-type]
        raise InvalidValueError("a target mapping must hold Scopes or tensors")
    raise InvalidValueError(f"cannot use {type(target).__name__} as a regularizer target")


def check_table_covers(table: Mapping[str, Scope], keys: list[str], *, source: str | None = None) -> None:
    """Refuse a per-layer table that misses a regularized layer (a key typo must not go unnoticed)."""
    missing = [k for k in keys if k not in table]
    if missing:
        raise ConfigError(
            f"target has no scope for {len(missing)} regularized layer(s) (first: {missing[0]!r}); "
            f"it covers: {', '.join(sorted(table)[:5])}",
            path=source,
        )
