"""Merge a recipe in memory: the same plan and the same per-key merge as ``wsa merge``, no file.

:class:`MemoryMerger` keeps a stage's inputs open across calls (mapped files, the permuted
models of a ``permutation:`` block, fingerprints) while the recipes it merges read the same
models, and builds each merge into one set of output tensors that it reuses (allocated at the
first merge, overwritten in place by the next). The tensors handed to ``write`` are exactly
those :func:`~wsa_cli.merge.executor.run_stage` writes to disk, so a merge evaluated here scores
exactly what the merged file would.

Only single-stage recipes merge in memory (a multi-stage recipe's earlier stages are files).

Example:
    >>> with MemoryMerger("cpu") as merger:  # doctest: +SKIP
    ...     state = merger.merge(load_recipe("recipes/ties.yaml"))
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from wsa_cli.device import resolve_device
from wsa_cli.errors import InvalidValueError
from wsa_cli.merge.executor import StageInputs, merge_threads, open_stage, stream_tensors
from wsa_cli.merge.plan import StagePlan, plan_recipe
from wsa_cli.recipe.schema import Recipe
from wsa_cli.threads import compute_threads


def _inputs_key(plan: StagePlan) -> tuple[Any, ...]:
    """What the opened inputs depend on: the models, base and permutation block (not weights or parameters)."""
    refs = [*plan.models, *([plan.base] if plan.base is not None else [])]
    perm = plan.spec.permutation
    # a permutation block's models are permuted (and, with rescale: fp, rescaled onto the scope target) when
    # opened: then the scope options and weights are part of what the opened inputs hold
    permuted = None if perm is None else (str(perm.spec), perm.reference, perm.seed, repr(plan.scope), tuple(plan.weights))
    return (tuple((str(m.path), m.ref.key, m.ref.strip_prefix) for m in refs), plan.base is not None, permuted)  # fmt: skip


class MemoryMerger:
    """Merges recipes into a reused in-memory state dict; inputs stay open while they do not change."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = resolve_device(device)
        self._stack: contextlib.ExitStack | None = None
        self._key: tuple[Any, ...] | None = None
        self._inputs: StageInputs | None = None
        self._state: dict[str, torch.Tensor] = {}
        #: how many times the inputs were opened (1 for a sweep over weights and parameters)
        self.opened = 0

    def __enter__(self) -> MemoryMerger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self._key, self._inputs = None, None, None

    def plan(self, recipe: Recipe) -> StagePlan:
        """Plan ``recipe`` (headers only, as ``wsa merge`` does); a multi-stage recipe is an InvalidValueError."""
        plans = plan_recipe(recipe, force=True)  # nothing is written, so an existing output is no obstacle
        if len(plans) != 1:
            raise InvalidValueError(f"has {len(plans)} stages; a sweep merges single-stage recipes in memory "
                                    "(merge the earlier stages with wsa merge and sweep the last one)",
                                    option="recipe", value=str(recipe.path))  # fmt: skip
        return plans[0]

    def _open(self, plan: StagePlan, recipe: Recipe) -> StageInputs:
        key = _inputs_key(plan)
        if self._inputs is not None and key == self._key:
            return self._inputs
        self.close()
        stack = contextlib.ExitStack()
        try:
            self._inputs = stack.enter_context(open_stage(plan, recipe, self.device))
        except BaseException:
            stack.close()
            raise
        self._stack, self._key = stack, key
        self.opened += 1
        return self._inputs

    def merge(self, recipe: Recipe, plan: StagePlan | None = None) -> dict[str, torch.Tensor]:
        """The merged state dict of ``recipe`` (CPU tensors in the output dtype; overwritten by the next merge)."""
        plan = plan if plan is not None else self.plan(recipe)
        inputs = self._open(plan, recipe)
        state = self._state
        wanted = {t.key for t in plan.tensors}
        for k in [k for k in state if k not in wanted]:
            del state[k]

        def keep(key: str, tensor: torch.Tensor) -> None:
            held = state.get(key)
            if held is not None and held.shape == tensor.shape and held.dtype == tensor.dtype:
                held.copy_(tensor)
            else:
                state[key] = tensor.detach().clone()

        # the thread plan of wsa merge for this plan: the merged values do not depend on how the sweep was started
        with compute_threads(merge_threads([plan], self.device)):
            stream_tensors(plan, inputs, keep, device=self.device, overlap=False)
        return state

    @staticmethod
    def model_folder(recipe: Recipe) -> Path | None:
        """The folder an evaluator takes config and tokenizer from: the base model's, else the first model's.

        A model given as a folder is that folder; a file is its parent folder. Only a folder
        holding ``config.json`` counts; ``None`` when neither has one.
        """
        stage = recipe.stages[-1]
        refs = [*([stage.base] if stage.base is not None else []), *stage.models]
        for ref in refs:
            if ref.path is None:
                continue
            p = Path(ref.path)
            folder = p if p.is_dir() else p.parent
            if (folder / "config.json").is_file():
                return folder
        return None


__all__ = ["MemoryMerger"]
