"""Several evaluators on one sweep: each merge scored by all of them, metrics named ``LABEL.METRIC``.

``--eval A --eval B`` (or ``eval: [A, B]`` in the ``sweep:`` block) gives fronts across tasks
(accuracy on task A against accuracy on task B). Each evaluator may be written ``LABEL=SPEC``;
the default label is the data file's stem for ``hf-*:FILE``, else the name before any ``:``.
With one evaluator the metrics keep their own names.

Example:
    >>> split_label("sts=hf-similarity:pairs.tsv"), default_label("hf-perplexity:data/wiki.txt")
    (('sts', 'hf-similarity:pairs.tsv'), 'wiki')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

_LABEL = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)=(.+)$")


def split_label(text: str) -> tuple[str | None, str]:
    """``LABEL=SPEC`` -> ``(LABEL, SPEC)``; a spec without a label -> ``(None, SPEC)``."""
    m = _LABEL.match(text.strip())
    return (m.group(1), m.group(2).strip()) if m else (None, text.strip())


def default_label(spec: str) -> str:
    """The file stem of ``hf-*:FILE``, else the part before ``:`` (a plug-in's module, a built-in's name)."""
    if spec.startswith("hf-") and ":" in spec:
        return Path(spec.split(":", 1)[1]).stem or spec.split(":", 1)[0]
    return spec.split(":", 1)[0].replace("/", "_")


def labels_for(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``(label, spec)`` for each evaluator; a label used twice gets ``-2``, ``-3``... appended."""
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for text in specs:
        label, spec = split_label(text)
        label = label or default_label(spec)
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label}-{seen[label]}", spec))
    return out


class MultiEvaluator:
    """Calls every evaluator on the same state dict; metrics are prefixed ``LABEL.`` when there are several."""

    def __init__(self, evaluators: Sequence[tuple[str, Callable[..., Mapping[str, float]]]]) -> None:
        self.evaluators = list(evaluators)

    def __call__(self, state_dict: Mapping[str, torch.Tensor], device: torch.device, *, where: str = "") -> dict[str, float]:
        if len(self.evaluators) == 1:
            return dict(self.evaluators[0][1](state_dict, device, where=where))
        out: dict[str, float] = {}
        for label, ev in self.evaluators:
            out.update({f"{label}.{k}": v for k, v in ev(state_dict, device, where=where).items()})
        return out


__all__ = ["MultiEvaluator", "default_label", "labels_for", "split_label"]
