"""``wsa spec guess``: a spec from tensor names and shapes alone, for plain chains only.

A checkpoint says nothing about how layers are wired, so guessing is only safe for a *plain
chain*: Linear/Conv layers run in storage order, each optionally followed by a BatchNorm, each
layer reading exactly what the previous one wrote (a flatten is allowed between the last conv and
the first Linear). Anything else is refused with the reason: names that suggest residual
connections, attention or embeddings; tensors that are neither a layer weight, its bias nor a
BatchNorm parameter/statistic; shapes that do not chain; a norm layer without running statistics
(LayerNorm/GroupNorm: where it sits is unknowable). Scaling rules: a layer followed by BatchNorm
gets a ``bn`` rule; the activation between layers is unknown, so the others get ``none``.

Even an accepted guess assumes no hidden skip connections; confirm it with
``wsa spec check SPEC CKPT --model ...`` or use ``wsa spec infer``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from wsa_cli.errors import ConfigError
from wsa_cli.permute.spec import AxisEntry, AxisGroup, PermutationSpec, ScaleRule
from wsa_cli.scope.kinds import BN_LEAVES, BN_RUNNING_STATS

_SUSPECT = re.compile(
    r"(downsample|shortcut|skip|residual|attn|attention|embed|wte|wpe|lm_head|\bq_proj|k_proj|v_proj|rnn|lstm|gru|"
    r"layer\d+\.\d+|blocks?\.\d+|\bh\.\d+)",
    re.IGNORECASE,
)
_BN_LEAVES = set(BN_LEAVES)
UNKNOWN_ACT = "guessed spec: the activation after this layer is unknown (use wsa spec infer or a template)"


def _natural(name: str) -> tuple[object, ...]:
    """Sort key comparing digit runs as numbers: ``layers.2`` before ``layers.10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _refuse(why: str, key: str | None = None) -> ConfigError:
    return ConfigError(f"cannot guess a spec: {why}; write one by hand, use 'wsa spec template' or 'wsa spec infer'", key=key)


