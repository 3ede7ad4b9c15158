"""mergekit configs as wsa recipes: ``wsa merge mergekit.yml -o OUT`` and ``wsa recipe from-mergekit``.

A mergekit config (``merge_method:`` with ``models:`` or ``slices:``) is translated into the wsa
recipe that computes the same merge, then loaded with the ordinary recipe loader, so everything
wsa checks (files, shapes, parameter ranges) is checked. The translation is strict where mergekit
is lenient: an unknown or misspelt key, a parameter the method does not have, or a setting wsa
cannot honour exactly is a :class:`~wsa_cli.errors.ConfigError` at its line of the mergekit file,
naming what to use instead. Errors that the recipe loader or the merge plan find later are
reported at the mergekit line that produced the recipe line (see :class:`Translation`).

What the translation does (mergekit's config.py and merge_methods/ read, not run):

* ``models[].parameters.weight`` -> the model's ``weight``; other per-model parameters must be
  equal for every model (wsa has one value per stage) and become stage parameters;
* ``parameters:`` numbers and gradients (lists) as they are; ``- filter: S / value: V`` lists
  become ``overrides`` matching keys that contain ``S`` (mergekit's substring test), in order,
  the entry without a filter the stage's value;
* renamed parameters: ``lambda`` -> ``scale``, dare's ``density`` -> ``drop_rate = 1 - density``,
  nuslerp's ``nuslerp_flatten`` / ``nuslerp_row_wise`` -> ``flatten`` / ``row_wise``; mergekit's
  defaults are written out where wsa's differ (``density: 1.0`` of the task-vector methods), and
  ``ties`` gets ``tie_rule: exact`` (mergekit keeps exactly k entries);
* ``base_model``: the base of the task-vector methods (and removed from ``models`` when listed
  there); for ``slerp`` the model at ``t = 0`` (models[0]); for nuslerp/multislerp/karcher a base
  means task vectors (``task_vectors: true``);
* ``dtype`` (mergekit's working dtype; wsa computes in float32) and ``out_dtype`` -> ``output.dtype``
  (``out_dtype`` first); ``tokenizer_source: base`` -> ``output.copy_files_from`` the base's folder;
* ``scope: false``: no Weight Scope Alignment, so the result is mergekit's (``--align`` turns it on).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from wsa_cli.errors import ConfigError, InputNotFoundError, WsaError
from wsa_cli.io.dtypes import DTYPE_NAMES
from wsa_cli.recipe.schema import Recipe, parse_recipe
from wsa_cli.results import Result, Text, View
from wsa_cli.yamlnodes import YList, YMap, YNode, YScalar, load_yaml_file, load_yaml_text

#: mergekit's top-level keys, and the ones wsa translates
MERGEKIT_KEYS = ("merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source",
                 "tokenizer", "chat_template", "modules", "name")  # fmt: skip
_UNSUPPORTED_TOP = {
    "tokenizer": "wsa does not build tokenizers; use tokenizer_source: base (or copy the tokenizer files yourself)",
    "chat_template": "wsa does not write chat templates; add it to the output's tokenizer_config.json",
    "modules": "per-module merges are not supported; merge each module with its own wsa stage",
}

#: the methods whose merge uses sign election (TIES's disjoint mean): mergekit's `normalize` must be true
_CONSENSUS = ("ties", "dare_ties", "breadcrumbs_ties", "della")
_TASK_VECTOR = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear")
#: mergekit's `normalize` default per task-vector method
_NORMALIZE_DEFAULT = {"task_arithmetic": False, "ties": True, "dare_ties": False, "dare_linear": False, "breadcrumbs": False,
                      "breadcrumbs_ties": False, "della": True, "della_linear": False}  # fmt: skip
_RESCALE_DEFAULT = {"dare_ties": True, "dare_linear": True, "della": True, "della_linear": True}
#: mergekit parameter -> wsa parameter, per method (None: accepted, no effect on the result)
_PARAMS: dict[str, dict[str, str | None]] = {
    "linear": {"normalize": "normalize"},
    "slerp": {"t": "t"},
    "passthrough": {},
    "model_stock": {"filter_wise": None},
    "karcher": {"max_iter": "max_iter", "tol": "tol"},
    "multislerp": {"normalize_weights": None, "eps": None},
    "nuslerp": {"nuslerp_flatten": "flatten", "nuslerp_row_wise": "row_wise"},
}
for _m in _TASK_VECTOR:
    _PARAMS[_m] = {"lambda": "scale", "normalize": None, "rescale": None, "int8_mask": None}
    if _m != "task_arithmetic":
        _PARAMS[_m]["density"] = "drop_rate" if _m.startswith("dare") else "density"
    if _m.startswith("breadcrumbs"):
        _PARAMS[_m]["gamma"] = "gamma"
    if _m.startswith("della"):
        _PARAMS[_m]["epsilon"] = "epsilon"
#: per-model parameters (`models[].parameters`, `sources[].parameters`) besides `weight`
_PER_MODEL = ("density", "gamma", "epsilon")


def is_mergekit_config(path: str | Path) -> bool:
    """True when the YAML file at ``path`` is a mergekit config (a top-level ``merge_method:``)."""
    try:
        node, _ = load_yaml_file(path)
    except WsaError:
        return False
    return isinstance(node, YMap) and "merge_method" in node.entries


@dataclass
class Translation:
    """A mergekit config as a wsa recipe: its YAML text and, per recipe line, the mergekit line it comes from."""

    text: str
    lines: dict[int, int] = field(default_factory=dict)  # recipe line -> mergekit line

    def mk_line(self, line: int | None) -> int | None:
        return None if line is None else self.lines.get(line, line)


@dataclass
class _At:
    """A recipe value and the mergekit line it was written at."""

    value: Any
    line: int


class _Translator:
    def __init__(self, path: Path, out: str, align: bool, rel_to: Path) -> None:
        self.path = path
        self.out = out
        self.align = align
        self.rel_to = rel_to  # the folder the recipe's paths are relative to

    def err(self, node: YNode | int, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, line=node if isinstance(node, int) else node.line)

    def mapping(self, node: YNode, what: str, allowed: tuple[str, ...]) -> YMap:
        if not isinstance(node, YMap):
            raise self.err(node, f"{what} must be a mapping")
        for key, line in node.key_lines.items():
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                extra = f"did you mean {hint[0]!r}? " if hint else ""
                raise self.err(line, f"{what}: unknown key {key!r}; {extra}mergekit's keys here are {', '.join(allowed)}")
        return node

    def model_path(self, node: YNode, what: str) -> str:
        """A model reference as a path relative to the config's folder.

        mergekit resolves it from the working directory; a path found there wins, else one next to the config."""
        if not isinstance(node, YScalar) or not isinstance(node.value, str) or not node.value:
            raise self.err(node, f"{what} must be a model path")
        text = node.value
        if "+" in text and not Path(text).exists():
            raise self.err(node, f"{what} {text!r}: LoRA references (MODEL+LORA) are not supported; merge the LoRA into the model first")
        p = Path(text).expanduser()
        if not p.exists() and not p.is_absolute() and (self.path.parent / p).exists():
            p = self.path.parent / p  # not in the working directory (where mergekit looks): next to the config
        if not p.exists():
            raise InputNotFoundError(f"{what} {text!r} is not a local checkpoint; wsa reads local files only: download it "
                                     f"(e.g. huggingface-cli download {text} --local-dir DIR) and name the folder",
                                     path=self.path, line=node.line)  # fmt: skip
        return os.path.relpath(p.resolve(), self.rel_to.resolve())

    # -- parameters ---------------------------------------------------------------------------
    def number_or_gradient(self, node: YNode, what: str) -> Any:
        if isinstance(node, YList):
            if not node.items or not all(isinstance(i, YScalar) for i in node.items):
                raise self.err(node, f"{what}: a gradient must be a non-empty list of numbers")
            return [self.scalar(i, what) for i in node.items]
        return self.scalar(node, what)

    def scalar(self, node: YNode, what: str) -> Any:
        if not isinstance(node, YScalar) or node.value is None:
            raise self.err(node, f"{what} must be a number, true/false or a list of numbers")
        v = node.value
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise self.err(node, f"{what} must be a number or true/false, got {v!r}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise self.err(node, f"{what} must be finite, got {v}")
        return v

    def setting(self, node: YNode, what: str) -> list[tuple[str | None, Any, int]]:
        """A mergekit parameter setting as (filter or None, value, line) entries, in mergekit's order."""
        if isinstance(node, YList) and node.items and all(isinstance(i, YMap) for i in node.items):
            out = []
            for i, item in enumerate(node.items):
                m = self.mapping(item, f"{what}[{i}]", ("filter", "value"))
                if "value" not in m:
                    raise self.err(m, f"{what}[{i}] needs 'value'")
                f = m.entries.get("filter")
                filt = None if f is None or (isinstance(f, YScalar) and f.value in (None, "*")) else f
                if filt is not None and not (isinstance(filt, YScalar) and isinstance(filt.value, str)):
                    raise self.err(filt, f"{what}[{i}].filter must be a string (a part of the tensor names)")
                out.append((None if filt is None else filt.value, self.number_or_gradient(m.entries["value"], f"{what}[{i}].value"), m.line))
            return out
        if isinstance(node, YMap):
            return self.setting(YList([node], node.line), what)
        return [(None, self.number_or_gradient(node, what), node.line)]

    def rename(self, method: str, name: str, value: Any, line: int, what: str) -> tuple[str, Any] | None:
        """One mergekit parameter as wsa's (name, value); None when it has no effect; errors name what to use."""
        table = _PARAMS[method]
        if name not in table:
            known = [k for k in table] + (["weight"] if method not in ("passthrough",) else [])
            hint = difflib.get_close_matches(name, known, n=1)
            extra = f"did you mean {hint[0]!r}? " if hint else ""
            raise self.err(line, f"{what}: {method} has no parameter {name!r}; {extra}its parameters are {', '.join(known) or 'none'}")
        target = table[name]
        if name == "normalize" and method in _CONSENSUS and value is not True:
            raise self.err(line, f"{what}: {method} with normalize: false sums the agreeing task vectors; wsa's {method} is "
                           "their (disjoint) mean, which is mergekit's normalize: true: set normalize: true")  # fmt: skip
        if name == "rescale" and value is not _RESCALE_DEFAULT.get(method, False):
            raise self.err(line, f"{what}: {method} with rescale: {str(value).lower()} is not offered by wsa; remove it "
                           f"(wsa's {method} {'rescales' if _RESCALE_DEFAULT.get(method) else 'does not rescale'})")  # fmt: skip
        if name == "normalize" and method in _TASK_VECTOR and method not in _CONSENSUS:
            if method in ("task_arithmetic", "dare_linear"):
                return "normalize", value
            if value is not False:
                raise self.err(line, f"{what}: {method} with normalize: true is not offered by wsa; remove it")
            return None
        if name == "normalize_weights" and value is not True:
            raise self.err(line, f"{what}: multislerp with normalize_weights: false is not offered by wsa; remove it")
        if name == "filter_wise" and value is not False:
            raise self.err(line, f"{what}: model_stock with filter_wise: true is not offered by wsa; remove it")
        if target is None:
            return None
        if target == "drop_rate":
            value = [1.0 - float(v) for v in value] if isinstance(value, list) else 1.0 - float(value)
        return target, value

    # -- the config -----------------------------------------------------------------------------
    def translate(self, node: YNode) -> dict[str, Any]:
        top = self.mapping(node, "the mergekit config", MERGEKIT_KEYS)
        e = top.entries
        for key, why in _UNSUPPORTED_TOP.items():
            if key in e:
                raise self.err(top.key_lines[key], f"{key}: {why}")
        mnode = e["merge_method"]
        if not isinstance(mnode, YScalar) or not isinstance(mnode.value, str):
            raise self.err(mnode, "merge_method must be a method name")
        method = mnode.value
        if method not in _PARAMS:
            hint = difflib.get_close_matches(method, list(_PARAMS), n=1)
            extra = f"did you mean {hint[0]!r}? " if hint else ""
            raise self.err(mnode, f"merge_method {method!r} is not one wsa runs; {extra}choose from {', '.join(sorted(_PARAMS))}")
        if ("models" in e) == ("slices" in e):
            raise self.err(top, "a mergekit config needs exactly one of 'models' or 'slices'")
        base = self.model_path(e["base_model"], "base_model") if "base_model" in e else None
        recipe: dict[str, Any] = {"method": _At(method, mnode.line)}
        weights: dict[str, float] = {}
        per_model: dict[str, list[tuple[Any, int]]] = {}
        if "models" in e:
            entries = self.models(e["models"], method, weights, per_model)
            models = [p for p, _ in entries]
            lines = {p: ln for p, ln in entries}
            if base is not None and method in (*_TASK_VECTOR, "model_stock", "slerp", "nuslerp", "multislerp", "karcher"):
                models = [m for m in models if m != base]
            if method == "slerp":
                if base is None:
                    raise self.err(mnode, "slerp needs base_model (the model at t = 0) and one other model")
                models = [base, *models]
                base = None
            recipe["models"] = [_At(self.model_entry(m, weights), lines.get(m, mnode.line)) for m in models]
        else:
            recipe["slices"] = self.slices(e["slices"], method, base, weights, per_model)
            if method == "slerp":
                base = None
        params = self.parameters(e.get("parameters"), method, per_model, mnode.line, n_slices=len(recipe.get("slices", [])))
        if base is not None:
            recipe["base"] = _At(base, top.key_lines["base_model"])
            if method in ("nuslerp", "multislerp", "karcher"):
                params["stage"]["task_vectors"] = _At(True, top.key_lines["base_model"])
        if method == "ties":
            params["stage"].setdefault("tie_rule", _At("exact", mnode.line))
        if params["stage"]:
            recipe["parameters"] = _At(params["stage"], top.key_lines.get("parameters", mnode.line))
        recipe["scope"] = _At({"align": self.align}, mnode.line)
        if params["overrides"]:
            recipe["overrides"] = params["overrides"]
        recipe["output"] = self.output(e, top, base)
        return recipe

    def model_entry(self, path: str, weights: dict[str, float]) -> Any:
        w = weights.get(path)
        return path if w is None or w == 1.0 else {"path": path, "weight": w}

    def models(self, node: YNode, method: str, weights: dict[str, float], per_model: dict[str, list[tuple[Any, int]]]) -> list[tuple[str, int]]:
        if not isinstance(node, YList) or not node.items:
            raise self.err(node, "models must be a non-empty list of {model: PATH, parameters: {...}}")
        out = []
        for i, item in enumerate(node.items):
            what = f"models[{i}]"
            if isinstance(item, YScalar):
                out.append((self.model_path(item, what), item.line))
                continue
            m = self.mapping(item, what, ("model", "parameters"))
            if "model" not in m:
                raise self.err(m, f"{what} needs 'model'")
            path = self.model_path(m.entries["model"], f"{what}.model")
            self.model_parameters(m.entries.get("parameters"), method, path, weights, per_model, what)
            out.append((path, m.entries["model"].line))
        return out

    def model_parameters(self, node: YNode | None, method: str, path: str, weights: dict[str, float],
                         per_model: dict[str, list[tuple[Any, int]]], what: str) -> None:  # fmt: skip
        if node is None or (isinstance(node, YScalar) and node.value is None):
            return
        allowed = ("weight", *[p for p in _PER_MODEL if p in _PARAMS[method]])
        m = self.mapping(node, f"{what}.parameters", allowed)
        for name, value in m.entries.items():
            entries = self.setting(value, f"{what}.parameters.{name}")
            if len(entries) != 1 or entries[0][0] is not None:
                raise self.err(value, f"{what}.parameters.{name}: per-model filters are not supported; give one value "
                               "(per-tensor values go in the top-level parameters, as filters)")  # fmt: skip
            v = entries[0][1]
            if name == "weight":
                if isinstance(v, list):
                    raise self.err(value, f"{what}.parameters.weight: a model's weight is one number in wsa, got a gradient")
                if path in weights and weights[path] != v:
                    raise self.err(value, f"{what}.parameters.weight {v} differs from the weight {weights[path]} given to "
                                   "the same model elsewhere")  # fmt: skip
                weights[path] = float(v)
            else:
                per_model.setdefault(name, []).append((v, value.line))

    def slices(self, node: YNode, method: str, base: str | None, weights: dict[str, float],
               per_model: dict[str, list[tuple[Any, int]]]) -> list[Any]:  # fmt: skip
        if not isinstance(node, YList) or not node.items:
            raise self.err(node, "slices must be a non-empty list of {sources: [...]}")
        out = []
        for i, item in enumerate(node.items):
            what = f"slices[{i}]"
            m = self.mapping(item, what, ("sources", "base_model", "residual_weight", "parameters"))
            for key in ("residual_weight", "parameters"):
                if key in m:
                    raise self.err(m.key_lines[key], f"{what}.{key} is not supported; give the parameters at the top level")
            if "base_model" in m and self.model_path(m.entries["base_model"], f"{what}.base_model") != base:
                raise self.err(m.key_lines["base_model"], f"{what}.base_model differs from the top-level base_model; wsa "
                               "has one base per stage")  # fmt: skip
            snode = m.entries.get("sources")
            if not isinstance(snode, YList) or not snode.items:
                raise self.err(m, f"{what} needs 'sources' (a list of {{model: PATH, layer_range: [START, END]}})")
            sources = []
            for j, src in enumerate(snode.items):
                sw = f"{what}.sources[{j}]"
                sm = self.mapping(src, sw, ("model", "layer_range", "parameters"))
                for need in ("model", "layer_range"):
                    if need not in sm:
                        raise self.err(sm, f"{sw} needs '{need}'")
                path = self.model_path(sm.entries["model"], f"{sw}.model")
                self.model_parameters(sm.entries.get("parameters"), method, path, weights, per_model, sw)
                rng = sm.entries["layer_range"]
                if not isinstance(rng, YList) or len(rng.items) != 2 or not all(
                        isinstance(x, YScalar) and isinstance(x.value, int) and not isinstance(x.value, bool) for x in rng.items):
                    raise self.err(rng, f"{sw}.layer_range must be [START, END] (two integers)")
                sources.append((path, [x.value for x in rng.items], sm.line))  # type: ignore[union-attr]
            if method == "slerp" and base is not None:  # the base is the model at t = 0
                sources.sort(key=lambda s: s[0] != base)
            out.append(_At({"sources": [_At({"model": self.model_entry(p, weights), "layer_range": r}, ln) for p, r, ln in sources]},
                           m.line))  # fmt: skip
        return out

    def parameters(self, node: YNode | None, method: str, per_model: dict[str, list[tuple[Any, int]]], method_line: int,
                   n_slices: int) -> dict[str, Any]:  # fmt: skip
        """Stage parameters and overrides (from filters), with mergekit's defaults where wsa's differ."""
        settings: dict[str, list[tuple[str | None, Any, int]]] = {}
        if node is not None and not (isinstance(node, YScalar) and node.value is None):
            m = self.mapping(node, "parameters", tuple(node.entries) if isinstance(node, YMap) else ())
            for name, value in m.entries.items():
                if name == "weight":
                    raise self.err(m.key_lines[name], "parameters.weight: give each model its weight (models[].parameters.weight)")
                settings[name] = self.setting(value, f"parameters.{name}")
        for name, given in per_model.items():
            values = [v for v, _ in given]
            if any(v != values[0] for v in values):
                raise self.err(given[1][1] if len(given) > 1 else given[0][1],
                               f"{name}: the models have different values {values}; wsa has one {name} per stage "
                               "(use the same value, or one wsa stage per group of models)")  # fmt: skip
            if name in settings:
                raise self.err(given[0][1], f"{name} is given both per model and in parameters; give it once")
            settings[name] = [(None, values[0], given[0][1])]
        if method in _CONSENSUS and not _NORMALIZE_DEFAULT[method] and "normalize" not in settings:
            raise self.err(method_line, f"{method}: mergekit's default normalize: false sums the agreeing task vectors; wsa's "
                           f"{method} is their (disjoint) mean, mergekit's normalize: true: add 'normalize: true' to parameters")  # fmt: skip
        if method in _TASK_VECTOR and method != "task_arithmetic" and "density" not in settings:
            settings["density"] = [(None, 1.0, method_line)]  # mergekit's default; wsa's differs
        if n_slices > 1 and any(isinstance(v, list) for entries in settings.values() for _, v, _ in entries):
            raise self.err(method_line, "a parameter gradient with several slices: mergekit spreads it over each slice's "
                           "layers, wsa over the whole model; use one slice, or numbers per filter")  # fmt: skip
        translated: dict[str, list[tuple[str | None, str, Any, int]]] = {}
        for name, entries in settings.items():
            for filt, value, line in entries:
                r = self.rename(method, name, value, line, f"parameters.{name}")
                if r is not None:
                    translated.setdefault(r[0], []).append((filt, r[0], r[1], line))
        stage: dict[str, Any] = {}
        filtered: dict[str, list[tuple[str, Any, int]]] = {}
        for name, entries in translated.items():
            for filt, _, value, line in entries:
                if filt is None:
                    stage.setdefault(name, _At(value, line))
                    break  # mergekit stops at the first entry that matches; later ones are never used
                filtered.setdefault(name, []).append((filt, value, line))
        orders = {tuple(f for f, _, _ in entries) for entries in filtered.values()}
        if len(orders) > 1:
            names = ", ".join(filtered)
            raise self.err(method_line, f"parameters {names} have different filter lists; wsa translates filters shared by "
                           "every filtered parameter (write one override per key pattern in a wsa recipe instead)")  # fmt: skip
        overrides = []
        if orders:
            for i, filt in enumerate(next(iter(orders))):
                params = {name: _At(entries[i][1], entries[i][2]) for name, entries in filtered.items()}
                line = min(a.line for a in params.values())
                overrides.append(_At({"match": _pattern(filt), "parameters": params}, line))
        return {"stage": stage, "overrides": overrides}

    def output(self, e: dict[str, YNode], top: YMap, base: str | None) -> Any:
        out: dict[str, Any] = {"path": self.out}
        for key in ("out_dtype", "dtype"):
            if key in e:
                v = e[key]
                if not isinstance(v, YScalar) or v.value not in DTYPE_NAMES:
                    raise self.err(v, f"{key} must be one of {', '.join(DTYPE_NAMES)}")
                out["dtype"] = _At(v.value, v.line)
                break
        if "tokenizer_source" in e:
            t = e["tokenizer_source"]
            folder_out = not self.out.endswith(".safetensors")
            if isinstance(t, YScalar) and t.value == "base":
                if base is None:
                    raise self.err(t, "tokenizer_source: base needs base_model")
                if folder_out and Path(self.rel_to, base).is_dir():
                    out["copy_files_from"] = _At(base, t.line)
            elif isinstance(t, YScalar) and t.value == "union":
                raise self.err(t, "tokenizer_source: union (a merged vocabulary) is not supported; use base or a model path")
            elif isinstance(t, YScalar) and t.value is not None:
                path = self.model_path(t, "tokenizer_source")
                if folder_out:
                    out["copy_files_from"] = _At(path, t.line)
        return out


