"""Merge recipes: a typed YAML schema (defaults documented once) and a loader with file:line errors.

Example:
    >>> from wsa_cli.recipe import load_recipe
    >>> recipe = load_recipe("recipes/average.yaml")  # doctest: +SKIP
"""

from wsa_cli.recipe.schema import (
    ModelRef,
    OutputSpec,
    OverrideSpec,
    PermutationRef,
    Recipe,
    ScopeSpec,
    StageSpec,
    load_recipe,
    parse_recipe,
    parse_size,
)

__all__ = [
    "ModelRef",
    "OutputSpec",
    "OverrideSpec",
    "PermutationRef",
    "Recipe",
    "ScopeSpec",
    "StageSpec",
    "load_recipe",
    "parse_recipe",
    "parse_size",
]
