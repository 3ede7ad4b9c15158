"""Layer scopes: per-tensor statistics, layer selection and kinds, model-level reports."""

from wsa_cli.scope.kinds import LAYER_KINDS, layer_kind
from wsa_cli.scope.selection import LayerSelector, matches_any
from wsa_cli.scope.stats import Moments, TensorStats, stats_from_moments, tensor_moments, tensor_scope

__all__ = [
    "LAYER_KINDS",
    "LayerSelector",
    "Moments",
    "TensorStats",
    "layer_kind",
    "matches_any",
    "stats_from_moments",
    "tensor_moments",
    "tensor_scope",
]
