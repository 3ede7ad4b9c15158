"""WSA on Flower: a strategy (:class:`FedAvgWSA`), client helpers, and the ``--engine flower`` runner.

The codec and client helpers need no Flower; the strategy and engine do, and without it raise a
one-line error naming the extra (``pip install 'wsa[flower]'``).

Example:
    >>> from wsa_cli.fed.flower import FedAvgWSA  # doctest: +SKIP
    >>> strategy = FedAvgWSA(wsa_coef=0.1, fusion="moments", fraction_train=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from wsa_cli.errors import InvalidValueError
from wsa_cli.fed.flower.client import regularizer_from_config, scope_metrics, target_from_config, wants_scopes
from wsa_cli.fed.flower.codec import decode_scopes, encode_scopes

EXTRA_HINT = "needs Flower, which is not installed; install the extra: pip install 'wsa[flower]'"


def require_flower() -> None:
    """Raise the one-line error (exit 2) when ``flwr`` cannot be imported."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise InvalidValueError(EXTRA_HINT, option="engine") from None


def __getattr__(name: str) -> Any:
    if name in ("FedAvgWSA", "mismatch"):
        require_flower()
        from wsa_cli.fed.flower import strategy

        return getattr(strategy, name)
    if name == "run_fedsim_flower":
        require_flower()
        from wsa_cli.fed.flower.engine import run_fedsim_flower

        return run_fedsim_flower
    raise AttributeError(name)


__all__ = [
    "EXTRA_HINT", "FedAvgWSA", "decode_scopes", "encode_scopes", "regularizer_from_config", "require_flower",
    "run_fedsim_flower", "scope_metrics", "target_from_config", "wants_scopes",
]  # fmt: skip
