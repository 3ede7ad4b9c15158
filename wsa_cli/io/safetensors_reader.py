"""Lazy readers for ``.safetensors`` files and Hugging Face sharded folders (index + shards).

``safe_open`` validates each file's header (dtypes, shapes, offsets that cover the file). Tensor
data is then read in one of two ways:

* :meth:`~CheckpointReader.get`: ``os.preadv`` straight into a fresh tensor or the caller's
  buffer (a copy out of the page cache; what inspect, interpolate and CUDA merges use);
* :meth:`~CheckpointReader.view`: a zero-copy view into a private memory map of the file (what
  CPU merges use: the merge reads the page cache directly, no copy). ``safe_open``'s own map
  would keep every page read so far mapped, so the memory of a full pass would grow with the
  model; here :meth:`~CheckpointReader.release` unmaps a tensor's pages once it has been merged,
  so the process holds a few tensors, never the model.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from wsa_cli.errors import CheckpointError, InputNotFoundError
from wsa_cli.inputs import check_input, os_error
from wsa_cli.io.base import CheckpointReader, TensorInfo, errno_error
from wsa_cli.io.dtypes import TAG_TO_DTYPE


#: safetensors refuses headers larger than this; so do we, before reading one into memory
_MAX_HEADER = 100_000_000


class _PairsHook:
    """``object_pairs_hook`` that notes keys given twice (``json.loads`` alone keeps the last one).

    JSON objects are built innermost first, so the last object built is the header itself: a
    duplicate there is a tensor key, one in an earlier object a field of an entry.
    """

    def __init__(self) -> None:
        self.objects = 0
        self.duplicates: list[tuple[int, str]] = []  # (object number, key)

    def __call__(self, pairs: list[tuple[str, object]]) -> dict[str, object]:
        self.objects += 1
        out: dict[str, object] = {}
        for key, value in pairs:
            if key in out:
                self.duplicates.append((self.objects, key))
            out[key] = value
        return out


def _read_header(path: Path) -> tuple[int, dict] | None:
    """(offset of the tensor data, parsed JSON header), or None where it is malformed (``safe_open`` then says how).

    Parsed here first because ``safe_open`` keeps the last of two entries with the same key: such
    a file is ambiguous (two readers may disagree on what it holds), so it is refused, naming the key.
    """
    check_input(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise os_error(exc, path) from None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 8, 0)
        n = int.from_bytes(head, "little")
        if len(head) < 8 or n > min(size - 8, _MAX_HEADER):
            return None
        raw = os.pread(fd, n, 8)
    except OSError as exc:
        raise os_error(exc, path) from None
    finally:
        os.close(fd)
    hook = _PairsHook()
    try:
        header = json.loads(raw, object_pairs_hook=hook)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError), or nested too deep
        return None
    for number, key in hook.duplicates:
        if number == hook.objects:
            raise CheckpointError("appears twice in the safetensors header; refusing an ambiguous file", path=path, key=key)
        raise CheckpointError(f"safetensors header has the field {key!r} twice in one entry; refusing an ambiguous file", path=path)
    return (8 + n, header) if isinstance(header, dict) else None


def _open(path: Path):  # noqa: ANN202 - safetensors' handle type is private
    """``safe_open`` the file after our own checks; return (its handle, a :class:`_DataFile` of it)."""
    parsed = _read_header(path)
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except FileNotFoundError:
        raise InputNotFoundError("file not found", path=path) from None
    except SafetensorError as exc:
        msg = str(exc).replace("Error while deserializing header: ", "")
        raise CheckpointError(f"corrupt or truncated safetensors file ({msg})", path=path) from None
    except OSError as exc:
        raise os_error(exc, path) from None
    except RuntimeError as exc:  # the torch backend opens the file in C++: EMFILE comes as text
        cause = errno_error(exc)
        if cause is None:
            raise CheckpointError(f"cannot read safetensors file ({str(exc).strip()})", path=path) from None
        raise os_error(cause, path) from None
    if parsed is None:  # safe_open accepted what json could not parse: never seen, but not a crash
        raise CheckpointError("corrupt safetensors header (not a JSON object)", path=path)
    return handle, _DataFile(path, *parsed)


class _DataFile:
    """Byte offsets of every tensor in one safetensors file; positioned reads and mapped views of them."""

    def __init__(self, path: Path, base: int, header: dict) -> None:
        self.path = path
        self.fd = -1  # set first: __del__ -> close() runs even when the open below fails
        self._map: mmap.mmap | None = None
        self._bytes: torch.Tensor | None = None  # (file size,) uint8 over the map
        # validated by safe_open; `base`: where the tensor data starts
        self.offsets = {k: (base + v["data_offsets"][0], base + v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"}
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise os_error(exc, path) from None

    def read(self, info: TensorInfo, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor, into ``buffer`` (a uint8 tensor of >= nbytes) when given."""
        start, end = self.offsets[info.key]
        if buffer is None:
            out = torch.empty(info.shape, dtype=info.dtype)
            raw = out.reshape(-1).view(torch.uint8)
        else:
            raw = buffer[: info.nbytes]
            out = raw.view(info.dtype).reshape(info.shape) if info.nbytes else torch.empty(info.shape, dtype=info.dtype)
        view = memoryview(raw.numpy())  # (nbytes,) aliasing `out`
        if len(view) != end - start:
            raise CheckpointError(f"header says {end - start} bytes, shape/dtype need {len(view)}", path=self.path, key=info.key)
        done = 0
        while done < len(view):
            try:
                got = os.preadv(self.fd, [view[done:]], start + done)
            except OSError as exc:  # EIO from a failing disk or a vanished network share
                raise os_error(exc, self.path, key=info.key) from None
            if got <= 0:
                raise CheckpointError("file ended inside tensor data (truncated?)", path=self.path, key=info.key)
            done += got
        return out

    def view(self, info: TensorInfo) -> torch.Tensor:
        """One tensor as a view into the file's memory map (no copy), or a read when it cannot be one."""
        start, end = self.offsets[info.key]
        if end - start != info.nbytes:
            raise CheckpointError(f"header says {end - start} bytes, shape/dtype need {info.nbytes}", path=self.path, key=info.key)
        if info.nbytes == 0 or start % info.dtype.itemsize:  # empty, or not aligned for its dtype: copy
            return self.read(info)
        return self._mapped()[start:end].view(info.dtype).reshape(info.shape)

    def _mapped(self) -> torch.Tensor:
        if self._bytes is None:
            try:
                size = os.fstat(self.fd).st_size
                if max((e for _, e in self.offsets.values()), default=0) > size:
                    raise CheckpointError("file ended inside tensor data (truncated?)", path=self.path)
                # private and copy-on-write: never written, but torch wants a writable buffer
                self._map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_COPY)  # dups the fd: may hit EMFILE
            except OSError as exc:
                raise os_error(exc, self.path) from None
            self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)
        return self._bytes

    def advise(self, info: TensorInfo, advice: int, upto: int | None = None) -> None:
        """``madvise`` the whole pages inside one tensor's bytes, or its first ``upto`` bytes (no-op where unsupported or unmapped)."""
        if advice < 0 or self._map is None or not hasattr(self._map, "madvise"):
            return
        start, end = self.offsets[info.key]
        if upto is not None:
            end = min(end, start + max(upto, 0))
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, end // page * page  # only pages wholly inside the tensor
        if last > first:
            self._map.madvise(advice, first, last - first)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        # never mmap.close(): views hold a reference to the map (torch.frombuffer), not a buffer
        # export, so closing it would unmap pages they still point to. Dropping our references
        # unmaps it when the last view is gone.
        self._bytes = None
        self._map = None

    def __del__(self) -> None:  # a reader used without `with` still releases its descriptor
        self.close()


