"""Permutation spec files: parsing, validation against checkpoints, error messages, templates, guess."""

from __future__ import annotations

import textwrap

import pytest
import torch

from wsa_cli.errors import ConfigError, ExitCode, InputNotFoundError
from wsa_cli.permute.guess import guess_spec
from wsa_cli.permute.spec import AxisGroup, PermutationSpec, shapes_of
from wsa_cli.permute.specfile import load_spec, parse_spec_text, render_spec

MLP_SHAPES = {"fc1.weight": (8, 4), "fc1.bias": (8,), "fc2.weight": (3, 8), "fc2.bias": (3,)}
GOOD = textwrap.dedent(
    """\
    format: wsa-permutation-spec
    version: 1
    groups: {P: 8}
    axes:
      fc1.weight: [P, null]
      fc1.bias: [P]
      fc2.weight: [null, P]
      fc2.bias: [null]
    unpermuted: []
    scaling:
      fc1.weight: {with: [fc1.bias], inverse: [fc2.weight]}
    """
)


def write(tmp_path, text: str):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


def test_good_spec_loads_and_resolves(tmp_path):
    spec = load_spec(write(tmp_path, GOOD), shapes=MLP_SHAPES)
    assert spec.sizes == {"P": 8}
    assert spec.group_axes()["P"] == [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("fc2.weight", 1, 1)]
    assert spec.scaling["fc1.weight"].inverse == ("fc2.weight",)


def test_yaml_round_trip(tmp_path):
    spec = load_spec(write(tmp_path, GOOD), shapes=MLP_SHAPES)
    again = parse_spec_text(render_spec(spec, header="x")).resolve(MLP_SHAPES)
    assert again.axes == spec.axes and again.sizes == spec.sizes and again.scaling == spec.scaling


def test_missing_checkpoint_key_is_named(tmp_path):
    shapes = {**MLP_SHAPES, "extra.weight": (2, 2)}
    with pytest.raises(ConfigError) as exc:
        load_spec(write(tmp_path, GOOD), shapes=shapes, checkpoint="m.safetensors")
    assert exc.value.key == "extra.weight" and "not covered" in str(exc.value)
    assert exc.value.exit_code == ExitCode.BAD_CONFIG


def test_inconsistent_group_sizes_name_key_and_line(tmp_path):
    shapes = {**MLP_SHAPES, "fc2.weight": (3, 6)}
    with pytest.raises(ConfigError) as exc:
        load_spec(write(tmp_path, GOOD.replace("groups: {P: 8}", "groups: {}")), shapes=shapes)
    msg = str(exc.value)
    assert "inconsistent sizes" in msg and "'fc2.weight'" in msg and exc.value.line == 7


def test_declared_size_conflict(tmp_path):
    with pytest.raises(ConfigError, match="declared with size 8 but has size 4"):
        load_spec(write(tmp_path, GOOD), shapes={**MLP_SHAPES, "fc1.weight": (4, 4), "fc1.bias": (4,)})


def test_wrong_number_of_axes_and_unknown_key(tmp_path):
    with pytest.raises(ConfigError, match="2 axis entries but the tensor has 1"):
        load_spec(write(tmp_path, GOOD.replace("fc1.bias: [P]", "fc1.bias: [P, null]")), shapes=MLP_SHAPES)
    with pytest.raises(ConfigError, match="does not have") as exc:
        load_spec(write(tmp_path, GOOD), shapes={k: v for k, v in MLP_SHAPES.items() if k != "fc2.bias"})
    assert exc.value.key == "fc2.bias" and exc.value.line == 8


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("format: other\n", "not a permutation spec", 1),
        (GOOD.replace("version: 1", "version: 9"), "not supported", 2),
        (GOOD.replace("fc1.bias: [P]", "fc1.bias: [P*2x]"), "expected a group name", 6),
        (GOOD + "extra: 1\n", "unknown section 'extra'", 12),
        (GOOD.replace("axes:", "axes: [\n"), "YAML syntax error", 7),
        (GOOD.replace("  fc1.bias: [P]\n", "  fc1.bias: [P]\n  fc1.bias: [P]\n"), "key 'fc1.bias' appears twice", 7),
        (GOOD.replace("{with: [fc1.bias]", "{wit: [fc1.bias]"), "unknown field 'wit'", 11),
    ],
)
def test_malformed_specs_point_at_the_line(tmp_path, text, message, line):
    with pytest.raises(ConfigError, match=message) as exc:
        load_spec(write(tmp_path, text))
    if line is not None:
        assert exc.value.line == line


def test_missing_spec_file_and_unknown_template(tmp_path):
    with pytest.raises(InputNotFoundError, match="built-in specs"):
        load_spec(tmp_path / "nope.yaml")


