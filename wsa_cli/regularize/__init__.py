"""The training half of WSA: a KL penalty that pulls each layer's weight scope to a target.

Example:
    >>> import torch
    >>> from wsa_cli.fusion import Scope
    >>> reg = ScopeRegularizer(Scope(0.0, 0.1), coef=0.01)
    >>> reg(torch.nn.Linear(8, 8)).item() >= 0
    True
"""

from wsa_cli.regularize.kl import KL_DIRECTIONS, differentiable_scope, layer_kl
from wsa_cli.regularize.regularizer import MISSING_POLICIES, REDUCTIONS, ScopeRegularizer
from wsa_cli.regularize.targets import TargetLike, resolve_target, scopes_of_state_dict

__all__ = [
    "KL_DIRECTIONS",
    "MISSING_POLICIES",
    "REDUCTIONS",
    "ScopeRegularizer",
    "TargetLike",
    "differentiable_scope",
    "layer_kl",
    "resolve_target",
    "scopes_of_state_dict",
]
