"""Per-tensor scope statistics, chunked so that memory stays bounded for very large tensors.

Conventions (stated once, used everywhere):

* ``std`` is the *population* standard deviation (divide by n, ``correction=0``);
* skewness is ``m3 / m2**1.5`` and excess kurtosis ``m4 / m2**2 - 3`` (population moments; 0 and
  0 for a Gaussian); both are ``None`` for a constant tensor (undefined, no division by zero);
* moments are taken over the finite values only; NaN and Inf are counted, never fatal;
* ``zero_fraction`` counts exact zeros over all values.

Numerics: each chunk (``CPU_CHUNK`` elements; 2 MiB of float64, so the passes below stay in
cache) is copied to float64, centred on its own mean, and its central power sums are reduced in
float64 (sums and float64 dot products: products and accumulation both in float64). Chunks are
combined with the pairwise update of Chan et al. / Pébay (2008), exact in exact arithmetic and
free of the cancellation of raw power sums. :func:`tensor_scope` (mean and std only, what merges
measure for every layer) uses the cheaper ``sum x`` / ``sum x^2`` form per chunk
(:class:`RunningScope`) and centres a chunk only when that form would cancel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from wsa_cli.io.dtypes import dtype_name
from wsa_cli.scope.gaussian import Scope

#: Elements per chunk on the CPU: 2 MiB of float64 stays in cache across the passes below.
CPU_CHUNK = 1 << 18
#: Elements per chunk on CUDA, where launches, not cache, dominate.
CUDA_CHUNK = 1 << 24
#: Elements per block of the two-sum scope (:func:`tensor_scope`, the merge kernel) on the CPU:
#: 4 MiB of float64 stays in the last-level cache, and blocks this large keep the per-call
#: overhead of the few kernels per block small (measured 1.3x faster than 2^18 on a 2-core VM).
SCOPE_CHUNK = 1 << 19
#: The same on CUDA.
SCOPE_CHUNK_CUDA = CUDA_CHUNK


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
    """Two reusable float64 chunk buffers, so the per-chunk temporaries allocate (and page-fault) once."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.x = torch.empty(size, dtype=torch.float64, device=device)
        self.sq = torch.empty(size, dtype=torch.float64, device=device)

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.x.numel() < n:
            self.__init__(n, self.x.device)  # type: ignore[misc]
        return self.x[:n], self.sq[:n]


def _centred_sums(x: torch.Tensor, sq: torch.Tensor) -> tuple[float, float, float, float]:
    """(mean, M2, M3, M4) of the float64 chunk ``x``, which is centred in place."""
    mean = float(x.sum()) / x.numel()
    x.sub_(mean)  # (n,) deviations from the chunk mean
    torch.mul(x, x, out=sq)
    return mean, float(sq.sum()), float(torch.dot(sq, x)), float(torch.dot(sq, sq))


def chunk_moments(chunk: torch.Tensor, scratch: _Scratch | None = None) -> Moments:
    """Moments of one flat chunk (any dtype; bool/int as numbers), finite values only."""
    numel = chunk.numel()
    if numel == 0:
        return Moments()
    scratch = scratch or _Scratch(numel, chunk.device)
    x, sq = scratch.take(numel)
    x.copy_(chunk)  # (n,) float64 copy: the caller's tensor is never modified
    # narrower reads when the dtype allows; float8 kinds lack count_nonzero/aminmax kernels: use the copy
    src = chunk if chunk.dtype.is_floating_point and chunk.dtype.itemsize >= 2 else x
    zeros = numel - int(torch.count_nonzero(src))
    lo, hi = torch.aminmax(src)
    nan = inf = 0
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):  # NaN or Inf present
        finite = torch.isfinite(x)
        nan = int(torch.isnan(x).sum())
        inf = numel - nan - int(finite.sum())
        kept = x[finite]
        if kept.numel() == 0:
            return Moments(zeros=zeros, nan=nan, inf=inf)
        x, sq = scratch.take(kept.numel())
        x.copy_(kept)
        lo, hi = torch.aminmax(x)
    mean, m2, m3, m4 = _centred_sums(x, sq)
    return Moments(x.numel(), mean, m2, m3, m4, float(lo), float(hi), zeros, nan, inf)


def _chunk_size(device: torch.device, chunk: int | None) -> int:
    return chunk or (CUDA_CHUNK if device.type == "cuda" else CPU_CHUNK)


