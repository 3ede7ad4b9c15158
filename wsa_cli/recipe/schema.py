"""The recipe schema: typed dataclasses whose fields are the recipe keys, parsed with line numbers.

A recipe is either one stage (the keys of :class:`StageSpec` at the top level) or ``stages:``, a
list of named stages where a later stage can use an earlier one's output as a model
(``- stage: NAME``). Each key is declared once, as a dataclass field made by :func:`doc_field`
with its YAML type, default, choices and a one-line doc; the allowed keys of every block and the
reference table in docs/recipes.md (:func:`schema_table`) are derived from those fields.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

import torch

from wsa_cli.errors import ConfigError, InputNotFoundError, InvalidValueError, UsageError
from wsa_cli.fusion.fuse import FUSION_METHODS
from wsa_cli.scope.gaussian import Scope
from wsa_cli.fusion.rescale import MODEL_RESCALE_MODES, RESCALE_MODES
from wsa_cli.io.dtypes import DTYPE_NAMES
from wsa_cli.yamlnodes import YList, YMap, YNode, YScalar, load_yaml_file
from wsa_cli.scope.selection import LayerSelector

DEFAULT_METHOD = "linear"
PROVENANCE_MODES = ("fast", "sha256")
#: what a merge does when a merged tensor holds NaN/Inf values
NONFINITE_MODES = ("warn", "error")
#: which keys a merge writes when the models' key sets differ (see docs/merge.md)
KEY_POLICIES = ("strict", "intersection", "union")
#: embedding/output rows that differ in count: ``error``, ``common`` (= ``{from: 0}``) or ``{from: N}``
ROW_POLICIES = ("error", "common")


def doc_field(
    default: Any = MISSING,
    doc: str = "",
    *,
    kind: str = "",
    choices: Sequence[str] | None = None,
    shown: str | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that is also a recipe key: its YAML type, default, choices and one-line doc.

    The key is the field's name. A list or dict default is copied for every instance; ``factory``
    makes a default such as a nested block; ``shown`` replaces the default in the reference table
    where the Python default does not say it (e.g. "required in the last stage").

    Example:
        >>> @dataclass
        ... class Demo:
        ...     size: int = doc_field(3, "how many", kind="integer")
        ...     line: int = 0  # bookkeeping: no doc, so not a key
        >>> recipe_keys(Demo), Demo().size
        (('size',), 3)
    """
    meta = {"doc": doc, "kind": kind, "choices": None if choices is None else tuple(choices), "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        proto = default
        return field(default_factory=lambda: type(proto)(proto), metadata=meta)
    return field(default=default, metadata=meta)


def recipe_keys(cls: type) -> tuple[str, ...]:
    """The YAML keys of a schema dataclass: its documented fields, in order (bookkeeping skipped).

    Example:
        >>> recipe_keys(PermutationRef)
        ('spec', 'reference', 'seed')
    """
    return tuple(f.name for f in fields(cls) if "doc" in f.metadata)


def field_choices(cls: type, key: str) -> tuple[str, ...]:
    """The allowed values of a schema key, as declared on its field.

    Example:
        >>> field_choices(OutputSpec, "provenance")
        ('fast', 'sha256')
    """
    choices = next(f for f in fields(cls) if f.name == key).metadata["choices"]
    if choices is None:
        raise KeyError(f"{cls.__name__}.{key} has no choices")
    return choices


@dataclass
class ModelRef:
    """One input: a checkpoint path, or the output of an earlier stage."""

    path: Path | None = doc_field(
        doc="a checkpoint (file, sharded index, .pt/.bin or model folder) relative to the recipe's folder; "
        "`- PATH` is short for `- path: PATH`",
        kind="path", shown="one of `path`, `stage`")  # fmt: skip
    stage: str | None = doc_field(
        doc="the name of an earlier stage whose output is this model", kind="string", shown="one of `path`, `stage`"
    )
    weight: float = doc_field(1.0, "FedAvg weight / task-vector weight (finite, >= 0)", kind="number")
    key: str | None = doc_field(
        None, doc="the entry holding the state dict inside a pickled checkpoint (e.g. `state_dict`, `ema.model`), as `--key`",
        kind="string", shown="none")  # fmt: skip
    strip_prefix: str | None = doc_field(
        None, doc="a prefix removed from every key of this model (`module.` is always removed), as `--strip-prefix`",
        kind="string", shown="none")  # fmt: skip
    line: int = 0
    text: str = ""  # as written in the recipe (used in provenance, stable across machines)

    @property
    def label(self) -> str:
        return f"stage:{self.stage}" if self.stage else self.text


@dataclass
class ScopeSpec:
    """The ``scope:`` block: Weight Scope Alignment, applied before the merge method."""

    align: bool = doc_field(True, "rescale the selected layers onto the target scope", kind="true/false")
    fusion: str = doc_field(
        "moments", "how the models' scopes of a layer are fused into the target", kind="string", choices=tuple(FUSION_METHODS)
    )
    target: Union[str, Scope, Path, int] = doc_field(  # noqa: UP007
        "fused", "the scope each layer is rescaled onto: the fused scope, model N's, a fixed one, or one from a scope file",
        kind="`fused`, `{model: N}`, `{mean: M, std: S}` or a scope-file path")  # fmt: skip
    rescale: str = doc_field(
        "affine", "how a layer is moved onto its target; `fp` is function-preserving and needs `permutation:`",
        kind="string", choices=(*RESCALE_MODES, *MODEL_RESCALE_MODES))  # fmt: skip
    include: list[str] = doc_field([], "more layers to align, e.g. `*.bias` (globs or re:REGEX)", kind="pattern or list")
    exclude: list[str] = doc_field([], "layers never aligned, e.g. `*norm*` (globs or re:REGEX)", kind="pattern or list")
    weights: list[float] | None = doc_field(
        None, "fusion weights, one per model (>= 0, not all zero); default: the models' weights", kind="list of numbers"
    )
    align_base: bool = doc_field(True, "also rescale the base model onto the target", kind="true/false")
    lines: dict[str, int] = field(default_factory=dict)

    def selector(self) -> LayerSelector:
        return LayerSelector(include=tuple(self.include), exclude=tuple(self.exclude))


@dataclass
class OverrideSpec:
    """One ``overrides:`` rule: other merge settings for the tensors whose key it matches."""

    match: list[str] = doc_field(doc="glob(s) or re:REGEX matched against tensor keys", kind="pattern or list")
    method: str | None = doc_field(None, "another merge method for these tensors (with its own defaults)", kind="string")
    parameters: dict[str, Any] = doc_field(
        {}, "its parameters; with the stage's own method they are merged over the stage's", kind="mapping"
    )
    align: bool | None = doc_field(
        None, "turn alignment off (or on, also for tensors that are not layers, e.g. biases)", kind="true/false"
    )
    rescale: str | None = doc_field(None, "another rescale mode for these tensors", kind="string", choices=RESCALE_MODES)
    line: int = 0
    lines: dict[str, int] = field(default_factory=dict)


@dataclass
class OutputSpec:
    """The ``output:`` block: where and how the merged model is written."""

    path: Path = doc_field(doc="a `*.safetensors` file, or else a folder (Hugging Face layout)", kind="path")
    dtype: torch.dtype | None = doc_field(None, "output dtype; default: the inputs'", kind="string", choices=tuple(DTYPE_NAMES))
    shard_size: int | None = doc_field(
        None, "folder output only: start a new shard above this size; default: the first model's largest shard when it is "
        "sharded (several weight files), else one file", kind="bytes or `500MB`, `2GB`, `1GiB`"
    )
    copy_files_from: Union[int, Path, bool, None] = doc_field(  # noqa: UP007
        None, "whose config/tokenizer files go into a folder output; default: the first model's, if it is a folder; "
        "`false`: none", kind="model index, folder or `false`")  # fmt: skip
    provenance: str = doc_field(
        "fast", "how the report identifies inputs: `fast` = size and mtime of every file, `sha256` = full hashes",
        kind="string", choices=PROVENANCE_MODES)  # fmt: skip
    report: bool = doc_field(True, "write the JSON merge report next to the output (with false, a report left by an earlier merge is kept but named in a warning: it no longer describes the model)", kind="true/false")
    nonfinite: str = doc_field(
        "warn", "merged tensors holding NaN/Inf values: `warn` = count them per key and warn, `error` = refuse the merge "
        "(exit 7, nothing written)", kind="string", choices=NONFINITE_MODES)  # fmt: skip
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def is_folder(self) -> bool:
        return self.path.suffix != ".safetensors"


@dataclass
class PermutationRef:
    """The ``permutation:`` block: match neurons by weight matching before merging."""

    spec: Path = doc_field(doc="a permutation spec file, or a built-in template name (e.g. `digits-mlp`)", kind="path or name")
    reference: int = doc_field(0, "the model the others are permuted onto", kind="integer")
    seed: int = doc_field(0, "seed of weight matching's group order (model i uses seed + i)", kind="integer")
    line: int = 0
    lines: dict[str, int] = field(default_factory=dict)


@dataclass
class SliceSource:
    """One source of a ``slices:`` entry: a model's layers ``[start, end)`` (see :mod:`wsa_cli.merge.slices`)."""

    model: ModelRef = doc_field(doc="the checkpoint the layers come from (a path or a mapping like `models[]`)", kind="path or mapping")
    layer_range: list[int] = doc_field(doc="`[start, end)`: the numbered layers taken, renumbered after the previous slices'",
                                       kind="two integers")  # fmt: skip
    line: int = 0
    lines: dict[str, int] = field(default_factory=dict)


@dataclass
class SliceSpec:
    """One ``slices:`` entry: the same layer count from each of its sources, merged by the stage's method."""

    sources: list[SliceSource] = doc_field(doc="the sources merged into these output layers (`slices[].sources[].*`); "
                                                "source i of every slice is the stage's model i", kind="list of mappings")  # fmt: skip
    line: int = 0


@dataclass
class StageSpec:
    """One merge: inputs, method, scope options, overrides, output."""

    name: str = doc_field(
        doc="stage name; required in a `stages:` list, where later stages refer to it", kind="string", shown="`merge`"
    )
    models: list[ModelRef] = doc_field(
        doc="the input models (at least one); each a path or a mapping (`models[].*`)", kind="list"
    )
    base: ModelRef | None = doc_field(
        None, "base model of the methods that use one (see `wsa methods`: task_arithmetic, ties, dare_*, della*, breadcrumbs*, model_stock, copy with model -1, the spherical ones with task_vectors); a path or a mapping like a model",
        kind="path or mapping")  # fmt: skip
    method: str = doc_field(DEFAULT_METHOD, "the merge method; see `wsa methods`", kind="string")
    parameters: dict[str, Any] = doc_field(
        {}, "the method's parameters; defaults in `wsa methods`; a number parameter may be a list, a gradient over the "
        "layers", kind="mapping")  # fmt: skip
    seed: int = doc_field(0, "seeds the random masks of the dare_* and della* methods", kind="integer")
    scope: ScopeSpec = doc_field(
        doc="Weight Scope Alignment before the method (`scope.*`); `scope: false` is short for `{align: false}`",
        kind="mapping or `false`", shown="see `scope.*`", factory=ScopeSpec)  # fmt: skip
    overrides: list[OverrideSpec] = doc_field(
        [], "per-tensor rules by key pattern (`overrides[].*`); the first match wins", kind="list of mappings"
    )
    output: OutputSpec | None = doc_field(
        None, "where the merge goes (`output.*`); `output: PATH` is short for `{path: PATH}`", kind="path or mapping",
        shown="required in the last stage")  # fmt: skip
    permutation: PermutationRef | None = doc_field(
        None, "match neurons before merging (`permutation.*`)", kind="mapping"
    )
    keys: str = doc_field(
        "strict", "models whose key sets differ: `strict` = refuse (int/bool buffers only some models have are copied "
        "from the first that has them, with a warning), `intersection` = drop keys some model lacks, `union` = merge "
        "each key over the models that have it", kind="string", choices=KEY_POLICIES)  # fmt: skip
    slices: list[SliceSpec] = doc_field(
        [], "instead of `models`: the output's layers built from layer ranges of several checkpoints (a frankenmerge, depth "
        "up-scaling), renumbered in order; see docs/mergekit.md", kind="list of mappings", shown="none")  # fmt: skip
    rows: Union[str, int] = doc_field(  # noqa: UP007
        "error", "tensors whose row counts differ (first dimension only; vocabulary sizes): `error`, `common` = "
        "`{from: 0}`, `{from: N}` = model N's rows, the rows all models have merged, the others copied from model N",
        kind="`error`, `common` or `{from: N}`")  # fmt: skip
    line: int = 1
    lines: dict[str, int] = field(default_factory=dict)


@dataclass
class Recipe:
    """A parsed, validated recipe (file-level checks only; models are checked by the merge plan)."""

    path: Path
    sha256: str
    version: int = doc_field(1, "recipe format version; only 1 exists", kind="integer")
    stages: list[StageSpec] = doc_field(
        [], "named stages run in order, each with the stage keys; without it the stage keys sit at the top level",
        kind="list of mappings", shown="one stage at the top level")  # fmt: skip
    #: the recipe's text as read (a merged folder keeps a copy of it); not a recipe key
    text: str = field(default="", repr=False, compare=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent


#: (key prefix, dataclass) for every block of a recipe, in the order of the reference table.
SCHEMA_BLOCKS: tuple[tuple[str, type], ...] = (
    ("", Recipe),
    ("", StageSpec),
    ("models[].", ModelRef),
    ("scope.", ScopeSpec),
    ("overrides[].", OverrideSpec),
    ("output.", OutputSpec),
    ("permutation.", PermutationRef),
    ("slices[].", SliceSpec),
    ("slices[].sources[].", SliceSource),
)

# -- parsing helpers ------------------------------------------------------------------------------

STAGE_KEYS = recipe_keys(StageSpec)
TOP_KEYS = (*recipe_keys(Recipe), *STAGE_KEYS)
SCOPE_KEYS = recipe_keys(ScopeSpec)
OVERRIDE_KEYS = recipe_keys(OverrideSpec)
OUTPUT_KEYS = recipe_keys(OutputSpec)
MODEL_KEYS = recipe_keys(ModelRef)
PERMUTATION_KEYS = recipe_keys(PermutationRef)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_text(f: Field[Any]) -> str:
    if f.metadata["shown"] is not None:
        return f.metadata["shown"]
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None or isinstance(value, bool):
        return f"`{str(value).lower() if value is not None else 'null'}`"
    return f"`{'[]' if value == [] else '{}' if value == {} else value}`"


def schema_table() -> str:
    """The recipe reference as a markdown table (key, type, default, choices, doc), made from the schema.

    docs/recipes.md holds this table between ``<!-- recipe-schema:start -->`` and
    ``<!-- recipe-schema:end -->``; a test keeps the two equal.

    Example:
        >>> table = schema_table().splitlines()
        >>> table[0]
        '| key | type | default | choices | doc |'
        >>> next(row for row in table if row.startswith("| `scope.fusion`"))
        "| `scope.fusion` | string | `moments` | `moments`, `precision`, `stats-mean` | how the models' scopes of a layer are fused into the target |"
    """
    rows = ["| key | type | default | choices | doc |", "|---|---|---|---|---|"]
    for prefix, cls in SCHEMA_BLOCKS:
        for f in fields(cls):
            if "doc" not in f.metadata:
                continue
            meta = f.metadata
            choices = ", ".join(f"`{c}`" for c in meta["choices"]) if meta["choices"] else ""
            cells = [f"`{prefix}{f.name}`", meta["kind"], _default_text(f), choices, meta["doc"]]
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


class _Ctx:
    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, node: YNode | int, message: str) -> ConfigError:
        line = node if isinstance(node, int) else node.line
        return ConfigError(message, path=self.path, line=line)

    def mapping(self, node: YNode, what: str, allowed: Sequence[str]) -> YMap:
        if not isinstance(node, YMap):
            raise self.err(node, f"{what} must be a mapping (key: value)")
        for key in node.entries:
            if key not in allowed:
                hint = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
                extra = f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(allowed)}"
                raise self.err(node.key_lines[key], f"unknown key {key!r} in {what}{extra}")
        return node

    def scalar(self, node: YNode, what: str, types: tuple[type, ...], tname: str) -> Any:
        if not isinstance(node, YScalar) or isinstance(node.value, bool) and bool not in types:
            raise self.err(node, f"{what} must be {tname}")
        if not isinstance(node.value, types):
            raise self.err(node, f"{what} must be {tname}, got {node.value!r}")
        return node.value

    def string(self, node: YNode, what: str) -> str:
        value = self.scalar(node, what, (str,), "a string")
        if not value.strip():
            raise self.err(node, f"{what} must not be empty")
        return value

    def boolean(self, node: YNode, what: str) -> bool:
        return self.scalar(node, what, (bool,), "true or false")

    def integer(self, node: YNode, what: str) -> int:
        return self.scalar(node, what, (int,), "an integer")

    def number(self, node: YNode, what: str) -> float:
        """A finite number; also a string that parses as one (YAML 1.1 reads ``1e-3`` as a string)."""
        if isinstance(node, YScalar) and isinstance(node.value, str):
            value = _float_text(node.value)
            if value is None:
                raise self.err(node, f"{what} must be a number, got {node.value!r}")
        else:
            value = float(self.scalar(node, what, (int, float), "a number"))
        if not math.isfinite(value):
            raise self.err(node, f"{what} must be a finite number, got {value}")
        return value

    def strings(self, node: YNode, what: str) -> list[str]:
        if isinstance(node, YScalar) and isinstance(node.value, str):
            return [node.value]
        if not isinstance(node, YList):
            raise self.err(node, f"{what} must be a string or a list of strings")
        return [self.string(item, f"{what} entry") for item in node.items]

    def choice(self, node: YNode, what: str, choices: Sequence[str]) -> str:
        value = self.string(node, what)
        if value not in choices:
            hint = difflib.get_close_matches(value, list(choices), n=1)
            extra = f"did you mean {hint[0]!r}? " if hint else ""
            raise self.err(node, f"{what} {value!r} is not known; {extra}choose from {', '.join(choices)}")
        return value

    def file(self, node: YNode, what: str, base_dir: Path, *, must_exist: bool = True) -> tuple[Path, str]:
        text = self.string(node, what)
        p = Path(text).expanduser()
        resolved = p if p.is_absolute() else base_dir / p
        if must_exist and not resolved.exists():
            raise InputNotFoundError(f"{what} {text!r} does not exist ({resolved})", path=self.path, line=node.line)
        return resolved, text


