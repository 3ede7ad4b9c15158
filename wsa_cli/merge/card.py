"""What a merged folder carries besides its weights: a generated model card and an updated config.

A folder output is the template model's folder with new weights (see
:func:`wsa_cli.io.open.side_tree` for what is copied). Two of its files are not copied verbatim:

* ``README.md``: the parent's model card describes the parent, so the merge writes its own
  (:func:`model_card`): what was merged (method, parameters), the inputs with their provenance
  fingerprints, the wsa version, a short scope-alignment summary, and a YAML front matter with
  the parents' ``base_model`` and ``license`` fields and ``tags: [merge, wsa]``;
* ``config.json``: when ``output.dtype`` is set, its ``torch_dtype`` (and ``dtype``, newer
  transformers' name, when present) say the output dtype (:func:`config_with_dtype`); a
  ``config.json`` that is not a transformers config is copied unchanged.

Nothing here depends on the clock or the host: the same merge gives the same card.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from wsa_cli import __version__
from wsa_cli.io import dtype_name


def config_with_dtype(path: Path, dtype: torch.dtype) -> str | None:
    """``config.json``'s text with its dtype fields set to ``dtype``; None: copy the file unchanged.

    ``torch_dtype`` and ``dtype`` are set where present; a transformers config (``model_type`` or
    ``architectures``) without either gets ``torch_dtype``. Any other JSON (or a file that is not a
    JSON object) is left as it is.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "config.json"
        >>> _ = p.write_text('{"model_type": "bert", "torch_dtype": "float32"}')
        >>> json.loads(config_with_dtype(p, torch.bfloat16))["torch_dtype"]
        'bfloat16'
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    fields = [k for k in ("torch_dtype", "dtype") if k in data]
    if not fields and not ("model_type" in data or "architectures" in data):
        return None  # not a transformers config (a task's own config.json): copied as it is
    name = dtype_name(dtype)
    for key in fields or ["torch_dtype"]:
        data[key] = name
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (``---`` ... ``---`` at its top); {} when there is none.

    Example:
        >>> front_matter("---\\nlicense: mit\\n---\\n# Model\\n")
        {'license': 'mit'}
    """
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            try:
                data = yaml.safe_load("\n".join(lines[1:i]))
            except yaml.YAMLError:
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def parent_card(path: Path) -> Path | None:
    """The model card of an input: ``README.md`` in its folder (a folder or an index input); None for a lone file."""
    folder = path if path.is_dir() else path.parent if path.name.endswith(".index.json") else None
    card = folder / "README.md" if folder is not None else None
    return card if card is not None and card.is_file() else None


def _listed(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int, float))]
    return []


def card_fields(cards: Sequence[Path]) -> dict[str, Any]:
    """The front-matter fields a merge inherits from its parents' cards: ``base_model``, ``license``.

    ``base_model``: every parent's, in order, without repeats. ``license``: the parents' one
    license, or ``other`` (with ``license_name`` listing them) when they differ.
    """
    bases: list[str] = []
    licenses: list[str] = []
    for card in cards:
        try:
            meta = front_matter(card.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        bases += [b for b in _listed(meta.get("base_model")) if b not in bases]
        licenses += [x for x in _listed(meta.get("license")) if x not in licenses]
    out: dict[str, Any] = {}
    if bases:
        out["base_model"] = bases
    if len(licenses) == 1:
        out["license"] = licenses[0]
    elif licenses:
        out["license"] = "other"
        out["license_name"] = " AND ".join(licenses)
    return out


def alignment_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Layers aligned, and the largest std ratio before (between the inputs) and after (merged vs target).

    Example:
        >>> alignment_summary([{"key": "w", "aligned": True, "before": [{"std": 1.0}, {"std": 3.0}],
        ...                      "target": {"std": 2.0}, "after": {"std": 2.0}}])["before"]
        {'ratio': 3.0, 'key': 'w'}
    """
    layers = [r for r in records if r.get("before")]
    aligned = [r for r in records if r.get("aligned")]
    out: dict[str, Any] = {"layers": len(layers), "aligned": len(aligned), "before": None, "after": None}
    for r in layers:
        stds = [s["std"] for s in r["before"]]
        if min(stds) > 0:
            ratio = max(stds) / min(stds)
            if out["before"] is None or ratio > out["before"]["ratio"]:
                out["before"] = {"ratio": ratio, "key": r["key"]}
    for r in aligned:
        if "after" in r and "target" in r and r["after"]["std"] > 0 and r["target"]["std"] > 0:
            ratio = r["after"]["std"] / r["target"]["std"]
            ratio = max(ratio, 1 / ratio)
            if out["after"] is None or ratio > out["after"]["ratio"]:
                out["after"] = {"ratio": ratio, "key": r["key"]}
    return out


