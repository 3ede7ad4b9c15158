"""``wsa spec infer``: derive a permutation spec by tracing the user's model with torch.fx.

The model is traced symbolically and run once on zeros of ``(2, *input_shape)`` to learn every
intermediate shape. Each tensor value then carries a *tag*: which axis (if any) is indexed by a
permutation group. Groups are created by layers that produce features (Linear, Conv) and flow:

* through BatchNorm / LayerNorm (their parameters and running statistics join the group),
  elementwise activations, dropout and pooling unchanged;
* through ``flatten`` / ``view`` / ``reshape``: ``(B, C, H, W) -> (B, C*H*W)`` becomes ``"P*HW"``;
* into ``add`` / ``sub`` / ``mul`` of two tagged tensors: the groups are united (a residual
  stream: every layer writing into it shares its group); a tagged tensor combined with an
  untagged one of full size pins the group (it cannot be permuted);
* into the model's output: pinned (the output must keep its order);
* through ``transpose`` / ``permute`` (the axis moves);
* into attention: a reshape of ``(.., H*d)`` into ``(.., H, d)`` splits a projection's group into
  heads (:class:`HeadTag`); ``Q @ K^T`` unites Q's and K's groups (they share heads and head
  dimensions), ``softmax(scores) @ V`` or ``scaled_dot_product_attention`` records one attention,
  and merging the heads back flattens them into the output projection's input. Each attention's
  Q/K axes become ``H_n*QK_n`` and its V/O axes ``H_n*VO_n``, with an ``attention:`` rule.

Any other operation (``cat``, slicing a head's dimensions as rotary embeddings do, grouped-query
attention, ``get_attr``...) stops inference with a :class:`~wsa_cli.errors.ConfigError` naming
the node and the operation. The same pass derives
function-preserving scaling rules: a Linear/Conv followed only by BatchNorm gets a ``bn`` rule; one
whose output reaches other Linear/Conv layers only through positively homogeneous ops (ReLU,
LeakyReLU, pooling, dropout, reshape) gets ``with``/``inverse``; anything else gets ``none`` with
the reason.
"""

from __future__ import annotations

import contextlib
import io
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.fx import Node

from wsa_cli.errors import ConfigError, PluginError
from wsa_cli.permute.spec import AttentionRule, AxisEntry, AxisGroup, AxisLayout, PermutationSpec, ScaleRule
from wsa_cli.scope.kinds import BN_RUNNING_STATS

F = torch.nn.functional

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.Identity, nn.Softmax, nn.LogSoftmax, nn.PReLU,
)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity, *_POOL_MODULES)
_ELEMENTWISE_FUNCS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, torch.tanh, F.tanh,
    torch.sigmoid, F.sigmoid, F.softplus, F.hardswish, F.hardsigmoid, F.hardtanh, F.dropout, F.dropout1d,
    F.dropout2d, F.dropout3d, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.exp, torch.abs,
    F.relu_, torch.relu_,
}
_HOMOGENEOUS_FUNCS = {torch.relu, F.relu, F.leaky_relu, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.relu_, torch.relu_}
_POOL_FUNCS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}
_BINARY_FUNCS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                 operator.truediv, torch.add, torch.sub, torch.mul, torch.div}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "exp", "abs", "softmax", "log_softmax", "contiguous",
                        "clone", "float", "double", "to", "type_as", "detach"}
_HOMOGENEOUS_METHODS = {"relu", "relu_", "contiguous", "clone", "float", "double", "to", "detach"}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax}
_TRANSPOSE_FUNCS = {torch.transpose, torch.permute, torch.swapaxes}
_TRANSPOSE_METHODS = {"transpose", "permute", "swapaxes"}
_MATMUL_FUNCS = {operator.matmul, torch.matmul}


@dataclass(frozen=True)
class Tag:
    """The permuted axis of a value: ``axis`` is indexed by group ``gid`` times ``inner``."""

    axis: int
    gid: int
    inner: int = 1


