"""WSA for any Flower client: the target from the fit config, the regularizer, scopes in the metrics.

Three calls a client's own training loop needs (none of them imports Flower, so they work with a
``NumPyClient`` (``config`` is a dict) as well as a Message-API ``ClientApp``
(``msg.content["config"]``)):

* :func:`regularizer_from_config` -- a :class:`~wsa_cli.regularize.ScopeRegularizer` towards the
  target the server sent (``None`` when it sent none or the coefficient is 0); add
  ``reg(model)`` to the loss every step;
* :func:`scope_metrics` -- the client's layer scopes as metric values, to return when the
  config asks for them (``wsa-report-scopes``);
* :func:`wants_scopes` -- whether it asks.

Example:
    >>> import torch
    >>> from wsa_cli.fed.flower.codec import encode_scopes
    >>> from wsa_cli.scope.gaussian import Scope
    >>> model = torch.nn.Linear(4, 2)
    >>> cfg = {**encode_scopes({"weight": Scope(0.0, 0.1)}), "wsa-coef": 0.5}
    >>> reg = regularizer_from_config(cfg)
    >>> float(reg(model).detach()) >= 0
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from wsa_cli.fed.flower.codec import KEYS, decode_scopes, has_scopes
from wsa_cli.regularize import ScopeRegularizer, scopes_of_state_dict
from wsa_cli.scope.gaussian import Scope
from wsa_cli.scope.selection import LayerSelector

COEF_KEY = "wsa-coef"
REPORT_KEY = "wsa-report-scopes"
SCOPES_PREFIX = "wsa-scopes"  # prefix of the scopes a client reports in its metrics


def target_from_config(config: Mapping[str, Any]) -> dict[str, Scope] | Scope | None:
    """The target the server sent, or ``None``."""
    return decode_scopes(config) if has_scopes(config) else None


def regularizer_from_config(
    config: Mapping[str, Any],
    coef: float | None = None,
    *,
    reduction: str = "sum",
    direction: str = "forward",
    selector: LayerSelector | None = None,
) -> ScopeRegularizer | None:
    """A regularizer towards the sent target; ``coef`` defaults to the config's ``wsa-coef`` (else 0.01).

    ``None`` when there is no target or the coefficient is 0 (plain FedAvg). A target that does
    not cover one of the model's layers makes the regularizer raise a ConfigError naming that
    layer on its first call: the client's reply then carries the error and the strategy drops it.
    """
    target = target_from_config(config)
    c = float(config.get(COEF_KEY, 0.01)) if coef is None else float(coef)
    if target is None or c == 0:
        return None
    return ScopeRegularizer(target, c, reduction=reduction, direction=direction, selector=selector)


def wants_scopes(config: Mapping[str, Any]) -> bool:
    """Whether the server asked for the client's scopes in the fit metrics."""
    return bool(config.get(REPORT_KEY, False))


def scope_metrics(
    model: nn.Module | Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None, selector: LayerSelector | None = None
) -> dict[str, list[float]]:
    """The client's layer scopes as metric values: ``wsa-scopes-mean`` and ``wsa-scopes-std`` lists.

    Metric records hold numbers only, so the layer order is the one of the target in ``config``
    (``wsa-target-keys``), else the model's own order of its selected layers.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    scopes = scopes_of_state_dict(state, selector)
    order = list(config[KEYS]) if config is not None and KEYS in config else list(scopes)
    return {f"{SCOPES_PREFIX}-mean": [scopes[k].mean for k in order if k in scopes],
            f"{SCOPES_PREFIX}-std": [scopes[k].std for k in order if k in scopes]}  # fmt: skip