def _infos_of(handle, path: Path) -> dict[str, TensorInfo]:  # noqa: ANN001
    infos: dict[str, TensorInfo] = {}
    for key in handle.keys():  # noqa: SIM118 - a safe_open handle is not iterable
        sl = handle.get_slice(key)
        tag = sl.get_dtype()
        if tag not in TAG_TO_DTYPE:
            raise CheckpointError(f"dtype {tag} is not supported by this torch build", path=path, key=key)
        infos[key] = TensorInfo(key, tuple(int(d) for d in sl.get_shape()), TAG_TO_DTYPE[tag])
    return infos


class SafetensorsReader(CheckpointReader):
    """One ``.safetensors`` file, read through ``safe_open`` (memory-mapped, one tensor at a time).

    Example:
        >>> with SafetensorsReader("model.safetensors") as r:  # doctest: +SKIP
        ...     w = r.get("fc.weight")
    """

    format_name = "safetensors"

    def __init__(self, path: str | Path, *, extra_files: list[Path] | None = None) -> None:
        super().__init__(path)
        handle, self._data = _open(self.path)  # validates the header; dropped right away (see module docstring)
        try:
            self._infos = _infos_of(handle, self.path)
            self.metadata = dict(handle.metadata() or {})
        except BaseException:
            self._data.close()
            raise
        del handle
        self._extra = list(extra_files or [])

    def _load(self, info: TensorInfo) -> torch.Tensor:
        return self._data.read(info)

    def _load_into(self, info: TensorInfo, out: torch.Tensor) -> torch.Tensor:
        return self._data.read(info, out)

    def _view(self, info: TensorInfo) -> torch.Tensor:
        return self._data.view(info)

    def _advise(self, info: TensorInfo, advice: int, upto: int | None) -> None:
        self._data.advise(info, advice, upto)

    def extra_files(self) -> list[Path]:
        return list(self._extra)

    def close(self) -> None:
        self._data.close()


