"""``copy``: take the tensor of one model unchanged (e.g. keep one model's classifier head).

``model`` is an index into the recipe's ``models`` list (0 = first); ``-1`` takes the base model.
Useful in per-layer ``overrides``. The tensor still goes through scope alignment when the
override leaves ``align`` on; set ``align: false`` to copy it bit for bit.
"""

from __future__ import annotations

from wsa_cli.errors import UsageError
from wsa_cli.merge.registry import MergeMethod, Param, register_method


def _copy(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202
    index = params["model"]
    if index == -1:
        if base is None:
            raise UsageError("copy with model: -1 needs a base model", key=ctx.key)
        return base.clone()
    if index >= len(tensors):
        raise UsageError(f"copy: model index {index} is out of range for {len(tensors)} models", key=ctx.key)
    return tensors[index].clone()


def _linear_form(weights, params, has_base):  # noqa: ANN001, ANN202
    index = params["model"]
    if index == -1 or index >= len(weights):
        return _copy_error(index, len(weights), has_base)
    return [1.0 if i == index else 0.0 for i in range(len(weights))], 0.0


def _copy_error(index: int, k: int, has_base: bool) -> tuple[list[float], float]:
    if index == -1 and has_base:
        return [0.0] * k, 1.0
    if index == -1:
        raise UsageError("copy with model: -1 needs a base model")
    raise UsageError(f"copy: model index {index} is out of range for {k} models")


COPY = register_method(
    MergeMethod(
        name="copy",
        fn=_copy,
        summary="Take one model's tensor unchanged (model: index, -1 = base).",
        reference="-",
        params=(Param("model", int, 0, "index into models (0 = first); -1 = the base model", lo=-1),),
        linear_form=_linear_form,
    )
)
