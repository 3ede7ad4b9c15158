"""A merge given on the command line (``wsa merge A B -o OUT --method ties --base BASE``), run as its recipe.

The options are turned into a recipe (:mod:`wsa_cli.recipe.quick`), checked and run exactly as
a recipe file would be; ``save_recipe`` keeps it as a file next to which its paths still work.

Example:
    >>> spec = QuickMerge(models=["a.safetensors", "b.safetensors"], output="m.safetensors")
    >>> merge_command_line(spec, dry_run=True).recipe_text.splitlines()[1]  # doctest: +SKIP
    'models:'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import InvalidValueError
from wsa_cli.merge.result import MergeResult
from wsa_cli.progress import ProgressFn
from wsa_cli.recipe.quick import QuickMerge, quick_recipe
from wsa_cli.results import Text, View


@dataclass
class QuickMergeResult(MergeResult):
    """A merge result that also carries the recipe the command line stood for."""

    recipe_text: str = ""
    saved_recipe: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "recipe_text": self.recipe_text, "saved_recipe": self.saved_recipe}

    def render(self) -> list[View]:
        return [Text(self.recipe_text + "\n"), *super().render()] if self.dry_run else super().render()


def merge_command_line(
    spec: QuickMerge,
    *,
    device: torch.device | str = "auto",
    force: bool = False,
    dry_run: bool = False,
    save_recipe: str | Path | None = None,
    progress: ProgressFn | None = None,
    threads: int | None = None,
) -> QuickMergeResult:
    """Build the recipe of ``spec``, check it, optionally save it, and run it (or plan it with ``dry_run``)."""
    from wsa_cli.io import atomic_write_text, check_output
    from wsa_cli.merge.executor import merge_recipe

    recipe = quick_recipe(spec)
    target = Path(save_recipe) if save_recipe is not None else None
    if target is not None:  # checked before any work, written after it
        if target.suffix not in (".yaml", ".yml"):
            raise InvalidValueError("a recipe file ends in .yaml or .yml", option="save_recipe", value=str(target))
        check_output(target, [*spec.models, *([spec.base] if spec.base else [])], force=force)
    result = merge_recipe(recipe, device=device, force=force, dry_run=dry_run, progress=progress, threads=threads)
    saved = None
    if target is not None:
        atomic_write_text(target, spec.to_yaml(target.parent))
        saved = str(target)
        result.notes.append(f"wrote the recipe to {target} (run it again with: wsa merge {target})")
    return QuickMergeResult(**{f: getattr(result, f) for f in ("recipe", "recipe_sha256", "dry_run", "device", "stages", "threads", "cost")},
                            warnings=result.warnings, notes=result.notes, recipe_text=recipe.text, saved_recipe=saved)  # fmt: skip


__all__ = ["QuickMerge", "QuickMergeResult", "merge_command_line"]
