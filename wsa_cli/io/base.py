"""The reader interface every checkpoint format implements.

A reader is lazy: opening one parses headers only; :meth:`CheckpointReader.info` answers shape
and dtype without touching tensor data; :meth:`CheckpointReader.get` loads one tensor. Merge,
inspect and interpolate only ever use this interface, so a new format is one new reader.
"""

from __future__ import annotations

import abc
import errno
import mmap
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch

from wsa_cli.errors import CheckpointError


def numel(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of this shape (1 for a scalar).

    Example:
        >>> numel((4, 3)), numel(())
        (12, 1)
    """
    n = 1
    for d in shape:
        n *= int(d)
    return n


#: C++ file errors (torch, safetensors' torch backend) end in "(errno)": "unable to open file <m.pt> ...: Too many open files (24)"
_CXX_ERRNO = re.compile(r"\((\d+)\)\s*$")


def errno_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` inside a C++ ``RuntimeError`` that names an errno, or None.

    Example:
        >>> errno_error(RuntimeError("unable to open file <m.pt>: Too many open files (24)")).errno
        24
    """
    found = _CXX_ERRNO.search(str(exc))
    if found is None or int(found.group(1)) not in errno.errorcode:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one stored tensor, known without loading it.

    Example:
        >>> TensorInfo("fc.weight", (10, 4), torch.float16).nbytes
        80
    """

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return numel(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class CheckpointReader(abc.ABC):
    """Lazy, read-only view of one model's tensors (one file, a folder, or a set of shards).

    Subclasses fill ``_infos`` (key -> :class:`TensorInfo`, in storage order) in ``__init__`` and
    implement :meth:`_load`, which receives the tensor's info under its *stored* key (keys may be
    renamed afterwards by :meth:`strip_key_prefix`). Use as a context manager so file handles are released.
    """

    #: Short name of the on-disk format, e.g. ``safetensors`` or ``torch``.
    format_name: str = "?"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._infos: dict[str, TensorInfo] = {}
        #: ``__metadata__`` of safetensors files, or a container's non-tensor scalars.
        self.metadata: dict[str, str] = {}
        #: Entries that were found but are not tensors (key -> reason); reported, never fatal.
        self.skipped: dict[str, str] = {}
        #: Public key -> key as stored, for keys renamed by :meth:`strip_key_prefix`.
        self._stored: dict[str, str] = {}

    # -- interface ---------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Tensor names in storage order."""
        return list(self._infos)

    def info(self, key: str) -> TensorInfo:
        """Shape and dtype of ``key`` without reading its data."""
        try:
            return self._infos[key]
        except KeyError:
            raise CheckpointError("no such tensor in this checkpoint", path=self.path, key=key) from None

    def infos(self) -> list[TensorInfo]:
        return list(self._infos.values())

    def get(self, key: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Load one tensor onto the CPU, with its stored dtype.

        ``out``: an optional ``uint8`` buffer of at least ``info(key).nbytes`` bytes. Readers that
        copy from disk fill it instead of allocating (a scan reusing two buffers avoids a page
        fault per 4 KiB of every tensor); the result then aliases ``out``. Readers that already
        hold the tensor (pickles) ignore it.
        """
        info = self.info(key)  # raises a clear error for unknown keys
        stored = self._stored.get(key, key)
        if out is not None:
            if out.dtype != torch.uint8 or out.numel() < info.nbytes or out.device.type != "cpu":
                raise ValueError(f"out must be a CPU uint8 buffer of >= {info.nbytes} bytes")
            return self._load_into(TensorInfo(stored, info.shape, info.dtype), out)
        return self._load(TensorInfo(stored, info.shape, info.dtype))

    def view(self, key: str) -> torch.Tensor:
        """One tensor without a copy where the format allows it (a memory-mapped safetensors file).

        The result aliases the file's pages: never write to it, and call :meth:`release` when
        done with it so that the process does not keep those pages mapped (a full pass over a
        model would otherwise grow to the model's size). Other formats return :meth:`get`.
        """
        return self._view(self._stored_info(key))

    def will_need(self, key: str) -> None:
        """Hint that :meth:`view` of ``key`` comes soon: the OS starts reading it from disk."""
        self._advise(self._stored_info(key), getattr(mmap, "MADV_WILLNEED", -1), None)

    def release(self, key: str, upto: int | None = None) -> None:
        """Unmap the pages of a :meth:`view` of ``key`` (the data stays in the OS page cache).

        ``upto``: only the tensor's first ``upto`` bytes (a pass that has read that far and will
        not come back), so a long pass over one large tensor holds a window of it, not all of it.
        """
        self._advise(self._stored_info(key), getattr(mmap, "MADV_DONTNEED", -1), upto)

    def _stored_info(self, key: str) -> TensorInfo:
        info = self.info(key)
        return TensorInfo(self._stored.get(key, key), info.shape, info.dtype)

    def strip_key_prefix(self, prefix: str, *, required: bool) -> None:
        """Remove ``prefix`` from every key (``module.`` from DDP, ``model.`` from Lightning).

        With ``required`` a key without the prefix is an error naming it; without, nothing changes
        unless every key has the prefix. Keys that would collide or become empty are an error.
        """
        keys = list(self._infos)
        missing = next((k for k in keys if not k.startswith(prefix)), None)
        if missing is not None:
            if required:
                raise CheckpointError(f"the key does not start with the prefix {prefix!r} to strip", path=self.path, key=missing)
            return
        renamed: dict[str, TensorInfo] = {}
        for key in keys:
            new = key[len(prefix) :]
            if not new or new in renamed:
                raise CheckpointError(f"removing the prefix {prefix!r} leaves an empty or duplicate key", path=self.path, key=key)
            info = self._infos[key]
            renamed[new] = TensorInfo(new, info.shape, info.dtype)
            self._stored[new] = self._stored.pop(key, key)
        self._infos = renamed

    def _load_into(self, info: TensorInfo, out: torch.Tensor) -> torch.Tensor:
        """Hook for readers that can read into a caller's buffer; default: plain load."""
        return self._load(info)

    def _view(self, info: TensorInfo) -> torch.Tensor:
        """Hook for readers that can map a tensor without copying it; default: plain load."""
        return self._load(info)

    def _advise(self, info: TensorInfo, advice: int, upto: int | None) -> None:
        """Hook: ``madvise`` a mapped tensor's pages (its first ``upto`` bytes; ``advice`` -1: unsupported here); default: nothing."""

    def files(self) -> list[Path]:
        """The files that hold this checkpoint's tensors (used for provenance and overwrite checks)."""
        return [self.path]

    def extra_files(self) -> list[Path]:
        """Non-tensor files that travel with the model (config, tokenizer); empty for a lone file."""
        return []

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def close(self) -> None:
        """Release file handles. Safe to call twice."""

    # -- implementation hook -----------------------------------------------------------------
    @abc.abstractmethod
    def _load(self, info: TensorInfo) -> torch.Tensor:
        """Read one tensor; ``info.key`` is the key as stored in the file."""

    # -- conveniences ------------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} ({len(self)} tensors)>"

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Load every tensor (small models only; merge and inspect stream instead)."""
        return {k: self.get(k) for k in self._infos}
