"""Merge recipes: a typed YAML schema (each key declared once) and a loader with file:line errors.

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
    SliceSource,
    SliceSpec,
    StageSpec,
    doc_field,
    field_choices,
    load_recipe,
    parse_recipe,
    parse_size,
    recipe_keys,
    schema_table,
)

__all__ = [
    "ModelRef",
    "OutputSpec",
    "OverrideSpec",
    "PermutationRef",
    "Recipe",
    "ScopeSpec",
    "SliceSource",
    "SliceSpec",
    "StageSpec",
    "doc_field",
    "field_choices",
    "load_recipe",
    "parse_recipe",
    "parse_size",
    "recipe_keys",
    "schema_table",
]
