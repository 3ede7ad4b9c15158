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
            raise DeviceError(f"--device {spec!r}: expected one of auto, cpu, cuda, cuda:N")
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise DeviceError(f"--device {spec!r}: expected one of auto, cpu, cuda, cuda:N")