def _pattern(filt: str) -> str:
    """mergekit's filter (a part of the tensor name) as a wsa key pattern."""
    return f"*{filt}*" if not re.search(r"[*?\[\]]", filt) and not filt.startswith("re:") else "re:" + re.escape(filt)


def _emit(recipe: dict[str, Any], first_line: int) -> Translation:
    """The recipe as block YAML, one key per line, remembering each line's mergekit line."""
    out: list[str] = []
    lines: dict[int, int] = {}

    def scalar(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()

    def put(text: str, line: int) -> None:
        out.append(text)
        lines[len(out)] = line

    def value(v: Any, line: int) -> tuple[Any, int]:
        return (v.value, v.line) if isinstance(v, _At) else (v, line)

    def block(obj: dict[str, Any], indent: str, line: int, lead: str = "") -> None:
        for n, (k, raw) in enumerate(obj.items()):
            v, ln = value(raw, line)
            prefix = (lead if n == 0 else " " * len(lead)) + indent
            if isinstance(v, dict):
                put(f"{prefix}{k}:", ln)
                block(v, indent + " " * len(lead) + "  ", ln)
            elif isinstance(v, list) and v and any(isinstance(value(i, ln)[0], dict) for i in v):
                put(f"{prefix}{k}:", ln)
                for item in v:
                    iv, il = value(item, ln)
                    if isinstance(iv, dict):
                        block(iv, "", il, lead=indent + " " * len(lead) + "  - ")
                    else:
                        put(f"{indent}{' ' * len(lead)}  - {scalar(iv)}", il)
            else:
                put(f"{prefix}{k}: {scalar([value(i, ln)[0] for i in v] if isinstance(v, list) else v)}", ln)

    block(recipe, "", first_line)
    return Translation("\n".join(out) + "\n", lines)


def translate_mergekit(path: str | Path, *, out: str = "merged", align: bool = False, rel_to: str | Path | None = None) -> Translation:
    """The wsa recipe (YAML text) of the mergekit config at ``path``; paths relative to ``rel_to`` (default: the config's folder).

    ``out``: the recipe's ``output`` (mergekit takes it on its command line). Raises
    :class:`ConfigError` at the mergekit line of an unknown, misspelt or unsupported key.

    Example:
        >>> translate_mergekit("mergekit.yml", out="merged").text.splitlines()[0]  # doctest: +SKIP
        'method: linear'
    """
    p = Path(path)
    node, _ = load_yaml_file(p, what="mergekit config")
    recipe = _Translator(p, out, align, Path(rel_to) if rel_to is not None else p.parent).translate(node)
    header = f"# wsa recipe translated from the mergekit config {p.name} (wsa recipe from-mergekit)\n"
    t = _emit(recipe, node.line if isinstance(node, (YMap, YList, YScalar)) else 1)
    return Translation(header + t.text, {k + 1: v for k, v in t.lines.items()})


def _remap(obj: Any, t: Translation, seen: set[int]) -> None:
    """Every ``line``/``lines`` of a parsed recipe moved from the recipe text to the mergekit file."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, list):
        for item in obj:
            _remap(item, t, seen)
        return
    if not is_dataclass(obj) or isinstance(obj, type):
        return
    for f in fields(obj):
        v = getattr(obj, f.name)
        if f.name == "line" and isinstance(v, int):
            setattr(obj, f.name, t.mk_line(v))
        elif f.name == "lines" and isinstance(v, dict):
            setattr(obj, f.name, {k: t.mk_line(ln) for k, ln in v.items()})
        else:
            _remap(v, t, seen)


def load_mergekit(path: str | Path, *, out: str | Path, align: bool = False) -> Recipe:
    """A mergekit config as a loaded wsa :class:`~wsa_cli.recipe.schema.Recipe`, its lines those of the mergekit file.

    ``out`` is the merge's output, relative to the working directory (as ``mergekit-yaml``'s OUTPUT_PATH).
    """
    p = Path(path)
    rel = os.path.relpath(Path(out).resolve(), p.parent.resolve())
    if rel.split(os.sep, 1)[0] == os.pardir:  # outside the config's folder: the absolute path reads better than ../../x
        rel = str(Path(out).resolve())
    t = translate_mergekit(p, out=rel, align=align)
    try:
        recipe = parse_recipe(load_yaml_text(t.text, p), p, t.text)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=p, line=t.mk_line(exc.line)) from None
    _remap(recipe, t, set())
    return recipe



@dataclass
class MergekitRecipe(Result):
    """``wsa recipe from-mergekit``: the wsa recipe of a mergekit config (checked by the recipe loader), shown or written."""

    command = "recipe-from-mergekit"

    source: str
    text: str
    written: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "written": self.written, "recipe": self.text}

    def render(self) -> list[View]:
        return [] if self.written is not None else [Text(self.text)]


def from_mergekit(path: str | Path, *, output: str = "merged", write: str | Path | None = None, align: bool = False,
                  force: bool = False) -> MergekitRecipe:  # fmt: skip
    """Translate the mergekit config at ``path`` and load the result as a recipe (so it is known to load).

    ``output``: the merge's output as the recipe names it (relative to the recipe's folder);
    ``write``: also write the recipe there (its paths then relative to that file's folder), refusing
    an existing file without ``force``.
    """
    from wsa_cli.io.writer import atomic_write_text, check_outputs

    p = Path(path)
    target = Path(write) if write is not None else None
    rel_to = target.parent if target is not None else p.parent
    t = translate_mergekit(p, out=output, align=align, rel_to=rel_to)
    check_at = target if target is not None else p
    try:
        parse_recipe(load_yaml_text(t.text, check_at), check_at, t.text)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=p, line=t.mk_line(exc.line)) from None
    if target is None:
        return MergekitRecipe(str(p), t.text)
    check_outputs([target], [p], force=force, output=target)
    atomic_write_text(target, t.text)
    return MergekitRecipe(str(p), t.text, str(target), notes=[f"wrote {target} (run it with wsa merge {target})"])
