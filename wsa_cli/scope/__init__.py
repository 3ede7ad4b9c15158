"""Layer scopes: the Gaussian scope type and its KL, per-tensor statistics, layer selection and kinds."""

from wsa_cli.scope.gaussian import STD_FLOOR, Scope, gaussian_kl
from wsa_cli.scope.kinds import LAYER_KINDS, layer_kind
from wsa_cli.scope.selection import LayerSelector, matches_any
from wsa_cli.scope.stats import Moments, TensorStats, stats_from_moments, tensor_moments, tensor_scope

__all__ = [
    "LAYER_KINDS",
    "LayerSelector",
    "STD_FLOOR",
    "Scope",
    "Moments",
    "TensorStats",
    "gaussian_kl",
    "layer_kind",
    "matches_any",
    "stats_from_moments",
    "tensor_moments",
    "tensor_scope",
]