class ShardedSafetensorsReader(CheckpointReader):
    """A model split over several ``.safetensors`` shards.

    Built either from a Hugging Face ``*.safetensors.index.json`` (``weight_map``: key -> shard
    file) or from a folder of shards without an index (keys must then be disjoint).
    """

    format_name = "safetensors-sharded"

    def __init__(
        self,
        path: str | Path,
        shards: list[Path],
        *,
        weight_map: dict[str, str] | None = None,
        index_path: Path | None = None,
        extra_files: list[Path] | None = None,
    ) -> None:
        super().__init__(path)
        self._shards = shards
        self._data: dict[Path, _DataFile] = {}
        self._owner: dict[str, Path] = {}
        try:
            self._read_shards(shards, weight_map, index_path)
        except BaseException:
            self.close()  # the shards opened so far; with many models, leaked descriptors add up
            raise
        self._extra = list(extra_files or [])

    def _read_shards(self, shards: list[Path], weight_map: dict[str, str] | None, index_path: Path | None) -> None:
        """Open every shard and check the index against what they hold."""
        path = self.path
        for shard in shards:
            handle, self._data[shard] = _open(shard)
            for key, info in _infos_of(handle, shard).items():
                if key in self._owner:
                    raise CheckpointError(
                        f"tensor stored in two shards ({self._owner[key].name} and {shard.name})", path=path, key=key
                    )
                self._owner[key] = shard
                self._infos[key] = info
            self.metadata.update(handle.metadata() or {})
        if weight_map is not None:
            where = index_path or self.path
            for key, fname in weight_map.items():
                if key not in self._owner:
                    raise CheckpointError(f"index lists a tensor that shard {fname!r} does not hold", path=where, key=key)
                if self._owner[key].name != Path(fname).name:
                    raise CheckpointError(
                        f"index says shard {fname!r} but the tensor is in {self._owner[key].name!r}", path=where, key=key
                    )
            missing = [k for k in self._owner if k not in weight_map]
            if missing:
                raise CheckpointError(f"{len(missing)} tensor(s) missing from the index", path=where, key=missing[0])

    def _load(self, info: TensorInfo) -> torch.Tensor:
        return self._data[self._owner[info.key]].read(info)

    def _load_into(self, info: TensorInfo, out: torch.Tensor) -> torch.Tensor:
        return self._data[self._owner[info.key]].read(info, out)

    def _view(self, info: TensorInfo) -> torch.Tensor:
        return self._data[self._owner[info.key]].view(info)

    def _advise(self, info: TensorInfo, advice: int, upto: int | None) -> None:
        self._data[self._owner[info.key]].advise(info, advice, upto)

    def files(self) -> list[Path]:
        return list(self._shards)

    def extra_files(self) -> list[Path]:
        return list(self._extra)

    def close(self) -> None:
        for data in self._data.values():
            data.close()


def read_index(index_path: Path) -> tuple[list[Path], dict[str, str]]:
    """Parse a Hugging Face ``*.index.json``; return (shard paths, weight_map)."""
    check_input(index_path)
    try:
        data = json.loads(index_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise os_error(exc, index_path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"index is not valid JSON ({exc})", path=index_path) from None
    except RecursionError:
        raise CheckpointError("index is not valid JSON (nested too deeply)", path=index_path) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError("index has no 'weight_map' object", path=index_path)
    shards: list[Path] = []
    for key, fname in weight_map.items():
        if not isinstance(fname, str) or not fname or "\0" in fname:
            raise CheckpointError("weight_map values must be file names", path=index_path, key=key)
        # Only files inside the model folder: an index must not make wsa read (and a merge copy or
        # report) ../other/model.safetensors or /etc/x. Checked on the text, not the resolved
        # path, because the Hugging Face cache symlinks every shard into its blobs/ folder.
        relative = Path(fname)
        if relative.is_absolute() or relative.anchor or ".." in relative.parts:
            raise CheckpointError(f"shard {fname!r} is outside the model folder; refusing it", path=index_path, key=key)
        shard = index_path.parent / relative
        try:
            check_input(shard)
        except InputNotFoundError:
            raise InputNotFoundError(f"shard {fname!r} named in the index does not exist", path=index_path, key=key) from None
        if not shard.is_file():
            raise CheckpointError(f"shard {fname!r} named in the index is a folder", path=index_path, key=key)
        if shard not in shards:
            shards.append(shard)
    return shards, {str(k): str(v) for k, v in weight_map.items()}
