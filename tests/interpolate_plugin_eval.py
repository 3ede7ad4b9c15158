"""Test evaluators for tests/test_interpolate_cli.py (the plug-in contract, end to end).

``bump`` gives loss 1 - mean(w^2) over all floating tensors: for endpoints whose values are all
+1 and -1 the loss is 0 at both ends and ``4 alpha (1 - alpha)`` in between (exactly 1 at 0.5).
"""

from __future__ import annotations

import torch

CALLS: list[tuple[dict[str, torch.Tensor], torch.device]] = []


def bump(state_dict, device):  # noqa: ANN001, ANN201 - the plug-in contract, as a user would write it
    CALLS.append((dict(state_dict), device))
    values = torch.cat([t.reshape(-1).double() for t in state_dict.values() if t.dtype.is_floating_point])
    loss = 1.0 - float((values * values).mean())
    return {"loss": loss, "accuracy": 1.0 - loss / 2, "norm": float(values.norm())}


def loss_only(state_dict, device):  # noqa: ANN001, ANN201
    return {"loss": torch.tensor(0.5)}


def explode(state_dict, device):  # noqa: ANN001, ANN201
    raise ZeroDivisionError("division by zero in user code")


def not_a_dict(state_dict, device):  # noqa: ANN001, ANN201
    return 0.5


def with_bn(state_dict, device, recalibrate_bn=False):  # noqa: ANN001, ANN201
    return {"loss": 1.0 if recalibrate_bn else 2.0}


NOT_CALLABLE = 3
