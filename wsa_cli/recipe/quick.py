"""A recipe built from a command line: ``wsa merge A B -o OUT --method ties --base BASE``.

The options become the YAML a user would have written (so every check, default and error of a
recipe file applies, and ``--save-recipe`` can keep it); paths are written relative to the
folder the recipe lives in (the current folder while it is only in memory).

Example:
    >>> spec = QuickMerge(models=["a.safetensors", "b.safetensors"], output="m.safetensors", method="slerp", params=["t=0.3"])
    >>> print(spec.to_yaml(Path(".")), end="")  # doctest: +NORMALIZE_WHITESPACE
    # recipe built from: wsa merge a.safetensors b.safetensors -o m.safetensors --method slerp --param t=0.3
    models:
      - "a.safetensors"
      - "b.safetensors"
    method: "slerp"
    parameters:
      t: 0.3
    output:
      path: "m.safetensors"
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wsa_cli.errors import InvalidValueError

#: How a recipe built in memory is named in messages (it has no file; ``--dry-run`` shows it).
COMMAND_LINE_RECIPE = "command-line-recipe.yaml"


@dataclass
class QuickMerge:
    """The options of a merge given on the command line instead of in a recipe file."""

    models: Sequence[str]
    output: str
    method: str = "linear"
    base: str | None = None
    params: Sequence[str] = ()  # NAME=VALUE, the value read as YAML (0.5, true, text)
    weights: Sequence[float] | None = None
    align: bool = True
    dtype: str | None = None
    seed: int | None = None
    extra_args: list[str] = field(default_factory=list)

    def parameters(self) -> dict[str, Any]:
        """``NAME=VALUE`` pairs as a mapping (values typed as YAML reads them)."""
        out: dict[str, Any] = {}
        for item in self.params:
            name, sep, raw = item.partition("=")
            if not sep or not name.strip():
                raise InvalidValueError("expected NAME=VALUE, e.g. density=0.5", option="param", value=item)
            if name.strip() in out:
                raise InvalidValueError(f"parameter {name.strip()!r} is given twice", option="param", value=item)
            try:
                out[name.strip()] = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                out[name.strip()] = raw
        return out

    def command(self) -> str:
        """The command line this recipe stands for (a comment at its top)."""
        args = ["wsa", "merge", *self.models, "-o", self.output]
        if self.method != "linear":
            args += ["--method", self.method]
        if self.base:
            args += ["--base", self.base]
        for p in self.params:
            args += ["--param", p]
        if self.weights is not None:
            args += ["--weights", ",".join(f"{w:g}" for w in self.weights)]
        if not self.align:
            args.append("--no-align")
        if self.dtype:
            args += ["--dtype", self.dtype]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        return " ".join(shlex.quote(a) for a in args)

    def to_yaml(self, folder: Path) -> str:
        """The recipe as YAML, with relative paths made relative to ``folder`` (where the recipe lives).

        Paths are kept as given while the recipe lives in the current folder; absolute paths stay absolute.
        """
        if self.weights is not None and len(self.weights) != len(self.models):
            raise InvalidValueError(f"{len(self.weights)} weights for {len(self.models)} models", option="weights")
        here = folder.resolve() == Path.cwd().resolve()

        def path(p: str) -> str:
            text = p if here or Path(p).is_absolute() else os.path.relpath(Path(p).resolve(), folder.resolve())
            return json.dumps(text)  # a JSON string is a YAML string, quoted only as much as needed

        lines = [f"# recipe built from: {self.command()}", "models:"]
        for i, m in enumerate(self.models):
            if self.weights is None:
                lines.append(f"  - {path(m)}")
            else:
                lines += [f"  - path: {path(m)}", f"    weight: {float(self.weights[i])!r}"]
        if self.base:
            lines.append(f"base: {path(self.base)}")
        if self.method != "linear":
            lines.append(f"method: {json.dumps(self.method)}")
        params = self.parameters()
        if params:
            lines.append("parameters:")
            lines += [f"  {name}: {json.dumps(value)}" for name, value in params.items()]
        if self.seed is not None:
            lines.append(f"seed: {int(self.seed)}")
        if not self.align:
            lines.append("scope: {align: false}")
        lines += ["output:", f"  path: {path(self.output)}"]
        if self.dtype:
            lines.append(f"  dtype: {json.dumps(self.dtype)}")
        return "\n".join(lines) + "\n"


def quick_recipe(spec: QuickMerge) -> Any:
    """The :class:`~wsa_cli.recipe.schema.Recipe` for ``spec``, checked like a recipe file (in memory)."""
    from wsa_cli.recipe.schema import parse_recipe
    from wsa_cli.yamlnodes import load_yaml_text

    path = Path(COMMAND_LINE_RECIPE)
    text = spec.to_yaml(Path("."))
    return parse_recipe(load_yaml_text(text, path), path, text)
