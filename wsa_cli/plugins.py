"""Import a user's callable named ``package.module:function`` or ``path/to/file.py:function``.

One mechanism for every plug-in wsa takes (``--eval`` evaluators, ``--model`` factories). The
current working directory is put on ``sys.path`` (once) so a module next to the user's data
imports without installing it; whatever the plug-in prints while importing goes to stderr, so it
never mixes into ``--format json`` on stdout. Failures are :class:`~wsa_cli.errors.PluginError`
(exit 8) naming the plug-in.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from wsa_cli.errors import InvalidValueError, PluginError


def import_callable(spec: str, *, what: str, usage: str, option: str | None = None) -> Any:
    """Return the callable ``spec`` names; ``what`` names it in errors ("evaluator").

    ``usage`` is the message for a ``spec`` without ``module:attribute`` shape (an
    :class:`~wsa_cli.errors.InvalidValueError` for the caller's ``option``).

    Example:
        >>> import_callable("math:dist", what="evaluator", usage="expected module:function")
        <built-in function dist>
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise InvalidValueError(usage, option=option, value=spec)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            if module_name.endswith(".py"):
                module = _import_file(Path(module_name), what)
            else:
                if os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())
                module = importlib.import_module(module_name)
    except PluginError:
        raise
    except ModuleNotFoundError as exc:
        raise PluginError(f"cannot import {what} {spec!r}: no module named {exc.name!r}") from exc
    except Exception as exc:  # noqa: BLE001 - importing user code may raise anything
        first = (str(exc).strip().splitlines() or [""])[0]
        raise PluginError(f"cannot import {what} {spec!r}: {type(exc).__name__}: {first}") from exc
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise PluginError(f"cannot import {what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise PluginError(f"{what} {spec!r} is not callable (it is a {type(fn).__name__})")
    return fn


def _import_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise PluginError(f"cannot import {what}: no such file {str(path)!r}")
    name = f"wsa_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {what}: {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
