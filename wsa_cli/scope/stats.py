"""Per-tensor scope statistics, chunked so that memory stays bounded for very large tensors.

Conventions (stated once, used everywhere):

* ``std`` is the *population* standard deviation (divide by n, ``correction=0``);
* skewness is ``m3 / m2**1.5`` and excess kurtosis ``m4 / m2**2 - 3`` (population moments; 0 and
  0 for a Gaussian); both are ``None`` for a constant tensor (undefined, no division by zero);
* moments are taken over the finite values only; NaN and Inf are counted, never fatal;
* ``zero_fraction`` counts exact zeros over all values.

Numerics: each chunk (``CPU_CHUNK`` elements) is centred on its own mean and its central power sums
are reduced with float64 accumulators (``torch.sum(..., dtype=torch.float64)``); element-wise
products are float32 for 32-bit-or-narrower inputs (bf16/fp16 values are exact in float32) and
float64 for float64 inputs. Chunks are combined with the pairwise update of Chan et al. / Pébay
(2008), which is exact in exact arithmetic and free of the cancellation of raw power sums. If a
chunk overflows float32 (|w| > ~1e9) it is redone in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from wsa_cli.fusion.gaussian import Scope

#: Elements per chunk on the CPU: 1 MiB of float32 stays in cache across the passes below.
CPU_CHUNK = 1 << 18
#: Elements per chunk on CUDA, where launches, not cache, dominate.
CUDA_CHUNK = 1 << 24


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a set of values: count, mean and central power sums M2..M4."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    zeros: int = 0
    nan: int = 0
    inf: int = 0

    def merge(self, other: Moments) -> Moments:
        """Combine two disjoint sets' moments (Pébay 2008, eqs. 2.1-2.3 for p = 2..4)."""
        if other.n == 0:
            return _with_counts(self, other)
        if self.n == 0:
            return _with_counts(other, self)
        na, nb = self.n, other.n
        n = na + nb
        delta = other.mean - self.mean
        d_n = delta / n
        m2 = self.m2 + other.m2 + delta * d_n * na * nb
        m3 = self.m3 + other.m3 + d_n * d_n * delta * na * nb * (na - nb) + 3 * d_n * (na * other.m2 - nb * self.m2)
        m4 = (
            self.m4
            + other.m4
            + d_n**3 * delta * na * nb * (na * na - na * nb + nb * nb)
            + 6 * d_n * d_n * (na * na * other.m2 + nb * nb * self.m2)
            + 4 * d_n * (na * other.m3 - nb * self.m3)
        )
        return Moments(
            n, self.mean + d_n * nb, m2, m3, m4, min(self.min, other.min), max(self.max, other.max),
            self.zeros + other.zeros, self.nan + other.nan, self.inf + other.inf,
        )  # fmt: skip

    @property
    def var(self) -> float:
        return max(self.m2 / self.n, 0.0) if self.n else 0.0


def _with_counts(m: Moments, other: Moments) -> Moments:
    return Moments(m.n, m.mean, m.m2, m.m3, m.m4, min(m.min, other.min), max(m.max, other.max),
                   m.zeros + other.zeros, m.nan + other.nan, m.inf + other.inf)  # fmt: skip


class _Scratch:
    """Reusable chunk-sized buffers, so the per-chunk temporaries allocate (and page-fault) once."""

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.bufs = [torch.empty(size, dtype=dtype, device=device) for _ in range(4)]

    def take(self, n: int, dtype: torch.dtype) -> list[torch.Tensor]:
        if self.bufs[0].dtype != dtype or self.bufs[0].numel() < n:
            self.bufs = [torch.empty(n, dtype=dtype, device=self.bufs[0].device) for _ in range(4)]
        return [b[:n] for b in self.bufs]


def _chunk_moments(x: torch.Tensor, compute: torch.dtype, scratch: _Scratch) -> tuple[float, float, float, float, float] | None:
    """(n, mean, M2, M3, M4) of a flat chunk of finite values; None if float32 overflowed."""
    n = x.numel()
    d, d2, t, up = scratch.take(n, compute)  # (n,) each
    if x.dtype != compute:  # bf16/fp16 -> float32 exactly, so the centring below rounds in float32
        x = up.copy_(x)
    mean = float(torch.sum(x, dtype=torch.float64)) / n
    torch.sub(x, mean, out=d)  # centred on the chunk mean
    torch.mul(d, d, out=d2)
    m2 = float(torch.sum(d2, dtype=torch.float64))
    m3 = float(torch.sum(torch.mul(d2, d, out=t), dtype=torch.float64))
    m4 = float(torch.sum(torch.mul(d2, d2, out=t), dtype=torch.float64))
    if not math.isfinite(m4) or not math.isfinite(mean):
        return None
    return float(n), mean, m2, m3, m4