#: A decimal number as YAML 1.2 writes it; PyYAML (YAML 1.1) leaves ``1e-3`` and ``5e3`` as strings.
_FLOAT_TEXT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _float_text(text: str) -> float | None:
    """The float a numeric string means (``"1e-3"``, ``"5e3"``), or None if it is not a number."""
    return float(text) if _FLOAT_TEXT.fullmatch(text.strip()) else None


def _lines(node: YMap) -> dict[str, int]:
    return dict(node.key_lines)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.I)


def parse_size(text: str) -> int | None:
    """``"2GB"`` -> 2_000_000_000, ``"500MiB"`` -> 524_288_000, ``"123"`` -> 123; None if malformed.

    Example:
        >>> parse_size("1.5GB"), parse_size("4KiB")
        (1500000000, 4096)
    """
    m = _SIZE.match(text)
    if not m:
        return None
    num, unit, suffix = float(m.group(1)), m.group(2).upper(), (m.group(3) or "")
    base = 1024 if suffix.lower() == "ib" else 1000
    power = " KMGT".index(unit) if unit else 0
    return int(num * base**power)


def _parse_model(ctx: _Ctx, node: YNode, base_dir: Path, what: str) -> ModelRef:
    if isinstance(node, YScalar):
        path, text = ctx.file(node, what, base_dir)
        return ModelRef(path=path, stage=None, line=node.line, text=text)
    m = ctx.mapping(node, what, MODEL_KEYS)
    if ("path" in m) == ("stage" in m):
        raise ctx.err(m, f"{what} needs exactly one of 'path' or 'stage'")
    weight = ctx.number(m.entries["weight"], f"{what} weight") if "weight" in m else 1.0
    if weight < 0:
        raise ctx.err(m.entries["weight"], f"{what} weight must be finite and >= 0, got {weight}")
    key = ctx.string(m.entries["key"], f"{what} key") if "key" in m else None
    prefix = ctx.string(m.entries["strip_prefix"], f"{what} strip_prefix") if "strip_prefix" in m else None
    if "path" in m:
        path, text = ctx.file(m.entries["path"], f"{what} path", base_dir)
        return ModelRef(path=path, stage=None, weight=weight, key=key, strip_prefix=prefix, line=m.entries["path"].line, text=text)
    if key is not None or prefix is not None:
        raise ctx.err(m.entries["key" if key is not None else "strip_prefix"], f"{what}: key and strip_prefix apply to a checkpoint path, not a stage")
    stage = ctx.string(m.entries["stage"], f"{what} stage")
    return ModelRef(path=None, stage=stage, weight=weight, line=m.entries["stage"].line, text=f"stage:{stage}")


