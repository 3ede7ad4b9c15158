"""Function-preserving rescale: outputs unchanged, scopes moved where the network allows it."""

from __future__ import annotations

import math

import pytest
import torch

from wsa_cli.scope.gaussian import Scope, gaussian_kl
from wsa_cli.permute import function_preserving_rescale
from wsa_cli.permute.rescale import kl_optimal_scale
from wsa_cli.scope.stats import tensor_scope


def test_rescale_keeps_outputs(permute_case, spec_for, outputs):
    _, factory, input_shape, builder = permute_case
    model = factory()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spec = spec_for(model, builder)
    x = torch.randn(6, *input_shape, generator=torch.Generator().manual_seed(1))
    before = outputs(model, state, x)
    # targets far from the current scopes: factor 0.3..3 on the std
    targets = {}
    for i, (k, rule) in enumerate(spec.scaling.items()):
        s = tensor_scope(state[k])
        targets[k] = Scope(s.mean, s.std * (0.3 if i % 2 else 3.0))
    new, report = function_preserving_rescale(spec, state, targets)
    scaled = [k for k, r in spec.scaling.items() if r.none is None]
    assert scaled and all(report[k].startswith("scaled by c=") for k in scaled)
    assert all(not torch.equal(new[k], state[k]) for k in scaled)
    # BatchNorm's eps is the only inexact part (documented): relative 1e-3 covers c in [0.3, 3]
    torch.testing.assert_close(outputs(model, new, x), before, rtol=1e-3, atol=1e-3 * float(before.abs().max()))
    for k, r in spec.scaling.items():
        if r.none is not None:
            assert report[k].startswith("not possible:")


def test_scopes_land_on_target_std_on_a_relu_chain(permute_cases, spec_for):
    _, factory, _, builder = permute_cases("mlp")
    model = factory()
    state = model.state_dict()
    spec = spec_for(model, builder)
    targets = {"fc1.weight": Scope(0.0, 0.05), "fc2.weight": Scope(0.0, 0.2)}
    new, report = function_preserving_rescale(spec, state, targets)
    for k, t in targets.items():
        got = tensor_scope(new[k])
        # c minimises KL; the std ratio equals c, so KL to the target is no worse than before
        assert gaussian_kl(got.mean, got.std, t.mean, t.std) <= gaussian_kl(*_ms(tensor_scope(state[k])), t.mean, t.std) + 1e-12
        assert got.std == pytest.approx(t.std, rel=0.05)
    assert "fc2.weight x 1/c" in report["fc1.weight"]
    assert report["fc3.weight"].startswith("not possible: output layer")


def _ms(s: Scope) -> tuple[float, float]:
    return s.mean, s.std


@pytest.mark.parametrize(("mu", "s", "mt", "st"), [(0.0, 2.0, 0.0, 1.0), (0.3, 0.1, 0.1, 0.5), (-0.2, 1.0, 0.4, 0.3)])
def test_kl_optimal_scale_is_the_minimiser(mu, s, mt, st):
    c = kl_optimal_scale(Scope(mu, s), Scope(mt, st))
    f = lambda k: gaussian_kl(k * mu, k * s, mt, st)  # noqa: E731
    grid = [c * (1 + d) for d in (-0.05, -0.01, 0.01, 0.05)]
    assert all(f(c) <= f(g) + 1e-12 for g in grid)
    if mu == 0.0:
        assert c == pytest.approx(st / s)


def test_rules_without_target_and_layers_without_rules_are_reported(permute_cases, spec_for):
    _, factory, _, builder = permute_cases("vgg")
    model = factory()
    spec = spec_for(model, builder)
    state = model.state_dict()
    new, report = function_preserving_rescale(spec, state, {"conv1.weight": Scope(0.0, 0.1), "not.a.layer": Scope(0, 1)})
    assert report["conv2.weight"] == "not rescaled: no target scope for this layer"
    assert "BatchNorm makes the layer scale-invariant" in report["conv1.weight"]
    assert math.isclose(float(new["bn1.running_var"][0] / state["bn1.running_var"][0]),
                        float(new["conv1.weight"].std() / state["conv1.weight"].std()) ** 2, rel_tol=1e-4)
    assert new["bn1.weight"] is state["bn1.weight"]  # untouched tensors are passed through


def test_fp_rescale_inputs_moves_models_toward_fused_scopes_and_keeps_them(outputs):
    from wsa_cli.fusion.pipeline import ScopeOptions
    from wsa_cli.permute.recipe import fp_rescale_inputs
    from wsa_cli.tasks import get_task

    models = [get_task("digits-mlp").build_model(8, seed=s) for s in (1, 2)]
    for i, m in enumerate(models):  # very different scales, same function class
        m.fc1.weight.data *= 3.0 if i else 0.5
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]  # outputs() loads into m
    new, reports = fp_rescale_inputs(states, "digits-mlp", ScopeOptions(), "cpu")
    x = torch.rand(5, 64)
    for m, s, n in zip(models, states, new, strict=True):
        torch.testing.assert_close(outputs(m, dict(n), x), outputs(m, dict(s), x), rtol=1e-4, atol=1e-4)
    before = abs(tensor_scope(states[0]["fc1.weight"]).std - tensor_scope(states[1]["fc1.weight"]).std)
    after = abs(tensor_scope(new[0]["fc1.weight"]).std - tensor_scope(new[1]["fc1.weight"]).std)
    assert after < 0.05 * before
    assert reports[0]["fc3.weight"].startswith("not possible")