def test_batchnorm_statistics_follow_their_channels_and_counter_is_copied():
    spec = PermutationSpec({"c.weight": (AxisGroup("P"), None, None, None), "bn.weight": (AxisGroup("P"),),
                            "bn.bias": (AxisGroup("P"),)})
    shapes = {"c.weight": (4, 1, 3, 3), "bn.weight": (4,), "bn.bias": (4,), "bn.running_mean": (4,),
              "bn.running_var": (4,), "bn.num_batches_tracked": ()}
    resolved = spec.resolve(shapes)
    assert resolved.axes["bn.running_mean"] == (AxisGroup("P"),) and resolved.axes["bn.running_var"] == (AxisGroup("P"),)
    assert "bn.num_batches_tracked" not in resolved.axes


def test_templates_fit_their_models(permute_case, spec_for):
    _, factory, _, builder = permute_case
    model = factory()
    spec = spec_for(model, builder)
    assert set(spec.axes) | {k for k in model.state_dict() if k.endswith("num_batches_tracked")} == set(model.state_dict())
    assert all(n > 1 for n in spec.sizes.values())


def test_resnet_template_shares_stream_groups(permute_cases, spec_for):
    _, factory, _, builder = permute_cases("resnet")
    spec = spec_for(factory(), builder)
    stream0 = spec.axes["conv1.weight"][0]
    assert spec.axes["layer1.0.conv2.weight"][0] == stream0 == spec.axes["layer1.1.conv2.weight"][0]
    assert spec.axes["layer2.0.conv2.weight"][0] == spec.axes["layer2.0.downsample.0.weight"][0] != stream0
    assert spec.axes["layer2.0.downsample.0.weight"][1] == stream0
    assert spec.axes["fc.weight"] == (None, spec.axes["layer2.0.conv2.weight"][0])


def test_digits_cnn_flatten_factor(permute_cases, spec_for):
    _, factory, _, builder = permute_cases("digits-cnn")
    spec = spec_for(factory(), builder)
    assert spec.axes["fc.weight"] == (None, AxisGroup("P_conv2", 16))


@pytest.mark.parametrize("permute_case", ["mlp", "digits-mlp", "digits-cnn", "vgg"], indirect=True)
def test_guess_matches_the_template_on_plain_chains(permute_case, spec_for, canonical):
    _, factory, _, builder = permute_case
    model = factory()
    guessed = guess_spec(shapes_of(model.state_dict()))
    assert canonical(guessed) == canonical(spec_for(model, builder))


@pytest.mark.parametrize(
    ("shapes", "why"),
    [
        ({"layer1.0.conv1.weight": (4, 4, 3, 3), "fc.weight": (2, 4)}, "residual"),
        ({"a.weight": (8, 4), "b.weight": (3, 7)}, "not a plain chain"),
        ({"a.weight": (8, 4), "ln.weight": (8,), "b.weight": (3, 8)}, "LayerNorm"),
        ({"a.weight": (8, 4), "a.scale": (8,), "b.weight": (3, 8)}, "not a layer weight"),
        ({"a.weight": (8, 4)}, "fewer than two"),
    ],
)
def test_guess_refuses_and_says_why(shapes, why):
    with pytest.raises(ConfigError, match="cannot guess a spec") as exc:
        guess_spec(shapes)
    assert why in str(exc.value)


def test_template_that_does_not_fit_is_a_config_error():
    from wsa_cli.permute.templates import builtin_spec

    with pytest.raises(ConfigError, match="resnet template"):
        builtin_spec("resnet", {"fc1.weight": (8, 4)})
    with pytest.raises(ConfigError, match="unknown template"):
        builtin_spec("nope", {})
    with pytest.raises(ConfigError, match="digits-mlp|mlp template"):
        builtin_spec("digits-mlp", {"conv.weight": torch.Size([2, 1, 3, 3])})
    with pytest.raises(ConfigError, match="vgg template does not fit") as exc:
        builtin_spec("digits-cnn", MLP_SHAPES)
    assert exc.value.key == "conv1.weight"


def test_guess_orders_numbered_layers_numerically_when_keys_are_sorted() -> None:
    """safetensors lists keys alphabetically (layers.10 before layers.2); the guess restores 0..11."""
    from wsa_cli.permute.guess import guess_spec

    shapes = {f"layers.{i}.weight": (6, 6) for i in range(12)}
    shapes["layers.0.weight"], shapes["layers.11.weight"] = (6, 3), (2, 6)
    spec = guess_spec(dict(sorted(shapes.items())))
    for i in range(1, 11):
        out, inp = spec.axes[f"layers.{i}.weight"]
        assert (out.group, inp.group) == (f"P_layers.{i}", f"P_layers.{i - 1}")
    assert spec.axes["layers.11.weight"][0] is None  # the output layer keeps its order
