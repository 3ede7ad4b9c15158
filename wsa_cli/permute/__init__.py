"""Permutation alignment and function-preserving rescaling (``wsa align``, a recipe's ``permutation:``).

Networks trained from different seeds compute the same things with hidden units in a different
order. A :class:`PermutationSpec` says which tensor axes share a permutation; weight matching
(Git Re-Basin) finds the permutations that put one model's units into another's order;
:func:`function_preserving_rescale` moves layer scopes toward a target where the network absorbs
a scale.

Example:
    >>> from wsa_cli.permute import load_spec, weight_matching, apply_permutation  # doctest: +SKIP
    >>> spec = load_spec("digits-mlp", shapes={k: v.shape for k, v in a.items()})  # doctest: +SKIP
    >>> b_aligned = apply_permutation(spec, b, weight_matching(spec, a, b).perms)  # doctest: +SKIP
"""

from wsa_cli.permute.apply import apply_permutation, random_perms
from wsa_cli.permute.matching import MatchResult, weight_matching
from wsa_cli.permute.rescale import function_preserving_rescale
from wsa_cli.permute.spec import AttentionRule, AxisGroup, AxisLayout, PermutationSpec, RopeRule, ScaleRule
from wsa_cli.permute.specfile import load_spec, render_spec
from wsa_cli.permute.templates import BUILTIN_TEMPLATES, builtin_spec

__all__ = [
    "BUILTIN_TEMPLATES",
    "AttentionRule",
    "AxisGroup",
    "AxisLayout",
    "MatchResult",
    "PermutationSpec",
    "RopeRule",
    "ScaleRule",
    "apply_permutation",
    "builtin_spec",
    "function_preserving_rescale",
    "load_spec",
    "render_spec",
    "random_perms",
    "weight_matching",
]
