"""``wsa scope fuse`` as a library call: fuse the layer scopes of checkpoints into a scope file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import InvalidValueError
from wsa_cli.fusion.pipeline import ScopeOptions, fused_scope_table
from wsa_cli.fusion.scopefile import ScopeTable
from wsa_cli.progress import ProgressFn, announce_total
from wsa_cli.results import Result, Table, View

COLUMNS = ("key", "mean", "std", "numel")


@dataclass
class FuseResult(Result):
    """The scope file written and its table."""

    command = "scope-fuse"

    output: Path
    table: ScopeTable

    def _rows(self) -> list[dict[str, Any]]:
        return [{"key": k, "mean": s.mean, "std": s.std, "numel": self.table.numel.get(k)} for k, s in self.table.layers.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "fusion": self.table.fusion, "weights": self.table.weights,
                "sources": self.table.sources, "layers": self._rows()}  # fmt: skip

    def rows(self) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        return COLUMNS, self._rows()

    def render(self) -> list[View]:
        return [Table(f"fused scopes ({self.table.fusion}) -> {self.output}", COLUMNS, [[r[c] for c in COLUMNS] for r in self._rows()])]


def fuse_checkpoints(
    paths: Sequence[str | Path],
    out: str | Path,
    options: ScopeOptions | None = None,
    *,
    device: torch.device | str = "cpu",
    force: bool = False,
    container_key: str | None = None,
    strip_prefix: str | None = None,
    progress: ProgressFn | None = None,
) -> FuseResult:
    """Fuse the per-layer scopes of ``paths`` and write them atomically to the scope file ``out``.

    Reads one tensor at a time. The output must end in ``.json`` and may not be an input.

    Example:
        >>> fuse_checkpoints(["a.safetensors", "b.safetensors"], "scopes.json").table.fusion  # doctest: +SKIP
        'moments'
    """
    from wsa_cli.io import atomic_write_text, check_output, open_checkpoint

    opts = options or ScopeOptions()
    out = Path(out)
    if out.suffix != ".json":
        raise InvalidValueError("a scope file ends in .json", option="out", value=str(out))
    readers = []
    try:
        for p in paths:
            readers.append(open_checkpoint(p, container_key=container_key, strip_prefix=strip_prefix))
        check_output(out, [f for r in readers for f in r.files()], force=force)
        first = readers[0]
        announce_total(progress, sum(1 for k in first if opts.selector.selects(k, first.info(k).shape, first.info(k).dtype)))
        table = fused_scope_table(readers, opts, device, names=[str(p) for p in paths], progress=progress)
    finally:
        for r in readers:
            r.close()
    if not table.layers:
        raise InvalidValueError("no tensor is a layer (floating, ndim >= 2); select some with include patterns", path=str(paths[0]))
    atomic_write_text(out, table.to_json())
    return FuseResult(out, table, notes=[f"wrote {out} ({len(table.layers)} layers)"])
