"""The one place that decides where tensor math runs (``--device auto|cpu|cuda``)."""

from __future__ import annotations

import torch

from wsa_cli.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a :class:`torch.device`.

    ``auto`` picks CUDA when it is available and the CPU otherwise; asking for CUDA explicitly on
    a machine without it is an error rather than a silent fallback.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if spec != "cuda" and not spec[5:].isdigit():  # torch.device("cuda:x") raises a RuntimeError
            raise DeviceError("expected one of auto, cpu, cuda, cuda:N", option="device", value=spec)
        if not torch.cuda.is_available():
            raise DeviceError("CUDA is not available on this machine (use cpu or auto)", option="device", value=spec)
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"only {torch.cuda.device_count()} CUDA device(s) present", option="device", value=spec)
        return dev
    raise DeviceError("expected one of auto, cpu, cuda, cuda:N", option="device", value=spec)
