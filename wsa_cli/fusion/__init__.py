"""Scope math: Gaussian scopes, their KL divergence, fusion of K scopes, rescaling onto a scope."""

from wsa_cli.scope.gaussian import Scope, gaussian_kl
from wsa_cli.fusion.fuse import FUSION_METHODS, fuse_scopes, normalize_weights, parse_weights
from wsa_cli.fusion.rescale import RESCALE_MODES, rescale_tensor
from wsa_cli.fusion.scopefile import ScopeTable, load_scope_file
from wsa_cli.fusion.targets import TARGET_KINDS, parse_target

__all__ = [
    "FUSION_METHODS",
    "RESCALE_MODES",
    "TARGET_KINDS",
    "Scope",
    "ScopeTable",
    "fuse_scopes",
    "gaussian_kl",
    "load_scope_file",
    "normalize_weights",
    "parse_target",
    "parse_weights",
    "rescale_tensor",
]
