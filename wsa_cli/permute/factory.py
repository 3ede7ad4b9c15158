"""Load the user's model factory (``package.module:factory``, ``file.py:factory``, or a task name).

``wsa spec infer|check`` and ``wsa align --model`` need the architecture, not just the weights.
A factory is any callable taking no arguments and returning an ``nn.Module``; a built-in task
name (``digits-mlp``) builds that task's model at the checkpoint's width.

Example:
    >>> src = load_model_source("digits-mlp")
    >>> src.input_shape
    (64,)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wsa_cli.errors import InvalidValueError, MismatchError, PluginError, WsaError
from wsa_cli.plugins import import_callable


@dataclass
class ModelSource:
    """Builds the architecture; ``build(state)`` returns it loaded with ``state`` in eval mode."""

    name: str
    factory: Callable[[Mapping[str, torch.Tensor] | None], nn.Module]
    input_shape: tuple[int, ...] | None = None
    output_group: str | None = None  # the spec group the output's last axis is in (a headless transformer's stream), if any

    def fresh(self, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout is data: a plug-in's prints go to stderr
                model = self.factory(state)
        except WsaError:
            raise  # already says where and what, with its own exit code (a built-in task's MismatchError: 5)
        except Exception as exc:  # noqa: BLE001 - user code may raise anything
            first = (str(exc).strip().splitlines() or [""])[0]
            raise PluginError(f"model factory {self.name!r} raised {type(exc).__name__}: {first}") from exc
        if not isinstance(model, nn.Module):
            raise PluginError(f"model factory {self.name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def example(self, seed: int = 0, batch: int = 8) -> torch.Tensor:
        """A seeded batch of inputs to compare outputs on (standard normal of ``input_shape``)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, *(self.input_shape or ()), generator=gen)

    def build(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        model = self.fresh(state)
        own = model.state_dict()
        for k in own:
            if k not in state:
                raise MismatchError(f"the checkpoint lacks a tensor the model {self.name!r} has", key=k)
        for k in state:
            if k not in own:
                raise MismatchError(f"the model {self.name!r} has no such tensor", key=k)
            if tuple(state[k].shape) != tuple(own[k].shape):
                raise MismatchError(f"has shape {tuple(state[k].shape)}, the model {self.name!r} expects {tuple(own[k].shape)}", key=k)
        model.load_state_dict({k: state[k].detach().to(own[k].dtype) for k in own})
        return model.eval()


def load_model_source(spec: str, input_shape: Sequence[int] | None = None, *, checkpoint: str | Path | None = None) -> ModelSource:
    """Resolve ``--model``: a built-in task name, ``package.module:factory`` (no arguments), or ``hf[:CONFIG]``.

    ``hf`` builds the Hugging Face architecture from the ``config.json`` next to ``checkpoint``
    (``hf:PATH`` names the config file or its folder); it needs the ``hf`` extra.
    """
    from wsa_cli.tasks import TASKS

    if spec == "hf" or spec.startswith("hf:"):
        from wsa_cli.permute.hf_model import hf_model_source

        where = spec[3:] or (Path(checkpoint).parent if checkpoint is not None else None)
        if where is None:
            raise InvalidValueError("--model hf needs a checkpoint next to its config.json, or hf:CONFIG", option="model", value=spec)
        return hf_model_source(where, seq_len=input_shape[0] if input_shape else 16)

    if spec in TASKS:
        task = TASKS[spec]

        def build_task(state: Mapping[str, torch.Tensor] | None) -> nn.Module:
            width = None if state is None else task.width_of(state)
            return task.build_model(width, seed=0)

        return ModelSource(spec, build_task, tuple(input_shape) if input_shape else tuple(task.input_shape))
    fn = import_callable(spec, what="model factory", usage="expected a built-in task name or package.module:factory", option="model")
    return ModelSource(spec, lambda _state: fn(), tuple(input_shape) if input_shape else None)


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"3,32,32"`` or ``"3x32x32"`` -> ``(3, 32, 32)`` (one sample, without the batch axis).

    Example:
        >>> parse_input_shape("3x8x8")
        (3, 8, 8)
    """
    if text is None:
        return None
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InvalidValueError("expected sizes like 3,32,32 (without the batch axis)", option="input_shape", value=text) from None
    if not shape or any(d < 1 for d in shape):
        raise InvalidValueError("sizes must be positive", option="input_shape", value=text)
    return shape