def _parse_params(ctx: _Ctx, node: YNode, what: str) -> dict[str, Any]:
    if isinstance(node, YScalar) and node.value is None:
        return {}
    m = ctx.mapping(node, what, tuple(node.entries) if isinstance(node, YMap) else ())
    out: dict[str, Any] = {}
    for key, value in m.entries.items():
        if isinstance(value, YList):  # a gradient over the layers: [0.2, 0.5, 0.8]
            if not value.items:
                raise ctx.err(value, f"{what}: {key}: a gradient needs at least one number, got []")
            out[key] = [_param_value(ctx, item, f"{what}: {key} gradient entry {i}") for i, item in enumerate(value.items)]
            continue
        out[key] = _param_value(ctx, value, f"{what}: {key}")
    return out


def _param_value(ctx: _Ctx, value: YNode, what: str) -> Any:
    if not isinstance(value, YScalar):
        raise ctx.err(value, f"{what} must be a number, string or true/false (or, for a number, a list of numbers)")
    out = value.value
    if isinstance(out, str) and _float_text(out) is not None:
        out = _float_text(out)  # "1e-3": a number YAML 1.1 reads as a string
    if isinstance(out, float) and not math.isfinite(out):
        raise ctx.err(value, f"{what} must be a finite number, got {out}")
    return out