@dataclass(frozen=True)
class HeadTag:
    """A value split into attention heads: ``axis`` indexes the heads of group ``gid`` and
    ``dim_axis`` each head's dimensions (``None`` for attention scores, which have no head
    dimensions left: ``(B, H, T, T)``)."""

    axis: int
    gid: int
    dim_axis: int | None


@dataclass
class _Attention:
    """One traced attention: Q and K share group ``qk`` (heads x QK dims), V is group ``v`` (heads x VO dims)."""

    qk: int
    v: int
    q_layer: str
    k_layer: str
    v_layer: str
    heads: int
    qk_dim: int
    v_dim: int


class _Groups:
    """Union-find over group ids with sizes, producers and a pinned flag."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pinned: list[bool] = []
        self.producers: list[list[str]] = []

    def new(self, producer: str) -> int:
        self.parent.append(len(self.parent))
        self.pinned.append(False)
        self.producers.append([producer])
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo
            self.pinned[lo] = self.pinned[lo] or self.pinned[hi]
            self.producers[lo] += self.producers[hi]
        return self.find(a)

    def pin(self, g: int) -> None:
        self.pinned[self.find(g)] = True


#: operations that mean attention: a transformer template (or a hand-written factored spec) fits there
_ATTENTION_OPS = re.compile(r"\b(scaled_dot_product_attention|MultiheadAttention|softmax|matmul|bmm|baddbmm|einsum|repeat_interleave)\b")
_TEMPLATES_HINT = ("for BERT, GPT-2 or Llama/Mistral/Qwen2 use 'wsa spec template bert|gpt2|llama --config config.json', "
                   "else write the heads as factored axes (\"H*D\") by hand (docs/spec.md)")  # fmt: skip


def _unhandled(node: Any, what: str) -> ConfigError:
    hint = "Write the spec by hand or start from 'wsa spec template'"
    if _ATTENTION_OPS.search(what) or "attention" in what:
        hint = ("Inference traces multi-head attention written as a view into heads, transpose, Q @ K^T, softmax and @ V, "
                f"or scaled_dot_product_attention, nothing else; {_TEMPLATES_HINT}")  # fmt: skip
    elif what.startswith("reshape") and "moves the permuted axis" in what:
        hint = f"If this splits a projection into attention heads: {_TEMPLATES_HINT}"
    return ConfigError(
        f"wsa spec infer cannot handle node '{node.name}' ({what}); supported: Linear, Conv (groups=1), BatchNorm, "
        f"LayerNorm, elementwise activations, dropout, pooling, flatten/view/reshape, transpose/permute, add/sub/mul, mean/sum, "
        f"multi-head attention. {hint}"
    )


def _op_name(node: Any, gm: Any) -> str:
    if node.op == "call_module":
        return f"module {node.target} ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}()"
    if node.op == "get_attr":
        return f"get_attr {node.target}: a parameter used outside a module"
    return f"function {getattr(node.target, '__name__', str(node.target))}"


def trace_model(model: nn.Module, input_shape: Sequence[int]) -> Any:
    """Symbolically trace ``model`` and record every node's shape for a batch of 2 zeros."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    model = model.eval()
    try:
        gm = symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the model's, reported in one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise PluginError(f"torch.fx cannot trace the model ({type(exc).__name__}: {first})") from None
    try:
        # ShapeProp prints the model's traceback on stderr itself before raising; we report one line
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(torch.zeros(2, *input_shape))
    except Exception as exc:  # noqa: BLE001
        cause = exc.__cause__ or exc  # ShapeProp wraps the model's own error ("ShapeProp error for: node=...")
        first = (str(cause).strip().splitlines() or [""])[0]
        raise PluginError(f"the model does not run on input shape {tuple(input_shape)} ({type(cause).__name__}: {first})") from None
    return gm