def chunk_moments(chunk: torch.Tensor, scratch: _Scratch | None = None) -> Moments:
    """Moments of one flat chunk (any dtype; bool/int as numbers)."""
    x = chunk if chunk.dtype.is_floating_point else chunk.to(torch.float64)
    numel = x.numel()
    if numel == 0:
        return Moments()
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    scratch = scratch or _Scratch(numel, compute, x.device)
    zeros = numel - int(torch.count_nonzero(x))
    nan = inf = 0
    res = _chunk_moments(x, compute, scratch)
    if res is None:  # non-finite values, or float32 overflow of the 4th power
        finite = torch.isfinite(x)
        nan = int(torch.isnan(x).sum())
        inf = numel - nan - int(finite.sum())
        x = x[finite]
        if x.numel() == 0:
            return Moments(zeros=zeros, nan=nan, inf=inf)
        res = _chunk_moments(x, torch.float64, scratch)
        assert res is not None, "finite float64 moments overflowed"
    lo, hi = torch.aminmax(x)
    n, mean, m2, m3, m4 = res
    return Moments(int(n), mean, m2, m3, m4, float(lo), float(hi), zeros, nan, inf)


def tensor_moments(tensor: torch.Tensor, device: torch.device | str | None = None, chunk: int | None = None) -> Moments:
    """Moments of all values of ``tensor``, chunk by chunk on ``device`` (default: the tensor's).

    Example:
        >>> m = tensor_moments(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> m.mean, m.var
        (2.5, 1.25)
    """
    dev = torch.device(device) if device is not None else tensor.device
    step = chunk or (CUDA_CHUNK if dev.type == "cuda" else CPU_CHUNK)
    flat = tensor.detach().reshape(-1)
    compute = torch.float64 if flat.dtype == torch.float64 or not flat.dtype.is_floating_point else torch.float32
    scratch = _Scratch(min(step, max(flat.numel(), 1)), compute, dev)
    total = Moments()
    for part in flat.split(step):
        total = total.merge(chunk_moments(part.to(dev, non_blocking=True), scratch))
    return total


def tensor_scope(tensor: torch.Tensor, device: torch.device | str | None = None) -> Scope:
    """The weight scope ``N(mean, std^2)`` of a tensor (population std, finite values, float64).

    Example:
        >>> tensor_scope(torch.tensor([1.0, 3.0]))
        Scope(mean=2.0, std=1.0)
    """
    m = tensor_moments(tensor, device)
    return Scope(m.mean, math.sqrt(m.var))


@dataclass(frozen=True)
class TensorStats:
    """Everything ``wsa inspect`` reports for one tensor. ``None`` marks an undefined value."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    is_layer: bool
    numel: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    zero_fraction: float
    nan_count: int
    inf_count: int
    skewness: float | None
    excess_kurtosis: float | None

    @property
    def scope(self) -> Scope:
        return Scope(self.mean or 0.0, self.std or 0.0)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def stats_from_moments(
    key: str, shape: Sequence[int], dtype: torch.dtype, kind: str, is_layer: bool, m: Moments
) -> TensorStats:
    """Turn accumulated moments into the reported statistics (no division by zero anywhere)."""
    numel = 1
    for s in shape:
        numel *= int(s)
    var = m.var
    defined = m.n > 0
    shaped = defined and var > 0 and m.n > 1
    skew = (m.m3 / m.n) / var**1.5 if shaped else None
    kurt = (m.m4 / m.n) / (var * var) - 3.0 if shaped else None
    return TensorStats(
        key=key,
        shape=tuple(int(s) for s in shape),
        dtype=str(dtype).removeprefix("torch."),
        kind=kind,
        is_layer=is_layer,
        numel=numel,
        mean=m.mean if defined else None,
        std=math.sqrt(var) if defined else None,
        min=m.min if defined else None,
        max=m.max if defined else None,
        zero_fraction=m.zeros / numel if numel else 0.0,
        nan_count=m.nan,
        inf_count=m.inf,
        skewness=skew,
        excess_kurtosis=kurt,
    )
