"""The straight path between two checkpoints, ``(1 - alpha) * A + alpha * B``, tensor by tensor.

Numerics: the blend is computed with ``torch.lerp`` in float32 (float64 for float64 inputs) and
cast back to the endpoints' dtype, so bf16/fp16 checkpoints lose nothing in the arithmetic. At ``alpha == 0`` and
``alpha == 1`` the endpoint tensor itself is returned (no recomputation): the path starts and ends
at the inputs bit for bit. Non-floating tensors (integer buffers such as BatchNorm's
``num_batches_tracked``) cannot be blended; they are taken from the nearer endpoint (A for
``alpha <= 0.5``).

Endpoints are any ``Mapping[str, Tensor]``; :class:`LazyStateDict` wraps a checkpoint reader so
that a tensor is read only when it is asked for (data-free diagnostics walk one tensor at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch

from wsa_cli.errors import MismatchError
from wsa_cli.io import CheckpointReader, dtype_name


def lerp_tensor(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * a + alpha * b`` in float32+, cast back to ``a.dtype``; endpoints returned as is.

    Example:
        >>> a, b = torch.zeros(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.bfloat16)
        >>> lerp_tensor(a, b, 0.25)
        tensor([0.2500, 0.2500], dtype=torch.bfloat16)
        >>> lerp_tensor(a, b, 0.0) is a
        True
    """
    if alpha == 0.0:
        return a
    if alpha == 1.0:
        return b
    if not a.dtype.is_floating_point:
        return a if alpha <= 0.5 else b
    compute = torch.float64 if a.dtype == torch.float64 else torch.float32
    # torch.lerp computes a + alpha * (b - a) (b - (b - a) * (1 - alpha) for alpha >= 0.5): exact
    # where a == b, so identical endpoints give bit-identical models at every alpha.
    out = torch.lerp(a.to(compute), b.to(device=a.device, dtype=compute), alpha)
    return out.to(a.dtype)


def interpolate_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """The state dict at ``alpha``: one new tensor per key (endpoint tensors at 0 and 1).

    Peak memory is one model's worth of new tensors plus one float32 temporary; the caller
    drops the result after evaluating it.

    Example:
        >>> sd = interpolate_state({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.5)
        >>> sd["w"]
        tensor([0.5000, 0.5000])
    """
    return {key: lerp_tensor(a[key], b[key], alpha) for key in a}


class LazyStateDict(Mapping[str, torch.Tensor]):
    """A read-only mapping over a checkpoint reader that loads a tensor on each access.

    Optionally applies ``transform(key, tensor) -> tensor`` to each loaded tensor (used by modes
    that rescale endpoints, so the rescaled model never has to be held whole in memory).

    Example:
        >>> with open_checkpoint("a.safetensors") as r:  # doctest: +SKIP
        ...     lazy = LazyStateDict(r)
        ...     w = lazy["fc1.weight"]
    """

    def __init__(
        self,
        source: CheckpointReader | Mapping[str, torch.Tensor],
        transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.source = source
        self.transform = transform

    def __getitem__(self, key: str) -> torch.Tensor:
        if isinstance(self.source, CheckpointReader):
            if key not in self.source:
                raise KeyError(key)
            tensor = self.source.get(key)
        else:
            tensor = self.source[key]
        return tensor if self.transform is None else self.transform(key, tensor)

    def __iter__(self) -> Iterator[str]:
        return iter(self.source.keys())

    def __len__(self) -> int:
        return len(self.source)

    def __contains__(self, key: object) -> bool:
        return key in self.source

    def copy(self) -> dict[str, torch.Tensor]:
        """Materialise every tensor into a plain dict."""
        return {k: self[k] for k in self}

    @property
    def path(self) -> str | None:
        return str(self.source.path) if isinstance(self.source, CheckpointReader) else None


def check_compatible(a: CheckpointReader, b: CheckpointReader) -> None:
    """Refuse two checkpoints that cannot be interpolated: other keys, shapes or dtypes.

    The error names the key and the file that differs (exit code 5).

    Example:
        >>> check_compatible(open_checkpoint("a.pt"), open_checkpoint("b.pt"))  # doctest: +SKIP
    """
    keys_a, keys_b = set(a.keys()), set(b.keys())
    for key in a:
        if key not in keys_b:
            raise MismatchError(f"is missing (present in {a.path})", path=b.path, key=key)
    for key in b:
        if key not in keys_a:
            raise MismatchError(f"is missing (present in {b.path})", path=a.path, key=key)
    for key in a:
        ia, ib = a.info(key), b.info(key)
        if ia.shape != ib.shape:
            raise MismatchError(f"has shape {_shape(ib.shape)}, but {a.path} has {_shape(ia.shape)}", path=b.path, key=key)
        if ia.dtype != ib.dtype:
            a_dt, b_dt = dtype_name(ia.dtype), dtype_name(ib.dtype)
            raise MismatchError(f"has dtype {b_dt}, but {a.path} has {a_dt}", path=b.path, key=key)


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