def _shape(node: Any) -> tuple[int, ...] | None:
    from torch.fx.passes.shape_prop import TensorMetadata

    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def infer_spec(model: nn.Module, input_shape: Sequence[int]) -> PermutationSpec:
    """Trace ``model`` on inputs of ``(N, *input_shape)`` and derive its permutation spec.

    Example:
        >>> from wsa_cli.permute.examples import tiny_resnet
        >>> spec = infer_spec(tiny_resnet(), (3, 8, 8))
        >>> spec.axes["layer1.0.conv2.weight"][0] == spec.axes["conv1.weight"][0]
        True
    """
    gm = trace_model(model, input_shape)
    groups = _Groups()
    tags: dict[Any, Tag | HeadTag | None] = {}
    attentions: list[_Attention] = []
    scores_of: dict[int, tuple[str, str, int]] = {}  # Q.K^T group -> (Q layer, K layer, QK head dims)
    raw_axes: dict[str, list[tuple[int, int] | None]] = {}  # key -> per axis (gid, inner) or None
    producer_of: dict[str, int] = {}  # module name -> its output group
    layer_nodes: list[Any] = []

    def tag_of(arg: Any) -> Tag | None:
        return tags.get(arg) if isinstance(arg, Node) else None

    def is_tensor(arg: Any) -> bool:
        return isinstance(arg, Node) and _shape(arg) is not None

    def entry(t: Tag | None) -> tuple[int, int] | None:
        return None if t is None else (t.gid, t.inner)

    def channel_input(node: Any, x: Any, axis: int, what: str) -> Tag | None:
        t = tag_of(x)
        if isinstance(t, HeadTag):
            raise _unhandled(node, f"{what} reads a value split into attention heads")
        if t is not None and t.axis != axis:
            raise _unhandled(node, f"{what} expects the permuted axis at {axis}, found it at axis {t.axis}")
        return t

    for node in gm.graph.nodes:
        out_shape = _shape(node)
        op = node.op
        if op == "placeholder":
            tags[node] = None
            continue
        if op == "output":
            def pin_all(a: Any) -> None:
                if isinstance(a, Node) and tags.get(a) is not None:
                    groups.pin(tags[a].gid)  # type: ignore[union-attr]
                elif isinstance(a, (list, tuple)):
                    for x in a:
                        pin_all(x)
                elif isinstance(a, dict):
                    for x in a.values():
                        pin_all(x)
            pin_all(node.args)
            continue
        if op == "get_attr":
            raise _unhandled(node, _op_name(node, gm))
        if out_shape is None:
            # shape arithmetic (x.shape, x.size(0), getitem on sizes): not a tensor, no group
            if any(tag_of(a) is not None for a in node.args if isinstance(a, Node)) and not (
                (op == "call_function" and node.target is getattr) or (op == "call_method" and node.target in ("size", "dim"))
            ):
                raise _unhandled(node, _op_name(node, gm))
            tags[node] = None
            continue
        x = node.args[0] if node.args else None
        nd = len(out_shape)
        if op == "call_module":
            m = gm.get_submodule(node.target)
            name = str(node.target)
            if isinstance(m, nn.Linear):
                tin = channel_input(node, x, len(_shape(x) or ()) - 1, "Linear")
                g = groups.new(name)
                raw_axes[f"{name}.weight"] = [(g, 1), entry(tin)]
                if m.bias is not None:
                    raw_axes[f"{name}.bias"] = [(g, 1)]
                tags[node] = Tag(nd - 1, g)
                producer_of[name] = g
                layer_nodes.append(node)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if m.groups != 1:
                    raise _unhandled(node, f"grouped convolution {name} (groups={m.groups})")
                tin = channel_input(node, x, 1, "Conv")
                if tin is not None and tin.inner != 1:
                    raise _unhandled(node, f"Conv {name} reads a reshaped channel axis")
                g = groups.new(name)
                raw_axes[f"{name}.weight"] = [(g, 1), entry(tin)] + [None] * (m.weight.ndim - 2)
                if m.bias is not None:
                    raw_axes[f"{name}.bias"] = [(g, 1)]
                tags[node] = Tag(1, g)
                producer_of[name] = g
                layer_nodes.append(node)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                tin = channel_input(node, x, 1, "BatchNorm")
                for leaf in ("weight", "bias", *BN_RUNNING_STATS):
                    if getattr(m, leaf, None) is not None:
                        raw_axes[f"{name}.{leaf}"] = [entry(tin)]
                tags[node] = tin
            elif isinstance(m, nn.LayerNorm):
                if len(m.normalized_shape) != 1:
                    raise _unhandled(node, f"LayerNorm {name} over several axes")
                tin = channel_input(node, x, len(_shape(x) or ()) - 1, "LayerNorm")
                for leaf in ("weight", "bias"):
                    if getattr(m, leaf, None) is not None:
                        raw_axes[f"{name}.{leaf}"] = [entry(tin)]
                tags[node] = tin
            elif isinstance(m, _ELEMENTWISE_MODULES):
                if isinstance(m, nn.PReLU) and m.num_parameters != 1:
                    raise _unhandled(node, f"PReLU {name} with per-channel slopes")
                if isinstance(m, nn.PReLU):
                    raw_axes[f"{name}.weight"] = [None]
                tags[node] = tag_of(x)
            elif isinstance(m, _POOL_MODULES):
                tags[node] = channel_input(node, x, 1, "pooling")
            elif isinstance(m, nn.Flatten):
                tags[node] = _reshape(node, x, tag_of(x), out_shape)
            else:
                raise _unhandled(node, _op_name(node, gm))
            continue
        # call_function / call_method
        target = node.target
        if op == "call_function" and target in _ELEMENTWISE_FUNCS or op == "call_method" and target in _ELEMENTWISE_METHODS:
            tags[node] = tag_of(x)
        elif op == "call_function" and target in _POOL_FUNCS:
            tags[node] = channel_input(node, x, 1, "pooling")
        elif op == "call_function" and target is torch.flatten or op == "call_method" and target in _RESHAPE_METHODS:
            tags[node] = _reshape(node, x, tag_of(x), out_shape)
        elif op == "call_function" and target in _REDUCE_FUNCS or op == "call_method" and target in _REDUCE_METHODS:
            tags[node] = _reduce(node, x, tag_of(x))
        elif op == "call_function" and target in _BINARY_FUNCS or op == "call_method" and target in _BINARY_METHODS:
            tags[node] = _binary(node, [a for a in node.args[:2]], out_shape, tag_of, is_tensor, groups)
        elif op == "call_function" and target in _TRANSPOSE_FUNCS or op == "call_method" and target in _TRANSPOSE_METHODS:
            tags[node] = _transpose(node, x, tag_of(x))
        elif op == "call_function" and target in _MATMUL_FUNCS or op == "call_method" and target == "matmul":
            a, b = node.args[0], node.args[1]
            tags[node] = _matmul(node, (tag_of(a), _shape(a) or ()), (tag_of(b), _shape(b) or ()), groups, attentions, scores_of)
        elif op == "call_function" and target is F.scaled_dot_product_attention:
            tags[node] = _sdpa(node, tag_of, groups, attentions, scores_of)
        else:
            if any(isinstance(tag_of(a), HeadTag) for a in node.args):
                raise _unhandled(node, f"{_op_name(node, gm)} on a value split into attention heads (slicing or concatenating "
                                       "head dimensions, as rotary embeddings do, cannot be traced: rotary dimensions may not move)")  # fmt: skip
            raise _unhandled(node, _op_name(node, gm))

    # -- name the groups; pinned groups become null ---------------------------------------------
    names: dict[int, str] = {}
    for g in range(len(groups.parent)):
        r = groups.find(g)
        if r in names or groups.pinned[r]:
            continue
        prods = groups.producers[r]
        names[r] = f"P_{prods[0]}" if len(prods) == 1 else f"S_{prods[0]}"

    layouts, sizes, rules = _attention_layouts(attentions, groups, raw_axes)

    def final(e: tuple[int, int] | None) -> AxisEntry:
        if e is None:
            return None
        r = groups.find(e[0])
        if groups.pinned[r]:
            return None
        if r in layouts:
            return AxisLayout((layouts[r],))
        return AxisGroup(names[r], e[1])

    state = model.state_dict()
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        raw = raw_axes.get(key)
        axes[key] = tuple(final(e) for e in raw) if raw is not None else (None,) * value.ndim
    scaling = _scaling_rules(gm, layer_nodes, producer_of, groups, raw_axes)
    spec = PermutationSpec(axes, scaling=scaling, sizes=sizes, attention=rules)
    return spec.resolve({k: tuple(v.shape) for k, v in state.items()})


