"""The WSA scope regularizer for any PyTorch training loop.

Adds ``coef * reduce_l KL(scope_l || target_l)`` to the loss, pulling each regularized layer's
weight scope towards a target so that independently trained models arrive at a merge already
aligned. See :mod:`wsa_cli.regularize.kl` for the formula.

Example:
    >>> model = torch.nn.Linear(4, 3)
    >>> reg = ScopeRegularizer(Scope(0.0, 0.1), coef=0.01)
    >>> loss = reg(model)          # 0-d tensor; add it to the task loss
    >>> list(reg.last_values)      # per-layer KL (before the coefficient), for logging
    ['weight']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from wsa_cli.errors import ConfigError, InvalidValueError
from wsa_cli.scope.gaussian import Scope
from wsa_cli.regularize.kl import KL_DIRECTIONS, layer_kl
from wsa_cli.regularize.targets import TargetLike, check_table_covers, resolve_target
from wsa_cli.scope.selection import LayerSelector

REDUCTIONS = ("sum", "mean")
MISSING_POLICIES = ("error", "skip")


class ScopeRegularizer:
    """``coef * sum_l KL(N(mu_l, s_l^2) || N(mu_t, s_t^2))`` over the selected layers.

    Args:
        target: a fixed :class:`Scope`, a scope table/file, or a model / state dict / checkpoint
            whose layer scopes are the targets (see :mod:`wsa_cli.regularize.targets`).
        coef: multiplies the reduced KL (default 0.01).
        reduction: ``sum`` (default) or ``mean`` over the regularized layers.
        direction: ``forward`` = KL(layer || target) (default), ``reverse`` = KL(target || layer).
        selector: which parameters are layers (default: floating tensors with ndim >= 2, the rule
            used by inspect and merge).
        missing: with a per-layer target, ``error`` (default) refuses a selected layer the target
            does not cover; ``skip`` leaves such layers unregularized (listed in ``skipped``).

    After each call, ``last_values`` holds the per-layer KL (floats, before ``coef``) and
    ``last_total`` the returned penalty, for logging.
    """

    def __init__(
        self,
        target: TargetLike,
        coef: float = 0.01,
        *,
        reduction: str = "sum",
        direction: str = "forward",
        selector: LayerSelector | None = None,
        missing: str = "error",
    ) -> None:
        if reduction not in REDUCTIONS:
            raise InvalidValueError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
        if direction not in KL_DIRECTIONS:
            raise InvalidValueError(f"unknown KL direction {direction!r}; choose from {', '.join(KL_DIRECTIONS)}")
        if missing not in MISSING_POLICIES:
            raise InvalidValueError(f"unknown missing-layer policy {missing!r}; choose from {', '.join(MISSING_POLICIES)}")
        coef = float(coef)
        if not coef >= 0 or coef == float("inf"):
            raise InvalidValueError(f"the regularizer coefficient must be finite and >= 0, got {coef}")
        self.coef = coef
        self.reduction = reduction
        self.direction = direction
        self.selector = selector or LayerSelector()
        self.missing = missing
        self.skipped: list[str] = []
        self.last_values: dict[str, float] = {}
        self.last_total: float = 0.0
        self.set_target(target)

    def set_target(self, target: TargetLike) -> None:
        """Replace the target (e.g. each federated round, with the newly fused scopes)."""
        self._source = str(target) if isinstance(target, (str, Path)) else None
        self.target: Scope | dict[str, Scope] = resolve_target(target, self.selector)
        if isinstance(self.target, dict):
            bad = [k for k, s in self.target.items() if not s.std > 0]
            if bad:
                raise ConfigError("target std must be > 0 (a constant layer cannot be a target)", path=self._source, key=bad[0])

    @classmethod
    def from_scope_file(cls, path: str | Path, coef: float = 0.01, **kwargs: object) -> ScopeRegularizer:
        """A regularizer whose targets are a ``wsa scope fuse`` output.

        Example:
            >>> reg = ScopeRegularizer.from_scope_file("scopes.json", coef=0.01)  # doctest: +SKIP
        """
        return cls(Path(path), coef, **kwargs)  # type: ignore[arg-type]

    def _named(self, model: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]):  # noqa: ANN202
        if isinstance(model, nn.Module):
            return list(model.named_parameters())
        if isinstance(model, Mapping):
            return list(model.items())
        return list(model)

    def layers(self, model: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor, Scope]]:
        """The ``(name, parameter, target scope)`` triples this regularizer acts on."""
        chosen = [(k, p) for k, p in self._named(model) if self.selector.selects(k, tuple(p.shape), p.dtype)]
        if isinstance(self.target, Scope):
            return [(k, p, self.target) for k, p in chosen]
        keys = [k for k, _ in chosen]
        if self.missing == "error":
            check_table_covers(self.target, keys, source=self._source)
        self.skipped = [k for k in keys if k not in self.target]
        out = [(k, p, self.target[k]) for k, p in chosen if k in self.target]
        if not out:
            raise ConfigError("the target covers none of the model's regularized layers", path=self._source)
        return out

    def layer_values(self, model: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Per-layer KL as differentiable 0-d tensors (before reduction and coefficient)."""
        return {k: layer_kl(p, t, self.direction) for k, p, t in self.layers(model)}

    def __call__(self, model: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> torch.Tensor:
        """The penalty ``coef * reduce(per-layer KL)`` as a 0-d tensor to add to the loss."""
        values = self.layer_values(model)
        stacked = torch.stack([v.float() if v.dtype != torch.float64 else v for v in values.values()])  # (L,)
        reduced = stacked.sum() if self.reduction == "sum" else stacked.mean()
        total = self.coef * reduced
        self.last_values = {k: float(v.detach()) for k, v in values.items()}
        self.last_total = float(total.detach())
        return total

    def describe(self) -> str:
        """One line for logs and metrics files."""
        if isinstance(self.target, Scope):
            tgt = f"fixed N({self.target.mean:g}, {self.target.std:g}^2)"
        else:
            tgt = f"{len(self.target)} per-layer scopes" + (f" from {self._source}" if self._source else "")
        return f"coef={self.coef:g} {self.reduction} {self.direction} KL to {tgt}"
