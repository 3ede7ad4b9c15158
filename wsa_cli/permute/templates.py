"""Built-in spec templates: MLP chains, VGG-style conv stacks (with or without BatchNorm), ResNets.

Every template is a function of a checkpoint's ``key -> shape`` (so biases, widths and the
flatten size come from the checkpoint) and returns a spec in the same format as a YAML file.
The generic templates assume the usual conventions and say so:

* ``mlp``: every 2-D ``*.weight`` in storage order is one Linear layer of a chain, with a
  positively homogeneous activation (ReLU, LeakyReLU) between layers; the last layer's outputs
  keep their order.
* ``vgg``: 4-D ``*.weight`` tensors are convolutions in storage order, each optionally followed by
  a BatchNorm (``*.running_mean`` right after it); ReLU and max/avg pooling between; then a
  Linear chain whose first layer reads the flattened last conv (``C*H*W``).
* ``resnet``: torchvision BasicBlock/Bottleneck naming (``conv1``/``bn1`` stem,
  ``layerS.B.convK``/``bnK``, ``layerS.B.downsample.0/1``, ``fc``). Every layer writing into a
  residual stream (the stem, each block's last BN, each downsample BN) shares that stream's group.
* ``digits-mlp`` / ``digits-cnn``: the built-in tasks of ``wsa train`` (:mod:`wsa_cli.tasks`).

Example:
    >>> spec = builtin_spec("digits-mlp", {"fc1.weight": (32, 64), "fc1.bias": (32,), "fc2.weight": (32, 32),
    ...     "fc2.bias": (32,), "fc3.weight": (10, 32), "fc3.bias": (10,)})
    >>> spec.axes["fc2.weight"]
    (AxisGroup(group='P_fc2', inner=1), AxisGroup(group='P_fc1', inner=1))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from wsa_cli.errors import ConfigError
from wsa_cli.permute.spec import AxisEntry, AxisGroup, PermutationSpec, ScaleRule
from wsa_cli.scope.kinds import BN_RUNNING_STATS

Shapes = Mapping[str, Sequence[int]]
OUTPUT_NOTE = "output layer: nothing downstream absorbs a scale"


def _g(name: str | None, inner: int = 1) -> AxisEntry:
    return None if name is None else AxisGroup(name, inner)


def _bn_keys(bn: str, shapes: Shapes) -> list[str]:
    return [f"{bn}.{leaf}" for leaf in ("weight", "bias", *BN_RUNNING_STATS) if f"{bn}.{leaf}" in shapes]


def _require(shapes: Shapes, keys: Sequence[str], ndim: int, what: str) -> None:
    """The template's layers exist with the expected number of axes (ConfigError naming the key)."""
    for k in keys:
        if k not in shapes:
            raise ConfigError(f"the {what} template does not fit this checkpoint: it has no such tensor", key=k)
        if len(shapes[k]) != ndim:
            raise ConfigError(f"the {what} template does not fit this checkpoint: expected a {ndim}-D weight, got shape {tuple(shapes[k])}", key=k)


def _finish(axes: dict[str, tuple[AxisEntry, ...]], scaling: dict[str, ScaleRule], shapes: Shapes, what: str) -> PermutationSpec:
    spec = PermutationSpec(axes, scaling=scaling)
    try:
        return spec.resolve(shapes)
    except ConfigError as exc:
        raise ConfigError(f"the {what} template does not fit this checkpoint: {exc.message}", key=exc.key) from None


def mlp_spec(shapes: Shapes, layers: Sequence[str] | None = None) -> PermutationSpec:
    """A Linear chain ``layers[0] -> act -> layers[1] -> ... -> layers[-1]``.

    ``layers`` defaults to every 2-D ``*.weight`` prefix in storage order.

    Example:
        >>> mlp_spec({"a.weight": (4, 3), "b.weight": (2, 4)}).axes["b.weight"]
        (None, AxisGroup(group='P_a', inner=1))
    """
    if layers is None:
        layers = [k[: -len(".weight")] for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2]
    if len(layers) < 2:
        raise ConfigError("the mlp template needs at least two Linear layers (2-D *.weight tensors)")
    _require(shapes, [f"{name}.weight" for name in layers], 2, "mlp")
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    scaling: dict[str, ScaleRule] = {}
    prev: str | None = None
    for i, name in enumerate(layers):
        out = None if i == len(layers) - 1 else f"P_{name}"
        axes[f"{name}.weight"] = (_g(out), _g(prev))
        if f"{name}.bias" in shapes:
            axes[f"{name}.bias"] = (_g(out),)
        if out is None:
            scaling[f"{name}.weight"] = ScaleRule(f"{name}.weight", none=OUTPUT_NOTE)
        else:
            bias = (f"{name}.bias",) if f"{name}.bias" in shapes else ()
            scaling[f"{name}.weight"] = ScaleRule(f"{name}.weight", with_=bias, inverse=(f"{layers[i + 1]}.weight",))
        prev = out
    return _finish(axes, scaling, shapes, "mlp")


