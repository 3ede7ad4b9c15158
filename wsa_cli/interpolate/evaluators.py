"""Evaluators: what turns a state dict into metrics along the path.

An evaluator is any callable ``(state_dict: dict[str, Tensor], device: torch.device) ->
dict[str, float]`` returning ``"loss"`` and/or ``"accuracy"`` (and any other metrics, which are
shown as extra columns). ``--eval`` names one of:

* a named evaluator from :data:`EVALUATORS`: the built-in tasks (``digits-mlp``,
  ``digits-cnn``... of :mod:`wsa_cli.tasks`: the task's test-set cross-entropy and accuracy),
  and those an installed package adds through the entry-point group ``wsa.evaluators`` (each
  entry point names an evaluator callable; the entry point's name is the evaluator's name, and
  the callable is imported only when that evaluator is used);
* a plug-in ``package.module:function`` (imported like any module; the current directory is on
  the import path) or ``path/to/file.py:function``.

A plug-in that cannot be imported, is not callable, raises, or returns something that is not a
mapping of numbers is a :class:`~wsa_cli.errors.PluginError` (exit 8) naming the plug-in.
A plug-in may accept a keyword ``recalibrate_bn``; ``--recalibrate-bn`` then passes ``True``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from wsa_cli.errors import InvalidValueError, PluginError, WsaError
from wsa_cli.plugins import import_callable
from wsa_cli.registry import Registry

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
    return import_callable(spec, what="evaluator", usage="expected an evaluator name or package.module:function", option="evaluator")


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """True when ``fn`` takes keyword ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@dataclass(frozen=True)
class NamedEvaluator:
    """An evaluator that ``--eval NAME`` picks: a built-in task, or one an installed package adds.

    ``make(split=..., recalibrate_bn=...)`` builds the ready-to-call :class:`Evaluator`; a
    plug-in's module is imported only then, so listing the names imports nothing.

    Example:
        >>> EVALUATORS.get("digits-mlp").kind
        'task'
    """

    name: str
    description: str
    make: Callable[..., Evaluator]
    #: "task" for built-ins, "plugin" for entry points and registered plug-ins
    kind: str = "task"


def _task_evaluator(task: str, *, split: str = "test", recalibrate_bn: bool = False) -> Evaluator:
    from wsa_cli.tasks import evaluate

    def _task(state_dict: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, float]:
        return evaluate(task, state_dict, device, split=split, recalibrate_bn=recalibrate_bn)

    return Evaluator(task, _task, recalibrate_bn=recalibrate_bn, kind="task")


def _plugin_evaluator(name: str, fn: EvaluatorFn, recalibrate_bn: bool) -> Evaluator:
    if not callable(fn):
        raise PluginError(f"evaluator {name!r} is not callable (it is a {type(fn).__name__})")
    if recalibrate_bn and not accepts_keyword(fn, "recalibrate_bn"):
        raise InvalidValueError(
            f"evaluator {name!r} does not accept a 'recalibrate_bn' keyword; "
            "add one to re-estimate BatchNorm statistics, or drop the option",
            option="recalibrate_bn",
        )  # fmt: skip
    return Evaluator(name, fn, recalibrate_bn=recalibrate_bn, kind="plugin")


def _builtin_evaluators() -> Iterable[NamedEvaluator]:
    from wsa_cli.tasks import TASKS

    return [NamedEvaluator(name, spec.description, functools.partial(_task_evaluator, name)) for name, spec in TASKS.items()]


def _entry_point_evaluator(ep: Any, where: str) -> NamedEvaluator:
    """An evaluator entry point names a bare callable: the entry point's name is the evaluator's,
    and the callable is imported when the evaluator is first used, not when the names are listed."""
    return NamedEvaluator(ep.name, f"plug-in {ep.value}", functools.partial(_from_entry_point, ep, where), kind="plugin")


def _from_entry_point(ep: Any, where: str, *, split: str = "test", recalibrate_bn: bool = False) -> Evaluator:
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is data: an import's prints go to stderr
            fn = ep.load()
    except Exception as exc:  # noqa: BLE001 - importing user code may raise anything
        raise PluginError(f"cannot load {where}: {type(exc).__name__}: {exc}") from exc
    return _plugin_evaluator(ep.name, fn, recalibrate_bn)


#: Every named evaluator: the built-in tasks, then the ``wsa.evaluators`` entry points and
#: whatever :func:`register_evaluator` added.
EVALUATORS: Registry[NamedEvaluator] = Registry(
    "evaluator", _builtin_evaluators, entry_point_group="wsa.evaluators", from_entry_point=_entry_point_evaluator
)


def register_evaluator(name: str, fn: EvaluatorFn, description: str = "") -> NamedEvaluator:
    """Name a Python evaluator so that ``resolve_evaluator(name)`` finds it (a taken name is a ``ValueError``).

    Example:
        >>> _ = register_evaluator("zero-loss", lambda sd, device: {"loss": 0.0}, "always 0")
        >>> resolve_evaluator("zero-loss")({}, torch.device("cpu"))
        {'loss': 0.0}
        >>> EVALUATORS.unregister("zero-loss")
    """
    make = functools.partial(_named_plugin, name, fn)
    return EVALUATORS.register(NamedEvaluator(name, description, make, kind="plugin"))


def _named_plugin(name: str, fn: EvaluatorFn, *, split: str = "test", recalibrate_bn: bool = False) -> Evaluator:
    return _plugin_evaluator(name, fn, recalibrate_bn)


def resolve_evaluator(spec: str, *, recalibrate_bn: bool = False, split: str = "test", model_folder: Any = None,
                      limit: int | None = None) -> Evaluator:  # fmt: skip
    """Turn an ``--eval`` value into an :class:`Evaluator`.

    A value with ``:`` is a plug-in ``package.module:function``; anything else names an
    evaluator of :data:`EVALUATORS` (a built-in task of :mod:`wsa_cli.tasks`, or an installed plug-in).
    ``split`` picks a built-in task's data split; plug-ins load their own data. ``hf-perplexity:FILE``,
    ``hf-similarity:FILE`` and ``hf-classify:FILE`` are the Hugging Face evaluators of
    :mod:`wsa_cli.evaluation.hf` (the ``hf`` extra): ``model_folder`` is the folder with the
    model's config and tokenizer, ``limit`` the number of examples used.

    Example:
        >>> resolve_evaluator("digits-mlp").kind
        'task'
    """
    text = (spec or "").strip()
    if not text:
        raise InvalidValueError("is empty; give an evaluator name (e.g. digits-mlp) or package.module:function",
                                option="evaluator", value=spec)  # fmt: skip
    if text.startswith("hf-"):  # hf-perplexity:FILE ... (a plug-in's module name cannot hold '-')
        from wsa_cli.evaluation.hf import hf_evaluator

        return Evaluator(text, hf_evaluator(text, model_folder=model_folder, limit=limit), kind="task")
    if ":" in text:
        return _plugin_evaluator(text, load_plugin(text), recalibrate_bn)
    try:
        named = EVALUATORS.get(text)
    except InvalidValueError as exc:
        raise InvalidValueError(exc.message, option="evaluator") from None
    return named.make(split=split, recalibrate_bn=recalibrate_bn)