def tensor_moments(tensor: torch.Tensor, device: torch.device | str | None = None, chunk: int | None = None) -> Moments:
    """Moments of all values of ``tensor``, chunk by chunk on ``device`` (default: the tensor's).

    Example:
        >>> m = tensor_moments(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> m.mean, m.var
        (2.5, 1.25)
    """
    dev = torch.device(device) if device is not None else tensor.device
    step = _chunk_size(dev, chunk)
    flat = tensor.detach().reshape(-1)
    scratch = _Scratch(min(step, max(flat.numel(), 1)), dev)
    total = Moments()
    for part in flat.split(step):
        total = total.merge(chunk_moments(part.to(dev, non_blocking=True), scratch))
    return total


class RunningScope:
    """Mean and ``M2`` of the finite values seen so far, fed one float64 block at a time.

    Each block is reduced to ``sum x`` and ``sum x^2`` (float64 products and accumulators),
    ``M2 = sum x^2 - (sum x)^2 / n``; when that would cancel (``M2 < 1e-4 sum x^2``: a mean far
    from 0 relative to the spread) the block is centred and its squares summed again. Blocks are
    combined with Chan et al.'s pairwise update. A block holding NaN/Inf is reduced over its
    finite values only (:func:`chunk_moments`). What :func:`tensor_scope` and the merge kernel
    (:mod:`wsa_cli.merge.kernel`) share.

    Example:
        >>> acc = RunningScope()
        >>> acc.add_(torch.tensor([1.0, 3.0], dtype=torch.float64))
        >>> acc.scope()
        Scope(mean=2.0, std=1.0)
    """

    __slots__ = ("m2", "mean", "n")

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add_(self, x: torch.Tensor) -> None:
        """Fold in a flat float64 block; the block may be overwritten (it is scratch)."""
        nb = x.numel()
        if nb == 0:
            return
        s1, s2 = float(x.sum()), float(torch.dot(x, x))
        if math.isfinite(s1) and math.isfinite(s2):
            mb = s1 / nb
            m2b = s2 - s1 * mb
            if m2b < 1e-4 * s2:  # |mean| >> std: the one-pass difference cancels; centre and redo
                x.sub_(mb)
                m2b = float(torch.dot(x, x))
        else:  # NaN/Inf present (or squares past float64's range): exact moments of the finite values
            m = chunk_moments(x)
            nb, mb, m2b = m.n, m.mean, m.m2
            if nb == 0:
                return
        delta, total = mb - self.mean, self.n + nb
        self.mean += delta * nb / total
        self.m2 += m2b + delta * delta * self.n * nb / total
        self.n = total

    def scope(self) -> Scope:
        """``N(mean, std^2)`` with the population std; ``Scope(0, 0)`` when no finite value was seen."""
        return Scope(self.mean, math.sqrt(max(self.m2 / self.n, 0.0))) if self.n else Scope(0.0, 0.0)


def tensor_scope(
    tensor: torch.Tensor,
    device: torch.device | str | None = None,
    chunk: int | None = None,
    *,
    buffer: torch.Tensor | None = None,
) -> Scope:
    """The weight scope ``N(mean, std^2)`` of a tensor: population std over finite values, float64.

    The fast path used for every layer of every model in a merge: chunk by chunk, each copied to
    float64 and folded into a :class:`RunningScope`. Agrees with :func:`tensor_moments` to ~1e-12
    relative. ``buffer``: a reusable float64 scratch on ``device`` (any size; grown as needed),
    so that a caller measuring many tensors does not allocate and page-fault one per call.
    Never modifies its input.

    Example:
        >>> tensor_scope(torch.tensor([1.0, 3.0]))
        Scope(mean=2.0, std=1.0)
    """
    dev = torch.device(device) if device is not None else tensor.device
    step = chunk or (SCOPE_CHUNK_CUDA if dev.type == "cuda" else SCOPE_CHUNK)
    flat = tensor.detach().reshape(-1)
    want = min(step, flat.numel())
    if buffer is None or buffer.numel() < want or buffer.dtype != torch.float64 or buffer.device != dev:
        buffer = torch.empty(max(want, 1), dtype=torch.float64, device=dev)
    acc = RunningScope()
    for part in flat.split(step):
        x = buffer[: part.numel()]
        x.copy_(part.to(dev, non_blocking=True))  # (nb,) float64
        acc.add_(x)
    return acc.scope()


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
        dtype=dtype_name(dtype),
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