def guess_spec(shapes: Mapping[str, Sequence[int]]) -> PermutationSpec:
    """Guess the spec of a plain Linear/Conv(+BN) chain, or raise ConfigError saying why not.

    Example:
        >>> s = {"fc1.weight": (8, 4), "fc1.bias": (8,), "fc2.weight": (3, 8), "fc2.bias": (3,)}
        >>> guess_spec(s).axes["fc2.weight"]
        (None, AxisGroup(group='P_fc1', inner=1))
    """
    prefixes: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        if _SUSPECT.search(key):
            raise _refuse("the name suggests a residual, attention or embedding structure, which names and shapes cannot reveal", key)
        if "." not in key:
            raise _refuse("a tensor outside any module (no 'module.' prefix)", key)
        prefix, leaf = key.rsplit(".", 1)
        prefixes.setdefault(prefix, {})[leaf] = tuple(shape)
    order = list(prefixes)
    if list(shapes) == sorted(shapes):
        # Keys in plain string order (safetensors lists them so) have lost the module order; digit
        # runs compared as numbers are the better guess (layers.2 before layers.10). Pickled state
        # dicts keep the module order and are used as stored.
        order.sort(key=_natural)
    layers: list[tuple[str, str, tuple[int, ...]]] = []  # (kind, prefix, weight shape); kind: linear/conv/bn
    for prefix in order:
        leaves = prefixes[prefix]
        if "running_mean" in leaves or "running_var" in leaves:
            if not set(leaves) <= _BN_LEAVES:
                raise _refuse(f"'{prefix}' mixes BatchNorm statistics with other tensors", f"{prefix}.{sorted(set(leaves) - _BN_LEAVES)[0]}")
            n = leaves.get("running_mean", leaves.get("running_var"))
            layers.append(("bn", prefix, n))  # type: ignore[arg-type]
            continue
        extra = set(leaves) - {"weight", "bias"}
        if extra:
            raise _refuse("not a layer weight, bias or BatchNorm statistic", f"{prefix}.{sorted(extra)[0]}")
        w = leaves.get("weight")
        if w is None:
            raise _refuse("a bias without a weight", f"{prefix}.bias")
        if len(w) == 1:
            raise _refuse("a 1-D weight without running statistics (LayerNorm/GroupNorm?): where it sits cannot be told", f"{prefix}.weight")
        if "bias" in leaves and leaves["bias"] != (w[0],):
            raise _refuse(f"bias shape {leaves['bias']} does not match the weight's {w[0]} outputs", f"{prefix}.bias")
        layers.append(("linear" if len(w) == 2 else "conv", prefix, w))
    if sum(kind != "bn" for kind, _, _ in layers) < 2:
        raise _refuse("fewer than two Linear/Conv layers: nothing to permute")

    axes: dict[str, tuple[AxisEntry, ...]] = {}
    scaling: dict[str, ScaleRule] = {}
    prev: tuple[str, str, int] | None = None  # (kind, prefix, out channels) of the last layer
    weights = [p for kind, p, _ in layers if kind != "bn"]
    last = weights[-1]
    for i, (kind, prefix, shape) in enumerate(layers):
        if kind == "bn":
            if prev is None or i == 0 or layers[i - 1][0] == "bn":
                raise _refuse("a BatchNorm that does not directly follow a Linear/Conv layer in key order (files that list "
                              "keys alphabetically put e.g. 'bn1' before 'conv1', which names alone cannot undo)",
                              f"{prefix}.running_mean")  # fmt: skip
            if shape[0] != prev[2]:
                raise _refuse(f"BatchNorm has {shape[0]} channels but {prev[1]} writes {prev[2]}", f"{prefix}.running_mean")
            if prev[1] == last:
                raise _refuse("a BatchNorm after the output layer", f"{prefix}.running_mean")
            g = AxisGroup(f"P_{prev[1]}")
            for leaf in ("weight", "bias", *BN_RUNNING_STATS):
                if f"{prefix}.{leaf}" in shapes:
                    axes[f"{prefix}.{leaf}"] = (g,)
            scaling[f"{prev[1]}.weight"] = ScaleRule(f"{prev[1]}.weight", with_=tuple(k for k in [f"{prev[1]}.bias"] if k in shapes), bn=prefix)
            continue
        inp: AxisEntry = None
        if prev is not None:
            fan_in = shape[1]
            if prev[0] == kind or kind == "conv":
                if fan_in != prev[2]:
                    raise _refuse(f"reads {fan_in} inputs but the previous layer {prev[1]} writes {prev[2]}: not a plain chain", f"{prefix}.weight")
                inp = AxisGroup(f"P_{prev[1]}")
            else:  # conv -> linear through a flatten of (C, H, W)
                if fan_in % prev[2]:
                    raise _refuse(f"reads {fan_in} inputs, not a multiple of the {prev[2]} channels of {prev[1]}", f"{prefix}.weight")
                inp = AxisGroup(f"P_{prev[1]}", fan_in // prev[2])
        elif kind == "linear" and any(k == "conv" for k, _, _ in layers):
            raise _refuse("a Linear layer before the convolutions", f"{prefix}.weight")
        out: AxisEntry = None if prefix == last else AxisGroup(f"P_{prefix}")
        axes[f"{prefix}.weight"] = (out, inp, *([None] * (len(shape) - 2)))
        if f"{prefix}.bias" in shapes:
            axes[f"{prefix}.bias"] = (out,)
        scaling[f"{prefix}.weight"] = ScaleRule(
            f"{prefix}.weight", none="output layer: nothing downstream absorbs a scale" if prefix == last else UNKNOWN_ACT
        )
        prev = (kind, prefix, shape[0])
    return PermutationSpec(axes, scaling=scaling).resolve(shapes)
