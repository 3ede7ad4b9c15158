"""The one parser for a target scope written as text (``--target``, ``--wsa-target``).

A target says which scope layers are pulled or mapped onto. Each command accepts some of these
kinds (``accept``):

* ``fused`` -- the fused scope of the models at hand (``fused``);
* ``model`` -- one of the models' own scopes, by index (``0``, ``1``, ``-1``);
* ``fixed`` -- one scope for every layer, ``MEAN,STD`` (``0,0.05``);
* ``file`` -- a scope file written by ``wsa scope fuse`` (``scopes.json``), validated now;
* ``init`` -- the scopes of a built-in task's initialisation (``init``, training only);
* ``checkpoint`` -- the layer scopes of a checkpoint (a path that is not ``.json``).

Example:
    >>> parse_target("0,0.05")
    Scope(mean=0.0, std=0.05)
    >>> parse_target("fused", accept=("fused", "fixed"))
    'fused'
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path

from wsa_cli.errors import InputNotFoundError, InvalidValueError
from wsa_cli.fusion.scopefile import load_scope_file
from wsa_cli.scope.gaussian import Scope

TARGET_KINDS = ("fused", "model", "fixed", "file", "init", "checkpoint")

#: A parsed target: ``"fused"``, ``"init"``, a model index, a fixed scope, or a path (scope file or checkpoint).
ParsedTarget = str | int | Scope | Path


def parse_target(text: str, *, accept: Collection[str] = ("fixed", "file"), models: int = 2) -> ParsedTarget:
    """Parse a target written as text; ``accept`` lists the kinds this caller takes (see the module doc).

    A scope file is loaded once here, so a broken one fails before any tensor is read (and is
    returned as its path, so reports can name it). ``models``: how many models a model index
    may point at. Malformed ``MEAN,STD`` is an ``InvalidValueError`` (the command line names the flag, a recipe its
    line); a broken scope file is a configuration error (exit 6).

    Example:
        >>> parse_target("1", accept=("model",))
        1
    """
    unknown = set(accept) - set(TARGET_KINDS)
    if unknown:
        raise ValueError(f"unknown target kinds {sorted(unknown)}")
    raw = text.strip()
    if "fused" in accept and raw == "fused":
        return "fused"
    if "init" in accept and raw.lower() == "init":
        return "init"
    if "model" in accept and raw.lstrip("-").isdigit():
        index = int(raw)
        if not -models <= index < models:
            allowed = "0 (A) or 1 (B)" if models == 2 else f"in 0..{models - 1}"
            raise InvalidValueError(f"model index must be {allowed}", option="target", value=text)
        return index
    p = Path(raw)
    if p.exists() and not p.is_dir() and ("checkpoint" not in accept or p.suffix.lower() == ".json"):
        if "file" not in accept:
            raise InvalidValueError(f"expected {_expected(accept)}", option="target", value=text)
        load_scope_file(p)  # validate now
        return p
    if p.exists() and "checkpoint" in accept:
        return p
    parts = [x.strip() for x in raw.split(",")]
    if "fixed" in accept and len(parts) == 2:
        try:
            mean, std = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            if not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
                raise InvalidValueError("need a finite mean and a std > 0", option="target", value=text)
            return Scope(mean, std)
    if "," in raw and "fixed" in accept:  # meant as numbers, not a file name
        raise InvalidValueError("expected MEAN,STD (e.g. 0,0.05) or a scope file", option="target", value=text)
    if "file" in accept or "checkpoint" in accept:
        raise InputNotFoundError(f"target file not found (expected {_expected(accept)})", path=p)
    raise InvalidValueError(f"expected {_expected(accept)}", option="target", value=text)


def _expected(accept: Collection[str]) -> str:
    words = {"fused": "'fused'", "model": "a model index", "fixed": "MEAN,STD", "file": "a scope file",
             "init": "'init'", "checkpoint": "a checkpoint"}  # fmt: skip
    names = [words[k] for k in TARGET_KINDS if k in accept]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
