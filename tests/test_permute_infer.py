"""torch.fx inference of specs: agrees with the templates, names what it cannot handle."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from wsa_cli.errors import ConfigError, PluginError
from wsa_cli.permute.check import functional_check
from wsa_cli.permute.factory import ModelSource
from wsa_cli.permute.infer import infer_spec


def test_infer_agrees_with_the_template(permute_case, spec_for, canonical):
    _, factory, input_shape, builder = permute_case
    model = factory()
    inferred = infer_spec(model, input_shape)
    template = spec_for(model, builder)
    assert canonical(inferred) == canonical(template)
    assert {k: (r.none is None, r.bn, r.inverse) for k, r in inferred.scaling.items()} == {
        k: (r.none is None, r.bn, r.inverse) for k, r in template.scaling.items()
    }


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(4, 8)
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.a(x), self.b(x)], dim=1))


class TanhSkip(nn.Module):
    """Residual add of an unpermuted input pins the group; tanh blocks ReLU-style scaling."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 6)
        self.fc3 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x)) + x  # added to the raw input: fc1's units cannot move
        return self.fc3(torch.tanh(self.fc2(h)))


def test_unhandled_operation_is_named():
    with pytest.raises(ConfigError, match=r"cannot handle node 'cat' \(function cat\)"):
        infer_spec(Concat(), (4,))


def test_pinned_groups_and_non_homogeneous_activations():
    spec = infer_spec(TanhSkip(), (4,))
    assert spec.axes["fc1.weight"] == (None, None)  # pinned by the add with the input
    assert spec.axes["fc2.weight"][0] is not None
    assert "tanh" in (spec.scaling["fc2.weight"].none or "")
    assert "combined with another value" in (spec.scaling["fc1.weight"].none or "")


def test_untraceable_model_is_a_plugin_error():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(PluginError, match="torch.fx cannot trace"):
        infer_spec(Branchy(), (2,))


def test_functional_check_names_the_bad_group(permute_cases, spec_for):
    _, factory, input_shape, builder = permute_cases("mlp")
    model = factory()
    spec = spec_for(model, builder)
    from wsa_cli.permute.spec import AxisGroup, PermutationSpec

    bad = PermutationSpec(dict(spec.axes), sizes=dict(spec.sizes), scaling=dict(spec.scaling))
    # claim the output layer's units may move: they cannot
    bad.axes["fc3.weight"] = (AxisGroup("P_out"), spec.axes["fc3.weight"][1])
    bad.axes["fc3.bias"] = (AxisGroup("P_out"),)
    bad = bad.resolve({k: tuple(v.shape) for k, v in model.state_dict().items()})
    source = ModelSource("mlp", lambda _s: factory(), input_shape)
    with pytest.raises(ConfigError, match="permuting group 'P_out' changes the model's outputs"):
        functional_check(bad, model.state_dict(), source)
    ok = functional_check(spec, model.state_dict(), source)
    assert ok["ok"] and ok["permutation_max_abs_diff"] <= 1e-4 * ok["output_max_abs"]


class LayerNormNet(nn.Module):
    """fc1 -> LayerNorm -> GELU -> fc2 (+ residual of its input) -> fc3; shape queries in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.ln(self.fc1(x.view(x.size(0), -1))))
        h = h + torch.relu(self.fc2(h))
        return self.fc3(h)


def test_layernorm_residual_and_scale_rules_keep_the_function():
    from wsa_cli.scope.gaussian import Scope
    from wsa_cli.permute import apply_permutation, function_preserving_rescale, random_perms
    from wsa_cli.scope.stats import tensor_scope

    torch.manual_seed(0)
    model = LayerNormNet().eval()
    spec = infer_spec(model, (8,))
    stream = spec.axes["fc1.weight"][0]
    assert stream is not None and spec.axes["fc2.weight"][0] == stream == spec.axes["ln.weight"][0]  # residual: one group
    assert spec.scaling["fc1.weight"].norm == "ln"
    assert "combined with another value" in (spec.scaling["fc2.weight"].none or "")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 8)
    with torch.no_grad():
        y = model(x)
        model.load_state_dict(apply_permutation(spec, state, random_perms(spec, 2)))
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
        new, report = function_preserving_rescale(spec, state, {"fc1.weight": Scope(0.0, tensor_scope(state["fc1.weight"]).std * 4)})
        model.load_state_dict(new)
        torch.testing.assert_close(model(x), y, rtol=1e-4, atol=1e-4)
    assert "scale-invariant" in report["fc1.weight"]
