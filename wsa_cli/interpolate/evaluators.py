"""Evaluators: what turns a state dict into metrics along the path (contract C4).

An evaluator is any callable ``(state_dict: dict[str, Tensor], device: torch.device) ->
dict[str, float]`` returning ``"loss"`` and/or ``"accuracy"`` (and any other metrics, which are
shown as extra columns). ``--eval`` names one of:

* a built-in task (``digits-mlp``, ``digits-cnn``...; contract C1): the task's test-set
  cross-entropy and accuracy;
* a plug-in ``package.module:function`` (imported like any module; the current directory is on
  the import path) or ``path/to/file.py:function``.

A plug-in that cannot be imported, is not callable, raises, or returns something that is not a
mapping of numbers is a :class:`~wsa_cli.errors.PluginError` (exit 8) naming the plug-in.
A plug-in may accept a keyword ``recalibrate_bn``; ``--recalibrate-bn`` then passes ``True``.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from wsa_cli.errors import PluginError, UsageError, WsaError
from wsa_cli.plugins import import_callable

EvaluatorFn = Callable[..., Mapping[str, Any]]


@dataclass
class Evaluator:
    """A named evaluator, ready to call on a state dict.

    Example:
        >>> ev = Evaluator("zero", lambda sd, device: {"loss": 0.0})
        >>> ev({}, torch.device("cpu"))
        {'loss': 0.0}
    """

    name: str
    fn: EvaluatorFn
    #: Pass ``recalibrate_bn=True`` to ``fn`` (only when it accepts the keyword).
    recalibrate_bn: bool = False
    #: "task" for built-ins, "plugin" for user callables.
    kind: str = "plugin"

    def __call__(self, state_dict: Mapping[str, torch.Tensor], device: torch.device, *, where: str = "") -> dict[str, float]:
        """Run the evaluator; every failure becomes a PluginError naming it (and ``where``)."""
        at = f" at {where}" if where else ""
        kwargs = {"recalibrate_bn": True} if self.recalibrate_bn and self.kind == "plugin" else {}
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout is data: a plug-in's prints go to stderr
                raw = self.fn(state_dict, device, **kwargs)
        except WsaError as exc:
            if self.kind == "task":
                raise  # a built-in's own error (e.g. wrong architecture) says what is wrong
            raise PluginError(f"evaluator {self.name!r} failed{at}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - user code may raise anything
            first = (str(exc).strip().splitlines() or [""])[0]
            raise PluginError(f"evaluator {self.name!r} raised {type(exc).__name__}{at}: {first}") from exc
        return _check_metrics(self.name, raw, at)


def _check_metrics(name: str, raw: Any, at: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise PluginError(f"evaluator {name!r} returned {type(raw).__name__}{at}; expected a dict of metrics such as {{'loss': 0.3, 'accuracy': 0.9}}")
    out: dict[str, float] = {}
    for key, value in raw.items():
        try:
            number = float(value.item() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError, RuntimeError):
            raise PluginError(f"evaluator {name!r} returned a non-number for {str(key)!r}{at}: {value!r}") from None
        out[str(key)] = number
    if not out:
        raise PluginError(f"evaluator {name!r} returned no metrics{at}; expected keys 'loss' and/or 'accuracy'")
    if "loss" not in out and "accuracy" not in out:
        raise PluginError(f"evaluator {name!r} returned {sorted(out)}{at}; it must include 'loss' and/or 'accuracy'")
    return out


def load_plugin(spec: str) -> EvaluatorFn:
    """Import ``package.module:function`` or ``path/to/file.py:function`` and return the callable.

    The current working directory is put on ``sys.path`` (once) so a module next to the user's
    data imports without installing it.

    Example:
        >>> load_plugin("math:dist")  # doctest: +ELLIPSIS
        <built-in function dist>
    """
    return import_callable(spec, what="evaluator", usage=f"--eval {spec!r}: expected a task name or package.module:function")


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """True when ``fn`` takes keyword ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def resolve_evaluator(spec: str, *, recalibrate_bn: bool = False, split: str = "test") -> Evaluator:
    """Turn an ``--eval`` value into an :class:`Evaluator`.

    A value with ``:`` is a plug-in; anything else is a built-in task name (contract C1).

    Example:
        >>> resolve_evaluator("digits-mlp").kind
        'task'
    """
    text = (spec or "").strip()
    if not text:
        raise UsageError("--eval is empty; give a task name (e.g. digits-mlp) or package.module:function")
    if ":" in text:
        fn = load_plugin(text)
        if recalibrate_bn and not accepts_keyword(fn, "recalibrate_bn"):
            raise UsageError(
                f"--recalibrate-bn: evaluator {text!r} does not accept a 'recalibrate_bn' keyword; "
                "add one to re-estimate BatchNorm statistics, or drop the option"
            )
        return Evaluator(text, fn, recalibrate_bn=recalibrate_bn, kind="plugin")
    from wsa_cli.tasks import evaluate, get_task

    get_task(text)  # UsageError listing the task names when unknown

    def _task(state_dict: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, float]:
        return evaluate(text, state_dict, device, split=split, recalibrate_bn=recalibrate_bn)

    return Evaluator(text, _task, recalibrate_bn=recalibrate_bn, kind="task")