def vgg_spec(shapes: Shapes, convs: Sequence[tuple[str, str | None]] | None = None, fcs: Sequence[str] | None = None) -> PermutationSpec:
    """Conv stack (each conv optionally followed by a BatchNorm) then a Linear chain.

    ``convs`` is ``[(conv_prefix, bn_prefix_or_None), ...]``; ``fcs`` the Linear prefixes. Both
    default to what the checkpoint shows (4-D weights; a BN is the next module with
    ``running_mean``). The flatten size ``H*W`` is read from the first Linear's input width.

    Example:
        >>> s = {"c.weight": (4, 1, 3, 3), "n.weight": (4,), "n.bias": (4,), "n.running_mean": (4,),
        ...      "n.running_var": (4,), "f.weight": (10, 64), "f.bias": (10,)}
        >>> vgg_spec(s).axes["f.weight"]
        (None, AxisGroup(group='P_c', inner=16))
    """
    if convs is None:
        prefixes: list[str] = []
        for k in shapes:
            p = k.rsplit(".", 1)[0]
            if p not in prefixes:
                prefixes.append(p)
        convs = []
        for p in prefixes:
            if len(shapes.get(f"{p}.weight", ())) in (3, 4):  # Conv1d or Conv2d
                convs.append((p, None))
            elif f"{p}.running_mean" in shapes and convs and convs[-1][1] is None:
                convs[-1] = (convs[-1][0], p)
    if fcs is None:
        fcs = [k[: -len(".weight")] for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2]
    if not convs or not fcs:
        raise ConfigError("the vgg template needs conv layers (4-D *.weight) followed by Linear layers (2-D *.weight)")
    conv_ndim = 3 if len(shapes.get(f"{convs[0][0]}.weight", ())) == 3 else 4  # Conv1d stacks too (mnist1d-cnn)
    _require(shapes, [f"{c}.weight" for c, _ in convs], conv_ndim, "vgg")
    _require(shapes, [f"{f}.weight" for f in fcs], 2, "vgg")
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    scaling: dict[str, ScaleRule] = {}
    prev: str | None = None
    for i, (conv, bn) in enumerate(convs):
        g = f"P_{conv}"
        axes[f"{conv}.weight"] = (_g(g), _g(prev), *(None,) * (conv_ndim - 2))
        bias = (f"{conv}.bias",) if f"{conv}.bias" in shapes else ()
        for b in bias:
            axes[b] = (_g(g),)
        if bn is not None:
            for k in _bn_keys(bn, shapes):
                axes[k] = (_g(g),)
            scaling[f"{conv}.weight"] = ScaleRule(f"{conv}.weight", with_=bias, bn=bn)
        else:
            nxt = f"{convs[i + 1][0]}.weight" if i + 1 < len(convs) else f"{fcs[0]}.weight"
            scaling[f"{conv}.weight"] = ScaleRule(f"{conv}.weight", with_=bias, inverse=(nxt,))
        prev = g
    last_c = shapes[f"{convs[-1][0]}.weight"][0]
    fc_in = shapes.get(f"{fcs[0]}.weight", (0, 0))[1]
    if last_c == 0 or fc_in % last_c:
        raise ConfigError(
            f"the vgg template expects {fcs[0]}.weight to read the flattened {convs[-1][0]} output "
            f"({last_c} channels x H*W), but it has {fc_in} inputs",
            key=f"{fcs[0]}.weight",
        )
    inner = fc_in // last_c
    for i, name in enumerate(fcs):
        out = None if i == len(fcs) - 1 else f"P_{name}"
        axes[f"{name}.weight"] = (_g(out), _g(prev, inner if i == 0 else 1))
        bias = (f"{name}.bias",) if f"{name}.bias" in shapes else ()
        for b in bias:
            axes[b] = (_g(out),)
        if out is None:
            scaling[f"{name}.weight"] = ScaleRule(f"{name}.weight", none=OUTPUT_NOTE)
        else:
            scaling[f"{name}.weight"] = ScaleRule(f"{name}.weight", with_=bias, inverse=(f"{fcs[i + 1]}.weight",))
        prev = out
    return _finish(axes, scaling, shapes, "vgg")


_BLOCK = re.compile(r"^(layer\d+)\.(\d+)\.")