def _parse_scope(ctx: _Ctx, node: YNode, base_dir: Path) -> ScopeSpec:
    if isinstance(node, YScalar) and isinstance(node.value, bool):  # "scope: false" shorthand
        return ScopeSpec(align=node.value)
    m = ctx.mapping(node, "scope", SCOPE_KEYS)
    s = ScopeSpec(lines=_lines(m))
    e = m.entries
    if "align" in e:
        s.align = ctx.boolean(e["align"], "scope.align")
    if "fusion" in e:
        s.fusion = ctx.choice(e["fusion"], "scope.fusion", field_choices(ScopeSpec, "fusion"))
    if "rescale" in e:
        s.rescale = ctx.choice(e["rescale"], "scope.rescale", field_choices(ScopeSpec, "rescale"))
    if "align_base" in e:
        s.align_base = ctx.boolean(e["align_base"], "scope.align_base")
    for name in ("include", "exclude"):
        if name in e:
            patterns = ctx.strings(e[name], f"scope.{name}")
            try:
                LayerSelector(include=tuple(patterns))
            except (UsageError, InvalidValueError) as exc:
                raise ctx.err(e[name], f"scope.{name}: {exc.message}") from None
            setattr(s, name, patterns)
    if "weights" in e:
        w = e["weights"]
        if isinstance(w, YScalar) and w.value is None:
            s.weights = None
        elif not isinstance(w, YList) or not w.items:
            raise ctx.err(w, "scope.weights must be a list of numbers")
        else:
            s.weights = [ctx.number(i, "scope.weights entry") for i in w.items]
            if any(x < 0 for x in s.weights) or sum(s.weights) <= 0:
                raise ctx.err(w, "scope.weights must be >= 0 and not all zero")
    if "target" in e:
        s.target = _parse_target(ctx, e["target"], base_dir)
    return s