def _yaml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON scalar is a YAML scalar


def _fingerprint_text(fp: dict[str, Any]) -> str:
    if "files" not in fp:
        return f"an earlier stage's output ({fp.get('bytes', 0)} bytes)"
    parts = []
    for f in fp["files"]:
        how = f"sha256 `{f['sha256']}`" if "sha256" in f else f"mtime_ns {f.get('mtime_ns')}"
        parts.append(f"`{f['name']}` ({f['bytes']} bytes, {how})")
    return "; ".join(parts)


def model_card(
    *,
    name: str,
    method: str,
    parameters: dict[str, Any],
    seed: int,
    scope: dict[str, Any],
    inputs: Sequence[dict[str, Any]],
    provenance: str,
    records: Sequence[dict[str, Any]],
    parents: dict[str, Any],
    recipe_name: str,
    report_name: str | None,
) -> str:
    """The ``README.md`` of a merged folder (Markdown with a YAML front matter).

    ``inputs``: one dict per input, ``{"input", "weight" or "role", "files": [...]}`` as in the
    merge report; ``parents``: :func:`card_fields` of the parents' cards.
    """
    fm = ["---"]
    if parents.get("base_model"):
        fm.append("base_model:")
        fm += [f"- {_yaml_value(b)}" for b in parents["base_model"]]
    for key in ("license", "license_name"):
        if key in parents:
            fm.append(f"{key}: {_yaml_value(parents[key])}")
    fm += ["tags:", "- merge", "- wsa", "---", ""]
    out = [*fm, f"# {name}", "",
           f"A merge of {len(inputs)} model(s) made with wsa {__version__} (Weight Scope Alignment).", "",
           "## Merge", "",
           f"- method: `{method}`",
           f"- parameters: `{json.dumps(parameters, sort_keys=True)}`",
           f"- seed: {seed}",
           f"- scope alignment: align `{scope.get('align')}`, fusion `{scope.get('fusion')}`, "
           f"target `{json.dumps(scope.get('target'))}`, rescale `{scope.get('rescale')}`",
           "", "## Inputs", "",
           f"Fingerprints from the merge's provenance (`{provenance}`"
           + ("" if provenance == "sha256" else "; set `output.provenance: sha256` for content hashes") + ").", "",
           "| input | weight | files |", "|---|---|---|"]  # fmt: skip
    for fp in inputs:
        weight = "base" if fp.get("role") == "base" else f"{fp.get('weight', '')}"
        out.append(f"| `{fp.get('input')}` | {weight} | {_fingerprint_text(fp)} |")
    s = alignment_summary(records)
    out += ["", "## Scope alignment", "", f"- layers aligned: {s['aligned']} of {s['layers']} measured layers"]
    if s["before"] is not None:
        out.append(f"- largest std ratio between the inputs, before alignment: {s['before']['ratio']:.4g} (`{s['before']['key']}`)")
    if s["after"] is not None:
        out.append(f"- largest std ratio of a merged layer to its target scope, after: {s['after']['ratio']:.4g} (`{s['after']['key']}`)")
    out += ["", "## Files", "",
            f"- `{recipe_name}`: the recipe that made this merge (its relative paths are relative to the folder the "
            "original recipe was in)"]  # fmt: skip
    if report_name:
        out.append(f"- `{report_name}`: the merge report (per-layer scopes before and after, inputs, what was copied)")
    out.append("- everything else but the weights is copied from the template model")
    return "\n".join(out) + "\n"