def _reshape(node: Any, x: Any, t: Tag | HeadTag | None, out_shape: tuple[int, ...]) -> Tag | HeadTag | None:
    if t is None:
        return None
    in_shape = tuple(_shape(x) or ())
    out_shape = tuple(out_shape)
    a = t.axis
    if isinstance(t, HeadTag):  # merging the heads back: (.., H, D, ..) -> (.., H*D, ..)
        if t.dim_axis == a + 1 and out_shape[:a] == in_shape[:a] and out_shape[a + 1 :] == in_shape[a + 2 :] \
                and len(out_shape) == len(in_shape) - 1 and out_shape[a] == in_shape[a] * in_shape[a + 1]:  # fmt: skip
            return Tag(a, t.gid)
        raise _unhandled(node, f"reshape {in_shape} -> {out_shape} of a value split into attention heads (only merging "
                               "heads x head dimensions back into one axis is traced)")  # fmt: skip
    if t.inner == 1 and len(out_shape) == len(in_shape) + 1 and out_shape[:a] == in_shape[:a] \
            and out_shape[a + 2 :] == in_shape[a + 1 :] and out_shape[a] * out_shape[a + 1] == in_shape[a] \
            and min(out_shape[a], out_shape[a + 1]) > 1:  # fmt: skip
        return HeadTag(a, t.gid, a + 1)  # (.., H*D, ..) -> (.., H, D, ..): split into attention heads
    if tuple(out_shape) == tuple(in_shape):
        return t
    if tuple(out_shape[: a + 1]) == tuple(in_shape[: a + 1]):
        return t  # only axes after the permuted one change
    rest = 1
    for d in in_shape[a + 1 :]:
        rest *= d
    if len(out_shape) == a + 1 and tuple(out_shape[:a]) == tuple(in_shape[:a]) and out_shape[a] == in_shape[a] * rest:
        return Tag(a, t.gid, t.inner * rest)  # (.., C, H, W) -> (.., C*H*W): channel-major blocks
    raise _unhandled(node, f"reshape {tuple(in_shape)} -> {tuple(out_shape)} moves the permuted axis {a}")