def _parse_target(ctx: _Ctx, node: YNode, base_dir: Path) -> str | Scope | Path | int:
    if isinstance(node, YScalar) and node.value == "fused":
        return "fused"
    if isinstance(node, YMap):
        if "model" in node:
            ctx.mapping(node, "scope.target", ("model",))
            return ctx.integer(node.entries["model"], "scope.target.model")
        m = ctx.mapping(node, "scope.target", ("mean", "std"))
        if "mean" not in m or "std" not in m:
            raise ctx.err(m, "a fixed scope.target needs both 'mean' and 'std'")
        mean = ctx.number(m.entries["mean"], "scope.target.mean")
        std = ctx.number(m.entries["std"], "scope.target.std")
        if std < 0:
            raise ctx.err(m, f"scope.target needs a finite mean and std >= 0, got mean={mean} std={std}")
        return Scope(mean, std)
    if isinstance(node, YScalar) and isinstance(node.value, str):
        if "," in node.value and not (base_dir / node.value).exists():  # the command line's MEAN,STD form
            raise ctx.err(node, f"scope.target {node.value!r}: in a recipe a fixed target is {{mean: M, std: S}}")
        path, _ = ctx.file(node, "scope.target scope file", base_dir)
        from wsa_cli.fusion.scopefile import load_scope_file

        load_scope_file(path)  # validate now: a broken scope file fails before any tensor is read
        return path
    raise ctx.err(node, "scope.target must be 'fused', {model: N}, {mean: M, std: S} or a scope-file path")


