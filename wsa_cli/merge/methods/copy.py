"""``copy``: take the tensor of one model unchanged (e.g. keep one model's classifier head).

``model`` is an index into the recipe's ``models`` list (0 = first); ``-1`` takes the base model.
Useful in per-layer ``overrides``. The tensor still goes through scope alignment when the
override leaves ``align`` on; set ``align: false`` to copy it bit for bit.
"""

from __future__ import annotations

from wsa_cli.errors import InvalidValueError
from wsa_cli.merge.registry import MergeMethod, Param


def _copy(tensors, base, weights, params, ctx):  # noqa: ANN001, ANN202
    try:
        _check(params, len(tensors), base is not None)
    except InvalidValueError as exc:
        raise InvalidValueError(exc.message, key=ctx.key) from None
    index = params["model"]
    return (base if index == -1 else tensors[index]).clone()


def _linear_form(weights, params, has_base):  # noqa: ANN001, ANN202
    _check(params, len(weights), has_base)
    index = params["model"]
    if index == -1:
        return [0.0] * len(weights), 1.0
    return [1.0 if i == index else 0.0 for i in range(len(weights))], 0.0


def _uses_base(params) -> bool:  # noqa: ANN001
    return params["model"] == -1


def _check(params, k: int, has_base: bool) -> None:  # noqa: ANN001
    index = params["model"]
    if index == -1 and not has_base:
        raise InvalidValueError("copy with model: -1 needs a base model")
    if index >= k:
        raise InvalidValueError(f"copy: model index {index} is out of range for {k} models")


COPY = MergeMethod(
    name="copy",
    fn=_copy,
    summary="Take one model's tensor unchanged (model: index, -1 = base).",
    reference="-",
    params=(Param("model", int, 0, "index into models (0 = first); -1 = the base model", lo=-1),),
    linear_form=_linear_form,
    base_rule=_uses_base,
    param_check=_check,
)

METHODS = (COPY,)