def _reduce(node: Any, x: Any, t: Tag | HeadTag | None) -> Tag | None:
    if t is None:
        return None
    if isinstance(t, HeadTag):
        raise _unhandled(node, "a reduction of a value split into attention heads")
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    keep = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
    if dims is None:
        return None  # a full reduction does not depend on the order
    nd = len(_shape(x) or ())
    dims = [d % nd for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if t.axis in dims:
        return None  # reducing over the permuted axis: the result is order-free
    return t if keep else Tag(t.axis - sum(d < t.axis for d in dims), t.gid, t.inner)


def _binary(node: Any, args: list[Any], out_shape: tuple[int, ...], tag_of: Any, is_tensor: Any, groups: _Groups) -> Tag | HeadTag | None:
    nd = len(out_shape)
    tensors = [a for a in args if is_tensor(a)]
    if any(isinstance(tag_of(a), HeadTag) for a in tensors):
        return _binary_heads(node, tensors, nd, tag_of, groups)
    tagged: list[Tag] = []
    for a in tensors:
        t = tag_of(a)
        if t is None:
            continue
        shift = nd - len(_shape(a) or ())  # broadcasting aligns trailing axes
        tagged.append(Tag(t.axis + shift, t.gid, t.inner))
    if not tagged:
        return None
    first = tagged[0]
    for t in tagged[1:]:
        if t.axis != first.axis or t.inner != first.inner:
            raise _unhandled(node, f"combines values permuted on different axes ({first.axis} and {t.axis})")
        groups.union(first.gid, t.gid)
    for a in tensors:
        if tag_of(a) is None:
            shape = _shape(a) or ()
            shift = nd - len(shape)
            k = first.axis - shift
            if 0 <= k < len(shape) and shape[k] != 1:
                groups.pin(first.gid)  # a fixed-order tensor of full size: the group cannot move
    return Tag(first.axis, groups.find(first.gid), first.inner)


def _binary_heads(node: Any, tensors: list[Any], nd: int, tag_of: Any, groups: _Groups) -> HeadTag:
    """``add``/``mul``/... of values split into heads (a scale or a mask on attention scores)."""
    tagged: list[HeadTag] = []
    for a in tensors:
        t = tag_of(a)
        shift = nd - len(_shape(a) or ())
        if isinstance(t, Tag):
            raise _unhandled(node, "combines a value split into attention heads with one that is not")
        if t is not None:
            tagged.append(HeadTag(t.axis + shift, t.gid, None if t.dim_axis is None else t.dim_axis + shift))
    first = tagged[0]
    for t in tagged[1:]:
        if (t.axis, t.dim_axis) != (first.axis, first.dim_axis):
            raise _unhandled(node, "combines values split into attention heads along different axes")
        groups.union(first.gid, t.gid)
    for a in tensors:
        if tag_of(a) is None:  # a mask or a bias: fine unless it differs per head (or per head dimension)
            shape = _shape(a) or ()
            shift = nd - len(shape)
            for axis in (first.axis, first.dim_axis):
                k = -1 if axis is None else axis - shift
                if 0 <= k < len(shape) and shape[k] != 1:
                    groups.pin(first.gid)
    return HeadTag(first.axis, groups.find(first.gid), first.dim_axis)


def _transpose(node: Any, x: Any, t: Tag | HeadTag | None) -> Tag | HeadTag | None:
    """``transpose``/``permute``: the permuted axes move with their values."""
    nd = len(_shape(x) or ())
    rest = [a for a in node.args[1:] if not isinstance(a, Node)] if node.args else []
    dims = list(node.kwargs.get("dims", rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest))
    if node.target in ("transpose", "swapaxes") or node.target in (torch.transpose, torch.swapaxes):
        d0, d1 = (int(d) % nd for d in dims[:2])
        order = list(range(nd))
        order[d0], order[d1] = order[d1], order[d0]
    else:
        order = [int(d) % nd for d in dims]
    if t is None:
        return None
    if isinstance(t, HeadTag):
        return HeadTag(order.index(t.axis), t.gid, None if t.dim_axis is None else order.index(t.dim_axis))
    if t.inner != 1:
        raise _unhandled(node, "a transpose of a flattened channel axis")
    return Tag(order.index(t.axis), t.gid)


def _matmul(node: Any, a: tuple[Any, tuple[int, ...]], b: tuple[Any, tuple[int, ...]], groups: _Groups,
            attentions: list[_Attention], scores_of: dict[int, tuple[str, str, int]]) -> HeadTag:  # fmt: skip
    """``Q @ K^T`` (Q and K share heads and head dimensions: one group) or ``scores @ V`` (one attention)."""
    (ta, sa), (tb, sb) = a, b
    if not (isinstance(ta, HeadTag) and isinstance(tb, HeadTag)) or len(sa) != len(sb) or ta.axis != tb.axis:
        raise _unhandled(node, "a matrix product that is not Q @ K^T or attention scores @ V of values split into heads")
    n = len(sa)
    if ta.dim_axis == n - 1 and tb.dim_axis == n - 2:  # Q (.., H, T, D) @ K^T (.., H, D, S): contracts the head dimensions
        q_layer, k_layer = groups.producers[groups.find(ta.gid)][0], groups.producers[groups.find(tb.gid)][0]
        qk = groups.union(ta.gid, tb.gid)
        scores_of[qk] = (q_layer, k_layer, sa[n - 1])
        return HeadTag(ta.axis, qk, None)
    if ta.dim_axis is None and tb.dim_axis == n - 1:  # scores (.., H, T, S) @ V (.., H, S, D)
        return _attend(node, ta.gid, tb, sb, sa[ta.axis], groups, attentions, scores_of)
    raise _unhandled(node, "a matrix product of values split into heads along unexpected axes")


def _attend(node: Any, qk: int, v: HeadTag, v_shape: tuple[int, ...], heads: int, groups: _Groups,
            attentions: list[_Attention], scores_of: dict[int, tuple[str, str, int]]) -> HeadTag:  # fmt: skip
    """Record one attention (its Q.K^T group, its V group) and return its output, shaped like V."""
    info = scores_of.get(groups.find(qk))
    if info is None:
        raise _unhandled(node, "attention scores that do not come from Q @ K^T of two projections")
    if v_shape[v.axis] != heads:
        raise _unhandled(node, f"V has {v_shape[v.axis]} heads for {heads} query heads (grouped-query attention is not "
                               "traced: repeat_interleave of K/V heads)")  # fmt: skip
    v_layer = groups.producers[groups.find(v.gid)][0]
    attentions.append(_Attention(groups.find(qk), groups.find(v.gid), info[0], info[1], v_layer, heads, info[2], v_shape[v.dim_axis]))
    return HeadTag(v.axis, groups.find(v.gid), v.dim_axis)


def _sdpa(node: Any, tag_of: Any, groups: _Groups, attentions: list[_Attention], scores_of: dict[int, tuple[str, str, int]]) -> HeadTag:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=..., ...)``: one attention."""
    args = list(node.args[:3]) + [node.kwargs.get(k) for k in ("query", "key", "value")][len(node.args[:3]) :]
    q, k, v = args
    ts = [tag_of(a) for a in (q, k, v)]
    shapes = [_shape(a) or () for a in (q, k, v)]
    n = len(shapes[0])
    if not all(isinstance(t, HeadTag) and t.dim_axis == n - 1 and t.axis == ts[0].axis for t in ts):
        raise _unhandled(node, "scaled_dot_product_attention of values that are not all split into heads the same way")
    extra = [a for a in [*node.args[3:], *(node.kwargs[key] for key in node.kwargs if key not in ("query", "key", "value"))] if isinstance(a, Node)]
    if any(tag_of(a) is not None for a in extra):
        raise _unhandled(node, "scaled_dot_product_attention with a mask that is permuted")
    qt, kt, vt = ts
    q_layer, k_layer = groups.producers[groups.find(qt.gid)][0], groups.producers[groups.find(kt.gid)][0]
    qk = groups.union(qt.gid, kt.gid)
    scores_of[qk] = (q_layer, k_layer, shapes[0][n - 1])
    return _attend(node, qk, vt, shapes[2], shapes[0][qt.axis], groups, attentions, scores_of)


def _attention_layouts(attentions: list[_Attention], groups: _Groups, raw_axes: dict[str, list[tuple[int, int] | None]]
                       ) -> tuple[dict[int, tuple[str, str]], dict[str, int], dict[str, AttentionRule]]:  # fmt: skip
    """Per traced attention ``n``: Q/K axes ``H_n*QK_n``, V/O axes ``H_n*VO_n``, their sizes and an attention rule."""
    layouts: dict[int, tuple[str, str]] = {}
    sizes: dict[str, int] = {}
    rules: dict[str, AttentionRule] = {}
    for n, att in enumerate(attentions):
        qk, v = groups.find(att.qk), groups.find(att.v)
        if groups.pinned[qk] or groups.pinned[v]:  # one side cannot move, so neither may: heads are shared
            groups.pin(qk)
            groups.pin(v)
            continue
        want = {qk: (f"H_{n}", f"QK_{n}"), v: (f"H_{n}", f"VO_{n}" if v != qk else f"QK_{n}")}
        for root, layout in want.items():
            if layouts.get(root, layout) != layout:
                raise ConfigError(f"wsa spec infer: the projection {groups.producers[root][0]} feeds two attentions; "
                                  f"write its heads as factored axes by hand. {_TEMPLATES_HINT}")  # fmt: skip
            layouts[root] = layout
        sizes.update({f"H_{n}": att.heads, f"QK_{n}": att.qk_dim, **({f"VO_{n}": att.v_dim} if v != qk else {})})
        out = next((key for key, axes in raw_axes.items() if key.endswith(".weight") and len(axes) == 2 and axes[1] is not None
                    and groups.find(axes[1][0]) == v), None)  # fmt: skip
        if out is not None and att.v_dim == att.qk_dim:  # the rule has one head_dim
            name = att.q_layer.rsplit(".", 1)[0] if "." in att.q_layer else f"attention_{n}"
            rules[name] = AttentionRule(name, (f"{att.q_layer}.weight", 0, 0), (f"{att.k_layer}.weight", 0, 0), (f"{att.v_layer}.weight", 0, 0),
                                        (out, 1, 0), att.heads, att.heads, att.qk_dim)  # fmt: skip
    return layouts, sizes, rules


def _scaling_rules(gm: Any, layer_nodes: list[Any], producer_of: dict[str, int], groups: _Groups, raw_axes: dict[str, Any]) -> dict[str, ScaleRule]:
    """A function-preserving scale rule (or the reason there is none) for every Linear/Conv layer."""
    rules: dict[str, ScaleRule] = {}
    for node in layer_nodes:
        name = str(node.target)
        key = f"{name}.weight"
        bias = (f"{name}.bias",) if f"{name}.bias" in raw_axes else ()
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(
            gm.get_submodule(users[0].target), nn.modules.batchnorm._BatchNorm
        ) and gm.get_submodule(users[0].target).track_running_stats:
            rules[key] = ScaleRule(key, with_=bias, bn=str(users[0].target))
            continue
        if len(users) == 1 and users[0].op == "call_module" and isinstance(gm.get_submodule(users[0].target), nn.LayerNorm):
            # LayerNorm normalises each sample over its trailing axes: a scalar c on its input cancels
            rules[key] = ScaleRule(key, with_=bias, norm=str(users[0].target))
            continue
        inverse: list[str] = []
        reason: str | None = None
        frontier = list(users)
        seen: set[Any] = set()
        while frontier and reason is None:
            u = frontier.pop(0)
            if u in seen:
                continue
            seen.add(u)
            if _shape(u) is None and (u.op == "call_method" and u.target in ("size", "dim") or u.op == "call_function" and u.target is getattr):
                continue  # x.size(0), x.shape: shape arithmetic, not a value
            if u.op == "output":
                reason = "its output is the model's output: nothing downstream absorbs a scale"
            elif u.op == "call_module":
                m = gm.get_submodule(u.target)
                if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    inverse.append(f"{u.target}.weight")
                elif isinstance(m, (_HOMOGENEOUS_MODULES, nn.Flatten)):
                    frontier += list(u.users)
                elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                    reason = f"its output reaches BatchNorm {u.target} after other operations"
                else:
                    reason = f"its output goes through {type(m).__name__} ({u.target}), which is not positively homogeneous"
            elif u.op == "call_function" and (u.target in _HOMOGENEOUS_FUNCS or u.target in _POOL_FUNCS or u.target is torch.flatten or u.target in _REDUCE_FUNCS) or u.op == "call_method" and (u.target in _HOMOGENEOUS_METHODS or u.target in _RESHAPE_METHODS or u.target in _REDUCE_METHODS):
                frontier += list(u.users)
            elif (u.op == "call_function" and u.target in _BINARY_FUNCS) or (u.op == "call_method" and u.target in _BINARY_METHODS):
                reason = f"its output is combined with another value ({u.name}), e.g. a residual stream"
            else:
                what = getattr(u.target, "__name__", str(u.target))
                reason = f"its output goes through {what} ({u.name}), which is not positively homogeneous"
        if reason is None and not inverse:
            reason = "nothing downstream reads its output"
        rules[key] = ScaleRule(key, none=reason) if reason else ScaleRule(key, with_=bias, inverse=tuple(inverse))
    return rules