def _parse_overrides(ctx: _Ctx, node: YNode) -> list[OverrideSpec]:
    if not isinstance(node, YList):
        raise ctx.err(node, "overrides must be a list of rules (- match: PATTERN ...)")
    rules = []
    for i, item in enumerate(node.items):
        what = f"overrides[{i}]"
        m = ctx.mapping(item, what, OVERRIDE_KEYS)
        if "match" not in m:
            raise ctx.err(m, f"{what} needs 'match' (a glob, re:REGEX or a list of them)")
        rule = OverrideSpec(match=ctx.strings(m.entries["match"], f"{what}.match"), line=m.line, lines=_lines(m))
        try:
            LayerSelector(include=tuple(rule.match))
        except (UsageError, InvalidValueError) as exc:
            raise ctx.err(m.entries["match"], f"{what}.match: {exc.message}") from None
        if "method" in m:
            rule.method = ctx.string(m.entries["method"], f"{what}.method")
        if "parameters" in m:
            rule.parameters = _parse_params(ctx, m.entries["parameters"], f"{what}.parameters")
        if "align" in m:
            rule.align = ctx.boolean(m.entries["align"], f"{what}.align")
        if "rescale" in m:
            rule.rescale = ctx.choice(m.entries["rescale"], f"{what}.rescale", field_choices(OverrideSpec, "rescale"))
        rules.append(rule)
    return rules


def _parse_output(ctx: _Ctx, node: YNode, base_dir: Path) -> OutputSpec:
    if isinstance(node, YScalar):  # "output: merged.safetensors" shorthand
        path, _ = ctx.file(node, "output", base_dir, must_exist=False)
        return OutputSpec(path=path, lines={"path": node.line})
    m = ctx.mapping(node, "output", OUTPUT_KEYS)
    if "path" not in m:
        raise ctx.err(m, "output needs 'path'")
    path, _ = ctx.file(m.entries["path"], "output.path", base_dir, must_exist=False)
    out = OutputSpec(path=path, lines=_lines(m))
    e = m.entries
    if "dtype" in e and not (isinstance(e["dtype"], YScalar) and e["dtype"].value is None):
        out.dtype = DTYPE_NAMES[ctx.choice(e["dtype"], "output.dtype", field_choices(OutputSpec, "dtype"))]
    if "shard_size" in e and not (isinstance(e["shard_size"], YScalar) and e["shard_size"].value is None):
        raw = e["shard_size"]
        value = raw.value if isinstance(raw, YScalar) else None
        size = value if isinstance(value, int) and not isinstance(value, bool) else parse_size(value) if isinstance(value, str) else None
        number = _float_text(value) if isinstance(value, str) else value if isinstance(value, float) else None
        if size is None and number is not None and math.isfinite(number) and number == int(number):
            size = int(number)  # 5e9, 2.0e+9
        if size is None or size <= 0:
            raise ctx.err(raw, f"output.shard_size must be a positive byte count or a size like '2GB', got {value!r}")
        if not out.is_folder:
            raise ctx.err(raw, "output.shard_size needs a folder output path (not *.safetensors)")
        out.shard_size = size
    if "copy_files_from" in e:
        c = e["copy_files_from"]
        if isinstance(c, YScalar) and (c.value is None or c.value is True):
            out.copy_files_from = None
        elif isinstance(c, YScalar) and c.value is False:
            out.copy_files_from = False
        elif isinstance(c, YScalar) and isinstance(c.value, int):
            out.copy_files_from = c.value
        else:
            folder, text = ctx.file(c, "output.copy_files_from", base_dir)
            if not folder.is_dir():
                raise ctx.err(c, f"output.copy_files_from {text!r} must be a model folder or a model index")
            out.copy_files_from = folder
        if out.copy_files_from is not None and out.copy_files_from is not False and not out.is_folder:
            raise ctx.err(c, "output.copy_files_from needs a folder output path (config files cannot sit in a .safetensors file)")
    if "provenance" in e:
        out.provenance = ctx.choice(e["provenance"], "output.provenance", field_choices(OutputSpec, "provenance"))
    if "report" in e:
        out.report = ctx.boolean(e["report"], "output.report")
    if "nonfinite" in e:
        out.nonfinite = ctx.choice(e["nonfinite"], "output.nonfinite", field_choices(OutputSpec, "nonfinite"))
    return out


