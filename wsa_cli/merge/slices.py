"""Layer slices: a stage whose models are built from layer ranges of several checkpoints.

A ``slices:`` stage (a frankenmerge, depth up-scaling, or a per-range merge as in mergekit) lists
slices in output order; each slice takes the same number of numbered layers from each of its
sources, and the output's layers are numbered on from the previous slices'. The stage then runs
like any other with ``keys: union``: *source i of every slice* is the stage's model ``i`` -- a
:class:`SliceReader` that renames the layer keys it exposes (``model.layers.12.*`` of the file
becomes ``model.layers.3.*`` of the output), so a slice with one source is copied and a slice with
several is merged by the stage's method over them, tensor by tensor, through the ordinary executor.

The tensors outside the numbered layers follow mergekit: those before the layers (embeddings)
come from the first slice's sources, those after them (final norm, ``lm_head``; see
:data:`~wsa_cli.merge.gradients.AFTER_LAYERS`) from the last slice's. A base model (``base:``)
gives, for every slice, the same layer range as the slice's first source (or, when the base is
itself one of the slice's sources, that source, which then leaves the models).

Everything here reads headers only; the shapes of every output layer are checked against the
first output layer's before any tensor is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from wsa_cli.errors import ConfigError, InvalidValueError, MismatchError
from wsa_cli.io import CheckpointReader, TensorInfo, open_checkpoint
from wsa_cli.merge.gradients import AFTER_LAYERS, LAYER_INDEX, layer_count, layer_index
from wsa_cli.recipe.schema import ModelRef, Recipe, SliceSource, StageSpec


def renumber(key: str, new_index: int) -> str:
    """``key`` with its layer number (see :data:`~wsa_cli.merge.gradients.LAYER_INDEX`) replaced by ``new_index``.

    Example:
        >>> renumber("model.layers.12.mlp.up_proj.weight", 3), renumber("encoder.layer.0.output.dense.bias", 7)
        ('model.layers.3.mlp.up_proj.weight', 'encoder.layer.7.output.dense.bias')
    """
    m = LAYER_INDEX.search(key)
    if m is None:
        raise ValueError(f"{key!r} has no layer number")
    return key[: m.start(1)] + str(new_index) + key[m.end(1) :]


def layer_suffix(key: str) -> str:
    """The key with its layer number blanked: the same tensor of every layer has the same suffix."""
    m = LAYER_INDEX.search(key)
    return key if m is None else key[: m.start(1)] + "#" + key[m.end(1) :]


@dataclass(frozen=True)
class Origin:
    """Where one output key of a view comes from: which checkpoint (an index into the view's files) and its key there."""

    checkpoint: int
    key: str


@dataclass
class SliceView:
    """One model of a slices stage, planned from headers: output key -> (checkpoint, input key)."""

    refs: list[ModelRef]  # the distinct checkpoints it reads
    origins: dict[str, Origin]
    infos: dict[str, TensorInfo]
    files: list[Path]
    extra_files: list[Path]
    #: one of its checkpoints is sharded (several weight files): the output is sharded like it
    sharded: bool = False

    def opener(self) -> SliceReader:
        return SliceReader(self)

    def source_text(self, key: str) -> str:
        o = self.origins[key]
        return f"{self.refs[o.checkpoint].text}:{o.key}"


class SliceReader(CheckpointReader):
    """A :class:`SliceView` opened: each key read from its checkpoint under its own (input) name."""

    format_name = "slices"

    def __init__(self, view: SliceView) -> None:
        super().__init__(view.refs[0].path or ".")
        self._view = view
        self._readers: list[CheckpointReader] = []
        try:
            for ref in view.refs:
                assert ref.path is not None
                self._readers.append(open_checkpoint(ref.path, container_key=ref.key, strip_prefix=ref.strip_prefix))
        except BaseException:
            self.close()
            raise
        self._infos = dict(view.infos)

    def _where(self, key: str) -> tuple[CheckpointReader, str]:
        self.info(key)  # an unknown key: the usual clear error
        o = self._view.origins[key]
        return self._readers[o.checkpoint], o.key

    def get(self, key: str, out: torch.Tensor | None = None) -> torch.Tensor:
        reader, inner = self._where(key)
        return reader.get(inner, out=out)

    def view(self, key: str) -> torch.Tensor:
        reader, inner = self._where(key)
        return reader.view(inner)

    def will_need(self, key: str) -> None:
        reader, inner = self._where(key)
        reader.will_need(inner)

    def release(self, key: str, upto: int | None = None) -> None:
        reader, inner = self._where(key)
        reader.release(inner, upto)

    def _load(self, info: TensorInfo) -> torch.Tensor:
        return self.get(info.key)

    def files(self) -> list[Path]:
        return list(self._view.files)

    def extra_files(self) -> list[Path]:
        return list(self._view.extra_files)

    def close(self) -> None:
        for r in self._readers:
            r.close()
        self._readers = []


def _cfg(recipe: Recipe, line: int | None, message: str) -> ConfigError:
    return ConfigError(message, path=recipe.path, line=line)


class _Headers:
    """Each checkpoint's header, opened once (a checkpoint is usually the source of several slices)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.infos: dict[Path, dict[str, TensorInfo]] = {}
        self.files: dict[Path, list[Path]] = {}
        self.extra: dict[Path, list[Path]] = {}

    def of(self, ref: ModelRef) -> dict[str, TensorInfo]:
        assert ref.path is not None
        if ref.path not in self.infos:
            try:
                reader = open_checkpoint(ref.path, container_key=ref.key, strip_prefix=ref.strip_prefix)
            except InvalidValueError as exc:
                raise _cfg(self.recipe, ref.line, f"{ref.text}: {exc.message}") from None
            with reader:
                self.infos[ref.path] = {i.key: i for i in reader.infos()}
                self.files[ref.path] = reader.files()
                self.extra[ref.path] = reader.extra_files()
        return self.infos[ref.path]


def _same_model(a: ModelRef, b: ModelRef) -> bool:
    return a.path is not None and b.path is not None and a.path.resolve() == b.path.resolve() and a.key == b.key


def split_base(stage: StageSpec) -> tuple[list[list[SliceSource]], list[SliceSource] | None]:
    """The model sources of every slice, and (``base:`` given) the base's source of every slice."""
    models, bases = [], []
    for s in stage.slices:
        srcs = list(s.sources)
        b = None
        if stage.base is not None:
            own = [x for x in srcs if _same_model(x.model, stage.base)]
            if own:
                b = own[0]
                srcs.remove(b)
            else:
                b = SliceSource(model=stage.base, layer_range=list(srcs[0].layer_range), line=s.line)
        models.append(srcs)
        bases.append(b)
    return models, (bases if stage.base is not None else None)


def _view(recipe: Recipe, headers: _Headers, picks: Sequence[tuple[int, SliceSource]], offsets: Sequence[int], n_slices: int) -> SliceView:
    """The view made of ``picks`` ((slice index, source) pairs, in slice order)."""
    refs: list[ModelRef] = []
    origins: dict[str, Origin] = {}
    infos: dict[str, TensorInfo] = {}

    def index_of(ref: ModelRef) -> int:
        for i, r in enumerate(refs):
            if _same_model(r, ref):
                return i
        refs.append(ref)
        return len(refs) - 1

    def add(out_key: str, src: SliceSource, key: str, info: TensorInfo) -> None:
        origins[out_key] = Origin(index_of(src.model), key)
        infos[out_key] = TensorInfo(out_key, info.shape, info.dtype)

    for s, src in picks:
        held = headers.of(src.model)
        n = layer_count(held)
        start, end = src.layer_range
        if end > n:
            raise _cfg(recipe, src.lines.get("layer_range", src.line),
                       f"layer_range [{start}, {end}] is beyond {src.model.text}, which has {n} numbered layer(s)")  # fmt: skip
        for key, info in held.items():
            i = layer_index(key)
            if i is None:
                after = AFTER_LAYERS.search(key) is not None
                if (not after and s == 0) or (after and s == n_slices - 1):
                    add(key, src, key, info)
            elif start <= i < end:
                add(renumber(key, offsets[s] + i - start), src, key, info)
    files = [f for r in refs if r.path is not None for f in headers.files[r.path]]
    first = refs[0].path
    assert first is not None
    sharded = any(len(headers.files[r.path]) > 1 for r in refs if r.path is not None)
    return SliceView(refs, origins, infos, files, headers.extra[first], sharded)


def plan_views(recipe: Recipe, stage: StageSpec) -> tuple[list[SliceView], SliceView | None]:
    """The stage's models (view ``i`` = source ``i`` of every slice) and its base, from headers only.

    Raises :class:`ConfigError` (a layer range beyond a model, weights that differ for one model
    index) or :class:`MismatchError` (output layers whose tensors differ in shape).
    """
    headers = _Headers(recipe)
    per_slice, bases = split_base(stage)
    offsets, total = [], 0
    for s in stage.slices:
        offsets.append(total)
        total += s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
    n = len(stage.slices)
    k = max(len(srcs) for srcs in per_slice)
    if k == 0:
        raise _cfg(recipe, stage.lines.get("slices"), "every source of the slices is the base model: nothing to merge")
    views = []
    for i in range(k):
        picks = [(s, srcs[i]) for s, srcs in enumerate(per_slice) if len(srcs) > i]
        weights = {p.model.weight for _, p in picks}
        if len(weights) > 1:
            raise _cfg(recipe, picks[0][1].line, f"the sources[{i}] of the slices have different weights {sorted(weights)}; "
                       "a model index has one weight in a slices stage")  # fmt: skip
        views.append(_view(recipe, headers, picks, offsets, n))
    base = _view(recipe, headers, list(enumerate(bases)), offsets, n) if bases is not None else None
    _check_layers([*views, *([base] if base else [])])
    return views, base


def _check_layers(views: Sequence[SliceView]) -> None:
    """Every output layer holds the same tensors with the same shapes as the first output layer that has them."""
    seen: dict[str, tuple[tuple[int, ...], str]] = {}
    for v in views:
        for key, info in v.infos.items():
            if layer_index(key) is None:
                continue
            suffix = layer_suffix(key)
            if suffix not in seen:
                seen[suffix] = (info.shape, v.source_text(key))
            elif seen[suffix][0] != info.shape:
                shape, where = seen[suffix]
                o = v.origins[key]
                raise MismatchError(f"the slices do not line up: output key {key!r} has shape {info.shape}, but {shape} "
                                    f"where it comes from {where}", path=str(v.refs[o.checkpoint].path), key=o.key)  # fmt: skip


def config_warnings(view: SliceView) -> list[str]:
    """A copied ``config.json`` whose layer count is not the output's (wsa copies it unchanged): say so."""
    import json

    config = next((f for f in view.extra_files if f.name == "config.json"), None)
    if config is None:
        return []
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    n = layer_count(view.infos)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        given = data.get(name) if isinstance(data, dict) else None
        if isinstance(given, int) and given != n:
            return [f"{config} (copied into the output) says {name}: {given}, the slices give {n} layers: edit the output's config.json"]
    return []
