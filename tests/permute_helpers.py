"""Shared helpers for the permutation tests: tiny models, their specs, output comparison."""

from __future__ import annotations

import torch

from wsa_cli.permute.examples import mlp, small_vgg, tiny_resnet
from wsa_cli.permute.spec import shapes_of
from wsa_cli.permute.templates import digits_cnn_spec, digits_mlp_spec, resnet_spec, vgg_spec, mlp_spec
from wsa_cli.tasks import get_task

# (name, factory, input shape, template builder)
CASES = [
    ("mlp", lambda: mlp(0), (16,), mlp_spec),
    ("digits-mlp", lambda: get_task("digits-mlp").build_model(16, seed=0).eval(), (64,), digits_mlp_spec),
    ("digits-cnn", lambda: _bn_random(get_task("digits-cnn").build_model(4, seed=0)), (1, 8, 8), digits_cnn_spec),
    ("vgg", lambda: small_vgg(0), (3, 8, 8), vgg_spec),
    ("resnet", lambda: tiny_resnet(0), (3, 8, 8), resnet_spec),
]


def _bn_random(model: torch.nn.Module) -> torch.nn.Module:
    from wsa_cli.permute.examples import _randomize_bn

    return _randomize_bn(model, 0)


def outputs(model: torch.nn.Module, state: dict, x: torch.Tensor) -> torch.Tensor:
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(x).double()


def spec_for(model: torch.nn.Module, builder) -> object:  # noqa: ANN001
    return builder(shapes_of(model.state_dict()))


def canonical(spec) -> dict:  # noqa: ANN001
    """Axes with groups renamed by first appearance (to compare specs up to names)."""
    names: dict[str, int] = {}
    return {
        k: tuple(None if e is None else (names.setdefault(e.group, len(names)), e.inner) for e in v)
        for k, v in spec.axes.items()
    }