def _parse_permutation(ctx: _Ctx, node: YNode, base_dir: Path) -> PermutationRef:
    m = ctx.mapping(node, "permutation", PERMUTATION_KEYS)
    if "spec" not in m:
        raise ctx.err(m, "permutation needs 'spec' (a permutation spec file or a built-in template name)")
    spec_node = m.entries["spec"]
    text = ctx.string(spec_node, "permutation.spec")
    candidate = Path(text) if Path(text).is_absolute() else base_dir / text
    # a spec is a file next to the recipe, or a built-in template name (e.g. digits-mlp)
    spec = candidate if candidate.exists() or Path(text).suffix else Path(text)
    if Path(text).suffix and not candidate.exists():
        raise InputNotFoundError(f"permutation.spec {text!r} does not exist ({candidate})", path=ctx.path, line=spec_node.line)
    ref = PermutationRef(spec=spec, line=m.line, lines=_lines(m))
    if "reference" in m:
        ref.reference = ctx.integer(m.entries["reference"], "permutation.reference")
    if "seed" in m:
        ref.seed = ctx.integer(m.entries["seed"], "permutation.seed")
    return ref


def _parse_stage(ctx: _Ctx, m: YMap, base_dir: Path, default_name: str) -> StageSpec:
    e = m.entries
    name = ctx.string(e["name"], "name") if "name" in e else default_name
    if "slices" in e:
        return _parse_slice_stage(ctx, m, base_dir, name)
    if "models" not in e:
        raise ctx.err(m, f"stage {name!r} needs 'models' (a list of checkpoint paths)")
    mnode = e["models"]
    if not isinstance(mnode, YList) or not mnode.items:
        raise ctx.err(mnode, "models must be a non-empty list of checkpoint paths")
    models = [_parse_model(ctx, item, base_dir, f"models[{i}]") for i, item in enumerate(mnode.items)]
    return _parse_stage_rest(ctx, m, base_dir, StageSpec(name=name, models=models, line=m.line, lines=_lines(m)))


def _parse_slice_stage(ctx: _Ctx, m: YMap, base_dir: Path, name: str) -> StageSpec:
    """A stage built from ``slices:`` (no ``models:``); its keys policy is ``union`` (each layer has its own sources)."""
    e = m.entries
    for clash in ("models", "keys", "permutation"):
        if clash in e:
            raise ctx.err(m.key_lines[clash], f"{clash!r} does not go with 'slices' (the slices' sources are the models)")
    snode = e["slices"]
    if not isinstance(snode, YList) or not snode.items:
        raise ctx.err(snode, "slices must be a non-empty list of {sources: [...]}")
    slices = []
    for i, item in enumerate(snode.items):
        sm = ctx.mapping(item, f"slices[{i}]", recipe_keys(SliceSpec))
        if "sources" not in sm or not isinstance(sm.entries["sources"], YList) or not sm.entries["sources"].items:
            raise ctx.err(sm, f"slices[{i}] needs 'sources' (a non-empty list of {{model: PATH, layer_range: [START, END]}})")
        sources = []
        for j, src in enumerate(sm.entries["sources"].items):
            what = f"slices[{i}].sources[{j}]"
            mm = ctx.mapping(src, what, recipe_keys(SliceSource))
            for need in ("model", "layer_range"):
                if need not in mm:
                    raise ctx.err(mm, f"{what} needs '{need}'")
            rng = mm.entries["layer_range"]
            if not isinstance(rng, YList) or len(rng.items) != 2:
                raise ctx.err(rng, f"{what}.layer_range must be [START, END] (two integers, END exclusive)")
            a, b = (ctx.integer(x, f"{what}.layer_range") for x in rng.items)
            if not 0 <= a < b:
                raise ctx.err(rng, f"{what}.layer_range [{a}, {b}] must have 0 <= START < END")
            sources.append(SliceSource(model=_parse_model(ctx, mm.entries["model"], base_dir, f"{what}.model"), layer_range=[a, b],
                                       line=mm.line, lines=_lines(mm)))  # fmt: skip
        counts = {s.layer_range[1] - s.layer_range[0] for s in sources}
        if len(counts) > 1:
            raise ctx.err(sm, f"slices[{i}]: every source must give the same number of layers, got {sorted(counts)}")
        slices.append(SliceSpec(sources=sources, line=sm.line))
    stage = StageSpec(name=name, models=[], line=m.line, lines=_lines(m), slices=slices, keys="union")
    return _parse_stage_rest(ctx, m, base_dir, stage)