def resnet_spec(shapes: Shapes) -> PermutationSpec:
    """torchvision-style ResNet (BasicBlock or Bottleneck) with BatchNorm after every conv.

    Residual streams: the stem (``conv1``/``bn1``) writes stream 0; a block without downsample
    adds into its input stream, so its last BN shares that group; a block with ``downsample``
    starts a new stream written by both its last BN and the downsample BN. ``fc`` reads the last
    stream (after global average pooling, so no flatten factor).

    Example:
        >>> from wsa_cli.permute.examples import TinyResNet
        >>> spec = resnet_spec({k: tuple(v.shape) for k, v in TinyResNet().state_dict().items()})
        >>> spec.axes["layer1.0.conv2.weight"][0]
        AxisGroup(group='S0', inner=1)
    """
    if "conv1.weight" not in shapes or "fc.weight" not in shapes:
        raise ConfigError("the resnet template expects torchvision names: conv1, bn1, layerS.B.*, fc")
    blocks: list[str] = []
    for k in shapes:
        m = _BLOCK.match(k)
        if m and f"{m.group(1)}.{m.group(2)}" not in blocks:
            blocks.append(f"{m.group(1)}.{m.group(2)}")
    if not blocks:
        raise ConfigError("the resnet template found no residual blocks (layerS.B.*)")
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    scaling: dict[str, ScaleRule] = {}

    def conv(name: str, out: str, inp: str | None, bn: str) -> None:
        axes[f"{name}.weight"] = (_g(out), _g(inp), None, None)
        bias = (f"{name}.bias",) if f"{name}.bias" in shapes else ()
        for b in bias:
            axes[b] = (_g(out),)
        for k in _bn_keys(bn, shapes):
            axes[k] = (_g(out),)
        scaling[f"{name}.weight"] = ScaleRule(f"{name}.weight", with_=bias, bn=bn)

    stream = "S0"
    conv("conv1", stream, None, "bn1")
    n_streams = 1
    for block in blocks:
        convs = sorted(
            {int(m.group(1)) for k in shapes if (m := re.match(rf"^{re.escape(block)}\.conv(\d+)\.weight$", k))}
        )
        if not convs:
            raise ConfigError(f"block {block} has no convK.weight tensors", key=f"{block}.conv1.weight")
        out = stream
        downsample = f"{block}.downsample.0.weight" in shapes
        if downsample:
            out = f"S{n_streams}"
            n_streams += 1
        prev = stream
        for i, c in enumerate(convs):
            g = out if i == len(convs) - 1 else f"P_{block}.conv{c}"
            conv(f"{block}.conv{c}", g, prev, f"{block}.bn{c}")
            prev = g
        if downsample:  # the shortcut writes into the block's new stream too
            conv(f"{block}.downsample.0", out, stream, f"{block}.downsample.1")
        stream = out
    axes["fc.weight"] = (None, _g(stream))
    if "fc.bias" in shapes:
        axes["fc.bias"] = (None,)
    scaling["fc.weight"] = ScaleRule("fc.weight", none=OUTPUT_NOTE)
    return _finish(axes, scaling, shapes, "resnet")


def digits_mlp_spec(shapes: Shapes) -> PermutationSpec:
    """``digits-mlp`` (the built-in task's model): fc1 -> ReLU -> fc2 -> ReLU -> fc3."""
    return mlp_spec(shapes, ["fc1", "fc2", "fc3"])


def digits_cnn_spec(shapes: Shapes) -> PermutationSpec:
    """``digits-cnn`` (the built-in task's model): conv1-bn1-ReLU-conv2-bn2-ReLU-maxpool-fc (fc reads 2c x 4 x 4)."""
    return vgg_spec(shapes, [("conv1", "bn1"), ("conv2", "bn2")], ["fc"])


#: name -> (one-line description, builder from a checkpoint's key -> shape)
BUILTIN_TEMPLATES: dict[str, tuple[str, Callable[[Shapes], PermutationSpec]]] = {
    "digits-mlp": ("built-in task digits-mlp: fc1-fc2-fc3 with ReLU", digits_mlp_spec),
    "digits-cnn": ("built-in task digits-cnn: conv1/bn1-conv2/bn2-maxpool-fc", digits_cnn_spec),
    "mnist1d-mlp": ("built-in task mnist1d-mlp: fc1-fc2-fc3 with ReLU", digits_mlp_spec),
    "mnist1d-cnn": ("built-in task mnist1d-cnn: Conv1d conv1/bn1-conv2/bn2-maxpool-fc", digits_cnn_spec),
    "mlp": ("Linear chain with ReLU-like activations (2-D *.weight in storage order)", mlp_spec),
    "vgg": ("conv stack (optional BatchNorm after each conv), ReLU, pooling, then a Linear chain", vgg_spec),
    "resnet": ("torchvision-style ResNet with BatchNorm; residual streams share a group", resnet_spec),
}


def builtin_spec(name: str, shapes: Shapes) -> PermutationSpec:
    """Build the named template for a checkpoint (ConfigError when unknown or not fitting)."""
    try:
        _, fn = BUILTIN_TEMPLATES[name]
    except KeyError:
        raise ConfigError(f"unknown template {name!r}; choose from {', '.join(BUILTIN_TEMPLATES)}") from None
    return fn(shapes)
