"""The demo's merge recipes, built from the shipped templates in ``recipes/``.

The demo merges its freshly trained models with the repository's own recipes: it reads
``recipes/average.yaml`` (scope-aligned weighted average, the WSA defaults) and
``recipes/permuted-wsa.yaml`` (weight matching, then scope alignment, then averaging), swaps in
the demo's models and output path, and writes the result into the demo folder, so the recipe that
produced each merged model sits next to it and can be rerun with ``wsa merge``. When the templates
are not on disk (an installed wheel without the repository), the same settings are written from
the copies below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Fallback copies of the template settings (kept equal to the files in recipes/).
_FALLBACK: dict[str, dict[str, Any]] = {
    "average.yaml": {
        "method": "linear",
        "scope": {"align": True, "fusion": "moments", "rescale": "affine"},
    },
    "permuted-wsa.yaml": {
        "permutation": {"spec": "digits-mlp", "reference": 0, "seed": 0},
        "scope": {"align": True, "fusion": "moments", "target": "fused", "rescale": "affine"},
        "method": "linear",
    },
}


def recipes_dir() -> Path | None:
    """The repository's ``recipes/`` folder, when wsa runs from a checkout."""
    here = Path(__file__).resolve().parents[2] / "recipes"
    return here if here.is_dir() else None


def load_template(name: str) -> tuple[dict[str, Any], str]:
    """``(settings, source)`` of a recipe template; ``source`` says where it came from."""
    folder = recipes_dir()
    if folder is not None and (folder / name).is_file():
        data = yaml.safe_load((folder / name).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data, f"recipes/{name}"
    return dict(_FALLBACK[name]), f"built-in copy of recipes/{name}"


def write_demo_recipe(
    template: str,
    models: list[Path],
    output: Path,
    recipe_path: Path,
    *,
    align: bool = True,
    spec: str | None = None,
) -> tuple[Path, str]:
    """Write a recipe based on ``template`` for ``models`` -> ``output``; return ``(path, source)``.

    Paths are written relative to the recipe's folder (as recipes in ``recipes/`` do).
    ``align=False`` turns scope alignment off (the plain average, for comparison); ``spec`` sets
    the permutation spec (a built-in template name such as ``digits-mlp``).
    """
    data, source = load_template(template)
    data = {k: v for k, v in data.items() if k not in ("models", "output", "stages")}
    base = recipe_path.parent
    data["models"] = [_rel(m, base) for m in models]
    scope = dict(data.get("scope") or {})
    scope["align"] = bool(align)
    data["scope"] = scope
    if "permutation" in data:
        perm = dict(data["permutation"])
        perm["spec"] = spec or "digits-mlp"
        data["permutation"] = perm
    data["output"] = _rel(output, base)
    header = (
        f"# Written by `wsa demo` from {source}: the template's settings with the demo's models.\n"
        f"# Rerun with: wsa merge {recipe_path.name} --force\n"
    )
    recipe_path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return recipe_path, source


def _rel(p: Path, base: Path) -> str:
    import os

    return os.path.relpath(p.resolve(), base.resolve())