def _parse_stage_rest(ctx: _Ctx, m: YMap, base_dir: Path, stage: StageSpec) -> StageSpec:
    e = m.entries
    if "base" in e and not (isinstance(e["base"], YScalar) and e["base"].value is None):
        stage.base = _parse_model(ctx, e["base"], base_dir, "base")
    if "method" in e:
        stage.method = ctx.string(e["method"], "method")
    if "parameters" in e:
        stage.parameters = _parse_params(ctx, e["parameters"], "parameters")
    if "seed" in e:
        stage.seed = ctx.integer(e["seed"], "seed")
    if "scope" in e:
        stage.scope = _parse_scope(ctx, e["scope"], base_dir)
    if "overrides" in e:
        stage.overrides = _parse_overrides(ctx, e["overrides"])
    if "output" in e:
        stage.output = _parse_output(ctx, e["output"], base_dir)
    if "permutation" in e and not (isinstance(e["permutation"], YScalar) and e["permutation"].value is None):
        stage.permutation = _parse_permutation(ctx, e["permutation"], base_dir)
    if "keys" in e:
        stage.keys = ctx.choice(e["keys"], "keys", KEY_POLICIES)
    if "rows" in e:
        stage.rows = _parse_rows(ctx, e["rows"])
    return stage


def _parse_rows(ctx: _Ctx, node: YNode) -> str | int:
    """``rows: error | common | {from: N}``; ``common`` is kept as written (it means ``{from: 0}``)."""
    if isinstance(node, YMap):
        m = ctx.mapping(node, "rows", ("from",))
        if "from" not in m:
            raise ctx.err(m, "rows needs 'from: N' (the model whose rows the output has)")
        value = ctx.integer(m.entries["from"], "rows.from")
        if value < 0:
            raise ctx.err(m.entries["from"], f"rows.from must be a model index >= 0, got {value}")
        return value
    if isinstance(node, YScalar) and isinstance(node.value, str):
        return ctx.choice(node, "rows", ROW_POLICIES)
    raise ctx.err(node, "rows must be 'error', 'common' or {from: N}")


def parse_recipe(node: YNode, path: Path, text: str) -> Recipe:
    """Turn parsed YAML into a :class:`Recipe`, raising :class:`ConfigError` at the offending line."""
    ctx = _Ctx(path)
    base_dir = path.parent
    if isinstance(node, YMap) and "sweep" in node.entries:  # read (and removed) by wsa sweep, never merged as such
        line = node.key_lines.get("sweep", node.line)
        raise ConfigError("the sweep: block is read by `wsa sweep`; merge one of its points with `wsa sweep RECIPE --write INDEX` "
                          "(or remove the block to merge the recipe's own values)", path=path, line=line)
    top = ctx.mapping(node, "the recipe", TOP_KEYS)
    if "version" in top and ctx.integer(top.entries["version"], "version") != 1:
        raise ctx.err(top.entries["version"], "only recipe version 1 exists")
    if "stages" in top:
        stray = [k for k in top.entries if k not in recipe_keys(Recipe)]
        if stray:
            raise ctx.err(top.key_lines[stray[0]], f"{stray[0]!r} must go inside a stage when 'stages' is used")
        snode = top.entries["stages"]
        if not isinstance(snode, YList) or not snode.items:
            raise ctx.err(snode, "stages must be a non-empty list of stages")
        stages = []
        for i, item in enumerate(snode.items):
            m = ctx.mapping(item, f"stages[{i}]", STAGE_KEYS)
            if "name" not in m:
                raise ctx.err(m, f"stages[{i}] needs a 'name' (later stages refer to it)")
            stages.append(_parse_stage(ctx, m, base_dir, f"stage{i}"))
    else:
        stages = [_parse_stage(ctx, top, base_dir, "merge")]
    _check_stage_graph(ctx, stages)
    return Recipe(path=path, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), stages=stages, text=text)


def _check_stage_graph(ctx: _Ctx, stages: list[StageSpec]) -> None:
    seen: dict[str, StageSpec] = {}
    outputs: dict[Path, str] = {}
    for stage in stages:
        if stage.name in seen:
            raise ctx.err(stage.lines.get("name", stage.line), f"stage name {stage.name!r} is used twice")
        for ref in [*stage.models, *([stage.base] if stage.base else [])]:
            if ref.stage is not None and ref.stage not in seen:
                later = ref.stage in {s.name for s in stages}
                why = "a stage can only use stages listed before it" if later else "no stage has that name"
                raise ctx.err(ref.line, f"stage {ref.stage!r} is not available here ({why})")
        if stage.output is not None:
            resolved = stage.output.path.resolve()
            if resolved in outputs:
                raise ctx.err(stage.output.lines.get("path", stage.line), f"output path is also the output of stage {outputs[resolved]!r}")
            outputs[resolved] = stage.name
        seen[stage.name] = stage
    if stages[-1].output is None:
        raise ctx.err(stages[-1].line, f"stage {stages[-1].name!r} needs 'output' (the final stage must write a file)")


def load_recipe(path: str | Path) -> Recipe:
    """Read, parse and check a recipe file (no checkpoint is opened here).

    Example:
        >>> load_recipe("recipes/average.yaml").stages[0].method  # doctest: +SKIP
        'linear'
    """
    p = Path(path)
    node, text = load_yaml_file(p)
    return parse_recipe(node, p, text)
