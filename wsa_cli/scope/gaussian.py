"""A layer's weight scope, N(mean, std^2), and the closed-form KL between two such Gaussians.

Convention (used everywhere in wsa): ``std`` is the *population* standard deviation of the
tensor's values (``torch.std(..., correction=0)``), computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T", float, torch.Tensor)

#: Floor used inside KL so that a constant layer (std 0) gives a large finite number, not inf/nan.
STD_FLOOR = 1e-12


@dataclass(frozen=True)
class Scope:
    """The Gaussian N(mean, std^2) that a layer's weights follow.

    Example:
        >>> Scope(0.0, 0.05).var
        0.0025000000000000005
    """

    mean: float
    std: float

    @property
    def var(self) -> float:
        return self.std * self.std

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


def gaussian_kl(mu_p: T, std_p: T, mu_q: T, std_q: T) -> T:
    """KL( N(mu_p, std_p^2) || N(mu_q, std_q^2) ), closed form, in nats.

    ``ln(s_q/s_p) + (s_p^2 + (mu_p - mu_q)^2) / (2 s_q^2) - 1/2``. Works on Python floats and on
    tensors (differentiable, used by the training regularizer). Standard deviations are floored
    at :data:`STD_FLOOR` so constant layers give a large finite value instead of inf/nan.

    Example:
        >>> gaussian_kl(0.0, 1.0, 0.0, 1.0)
        0.0
        >>> round(gaussian_kl(0.0, 1.0, 1.0, 1.0), 6)
        0.5
    """
    if isinstance(std_p, torch.Tensor) or isinstance(std_q, torch.Tensor) or isinstance(mu_p, torch.Tensor):
        sp = torch.clamp(torch.as_tensor(std_p), min=STD_FLOOR)
        sq = torch.clamp(torch.as_tensor(std_q), min=STD_FLOOR)
        diff = torch.as_tensor(mu_p) - torch.as_tensor(mu_q)
        return torch.log(sq / sp) + (sp * sp + diff * diff) / (2 * sq * sq) - 0.5  # type: ignore[return-value]
    sp = max(float(std_p), STD_FLOOR)
    sq = max(float(std_q), STD_FLOOR)
    diff = float(mu_p) - float(mu_q)
    kl = math.log(sq / sp) + (sp * sp + diff * diff) / (2 * sq * sq) - 0.5
    return max(kl, 0.0)  # type: ignore[return-value]  # clamp -1e-17 rounding noise; KL >= 0
