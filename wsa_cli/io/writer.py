"""Atomic, streaming safetensors output (single file or Hugging Face shards) and output guards.

Why a writer of our own: ``safetensors.torch.save_file`` needs every tensor in memory at once.
The safetensors format is an 8-byte little-endian header length, a JSON header with each
tensor's dtype, shape and byte offsets, then the raw bytes. A merge plan knows every output
shape and dtype before computing anything, so the header is written first and tensors are then
streamed one at a time: peak memory is one tensor, not one model. Files read back with plain
``safetensors``.

Atomicity: everything is written under a temporary name in the target's own folder and moved
into place with ``os.replace`` only when complete; an error or Ctrl-C removes the temporary
files and leaves no output. Each file is fsynced before the rename (so a crash cannot leave a
renamed but empty model); to keep that final fsync short, a background thread flushes every
:data:`FLUSH_BYTES` written while the rest is still being produced.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

from wsa_cli.errors import InvalidValueError, OutputError
from wsa_cli.io.base import TensorInfo
from wsa_cli.io.dtypes import DTYPE_TO_TAG
from wsa_cli.io.open import MERGE_REPORT_NAME
from wsa_cli.io.torch_reader import TORCH_SUFFIXES

SINGLE_FILE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
#: Bytes written between background ``fdatasync`` calls: the disk works while tensors are still
#: merged, instead of all at once before the rename.
FLUSH_BYTES = 256 << 20
_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def _refuse_pickle_name(out: Path) -> None:
    if out.suffix in TORCH_SUFFIXES:  # would silently become a folder of that name
        raise InvalidValueError(f"output {out}: wsa writes safetensors; name a .safetensors file or a folder (no suffix)")


def check_output(out: str | Path, inputs: Iterable[str | Path] = (), *, force: bool = False) -> Path:
    """Refuse an output that is an input, contains one or lies inside an input model's folder, an
    existing output without ``force``, and a name of the wrong kind (see :func:`check_outputs` and
    :func:`check_output_kind`, which it combines for one path).

    Example:
        >>> check_output("merged.safetensors", ["a.safetensors"], force=True)  # doctest: +SKIP
        PosixPath('merged.safetensors')
    """
    out_path = Path(out)
    _refuse_pickle_name(out_path)  # before any long computation (training) rather than at write time
    check_outputs([out_path], inputs, force=force)
    return check_output_kind(out_path)


def check_output_kind(out: str | Path) -> Path:
    """Refuse an output whose existing entry is of the other kind (file vs folder), or whose nearest
    existing parent is a file; missing folders are created when writing."""
    out_path = Path(out)
    _refuse_pickle_name(out_path)
    if out_path.exists() and out_path.is_dir() != (out_path.suffix == ""):
        raise OutputError("output exists and is of the other kind (file vs folder)", path=out_path)
    existing = next(p for p in out_path.resolve().parents if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{existing} is a file, not a folder", path=out_path)
    return out_path


def check_outputs(
    paths: Iterable[str | Path], inputs: Iterable[str | Path] = (), *, force: bool = False, output: str | Path | None = None
) -> list[Path]:
    """The one output check: refuse, before any work, every path a run would create, replace or delete.

    ``paths`` are all of them (model, shards, index, report, stage temporaries); ``inputs`` the
    files and folders read. Refused (:class:`OutputError`, exit 7, naming the path): a path that is
    an input, lies inside an input model's folder, or is a folder holding an input (even with
    ``force``); an existing path without ``force``. ``output``: the path messages name for the
    whole run (default: each path itself).

    Example:
        >>> check_outputs(["m.safetensors", "m.wsa-merge-report.json"], ["a.safetensors"], force=True)  # doctest: +SKIP
        [PosixPath('m.safetensors'), PosixPath('m.wsa-merge-report.json')]
    """
    srcs = [(Path(i), Path(i).resolve()) for i in inputs]
    folders = [(shown, src) for shown, src in srcs if src.is_dir()]  # a model folder: nothing may be added to it
    checked = []
    for raw in paths:
        p = Path(raw)
        target = p.resolve()
        for shown, src in srcs:
            if src == target or target in src.parents:
                raise OutputError(f"output would overwrite input {shown}; choose another output path", path=p)
        for shown, src in folders:
            if src in target.parents:
                raise OutputError(f"lies inside the input model folder {shown} (the model would no longer load); "
                                  "choose another output path", path=p)  # fmt: skip
        if os.path.lexists(p) and not force:
            what = "output exists" if output is None or Path(output) == p else f"exists (written by this run next to {output})"
            raise OutputError(what + "; pass {opt:force} to replace it", path=p)
        checked.append(p)
    return checked


#: Temporary names carry ``wsa-PID@HOST`` so a later run can tell a dead run's leftovers from a live one's.
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:6]
_ORPHAN = re.compile(r"^\..*\.wsa-(\d+)@([0-9a-f]{6})\..*\.wsa-(?:tmp|old)(?:\.[^.]*)?$")


def temp_tag() -> str:
    """The part of a temporary name that says which process made it (``wsa-PID@HOST``)."""
    return f"wsa-{os.getpid()}@{_HOST}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(folder: str | Path) -> list[Path]:
    """Remove wsa temporaries in ``folder`` left by dead processes of this host; return what was removed.

    A run killed by ``SIGKILL`` or a power cut cannot clean up; its temporaries are named after its
    pid and host, so the next run writing into the same folder removes them. A live process's
    temporaries (and other hosts', on a shared disk) are never touched.

    Example:
        >>> remove_orphans(".")  # doctest: +SKIP
        []
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _ORPHAN.match(entry.name)
        if m is None or m.group(2) != _HOST or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not os.path.lexists(path):
            removed.append(path)
    return removed


def _mkdtemp(out: Path, suffix: str = ".wsa-tmp") -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{temp_tag()}.", suffix=suffix, dir=out.parent))


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C, TERM and HUP while a few renames make one unit; they are delivered after it."""
    held = {signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _place_new(src: Path, dst: Path) -> None:
    """Move file ``src`` to ``dst`` only if ``dst`` does not exist, without a race (the commit-time check)."""
    try:
        os.link(src, dst)  # fails if dst exists, even if another run created it a moment ago
    except FileExistsError:
        raise OutputError("output appeared while this run was writing (another run?); "
                          "nothing was replaced; pass {opt:force} to replace it", path=dst) from None  # fmt: skip
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        try:  # no hard links here (FAT, some network disks): claim the name exclusively, then fill it
            os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise OutputError("output appeared while this run was writing (another run?); "
                              "nothing was replaced; pass {opt:force} to replace it", path=dst) from None  # fmt: skip
        os.replace(src, dst)
        return
    os.unlink(src)


def _default_mode(directory: bool = False) -> int:
    """Permissions a plain ``open()`` / ``mkdir()`` would give under the current umask.

    ``mkstemp``/``mkdtemp`` create private (0600/0700) entries; outputs get the usual ones.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def writing(out: str | Path) -> Iterator[None]:
    """Turn an OS failure while creating or filling an output into :class:`OutputError` (exit 7).

    A folder that cannot be created, a read-only or full disk: the user's output path is at fault,
    not wsa (which would otherwise report an internal error, exit 70).

    Example:
        >>> with writing("out.json"):  # doctest: +SKIP
        ...     Path("out.json").write_text("{}")
    """
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write the output ({exc.strerror or exc})", path=out) from exc


@contextmanager
def staged_output(out: str | Path, *, directory: bool = False, force: bool = True) -> Iterator[Path]:
    """Yield a temporary file (or folder) next to ``out``; it replaces ``out`` only if the block succeeds.

    The one atomic-output mechanism for files that are not streamed safetensors (plots, reports,
    folders of aligned models): an error or Ctrl-C inside the block removes the temporary and
    leaves ``out`` as it was. The result gets ordinary (umask) permissions. A folder replaces an
    existing ``out`` only with ``force``. The temporary keeps ``out``'s suffix, so tools that pick
    a format from the name (matplotlib's ``savefig``) still can.

    Example:
        >>> with staged_output("plot.png") as tmp:  # doctest: +SKIP
        ...     fig.savefig(tmp)
    """
    out = Path(out)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)  # like merge, train and align: create missing folders
        remove_orphans(out.parent)
        if directory:
            stage = _mkdtemp(out)
        else:
            fd, name = tempfile.mkstemp(prefix=f".{out.name}.{temp_tag()}.", suffix=".wsa-tmp" + out.suffix, dir=out.parent)
            os.close(fd)
            stage = Path(name)
    try:
        yield stage
        with writing(out):
            os.chmod(stage, _default_mode(directory))
            if directory:
                _swap_in_folder(stage, out, force)
            else:
                os.replace(stage, out)
    except BaseException:
        if directory:
            shutil.rmtree(stage, ignore_errors=True)
        else:
            stage.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    with staged_output(path) as tmp, writing(path):
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8) atomically.

    Example:
        >>> atomic_write_text("scopes.json", "{}")  # doctest: +SKIP
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def plan_shards(infos: Sequence[TensorInfo], max_shard_bytes: int | None) -> list[list[TensorInfo]]:
    """Split tensors, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own).

    Example:
        >>> infos = [TensorInfo(k, (4,), torch.float32) for k in "abc"]
        >>> [[i.key for i in s] for s in plan_shards(infos, 32)]
        [['a', 'b'], ['c']]
    """
    if not max_shard_bytes or max_shard_bytes <= 0:
        return [list(infos)]
    shards: list[list[TensorInfo]] = [[]]
    size = 0
    for info in infos:
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(info)
        size += info.nbytes
    return shards


def _header_bytes(infos: Sequence[TensorInfo], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    offset = 0
    for info in infos:
        if info.dtype not in DTYPE_TO_TAG:
            raise InvalidValueError(f"dtype {info.dtype} cannot be stored in safetensors", key=info.key)
        header[info.key] = {"dtype": DTYPE_TO_TAG[info.dtype], "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad to 8 bytes so tensor data is aligned
    return len(raw).to_bytes(8, "little") + raw


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when it is already contiguous on the CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def shard_names(out: str | Path, n: int) -> list[str]:
    """The file names of an output's ``n`` shards: the file itself, ``model.safetensors``, or ``model-0000i-of-0000N``.

    Example:
        >>> shard_names("merged", 2)
        ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    out = Path(out)
    if out.suffix == ".safetensors":
        return [out.name]
    if n == 1:
        return [SINGLE_FILE_NAME]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


class ShardFile:
    """One safetensors file written in plan order: header first, then each tensor's bytes; fsynced by ``close``.

    ``hashed``: keep the SHA-256 of every byte written (``sha256``), for the manifests of a
    merge split into parts (:mod:`wsa_cli.merge.parts`), without reading the file back.
    """

    def __init__(self, path: Path, infos: list[TensorInfo], metadata: Mapping[str, str] | None, *, hashed: bool = False) -> None:
        self.path = path
        self.infos = infos
        header = _header_bytes(infos, metadata)
        self.hash = hashlib.sha256(header) if hashed else None
        self.fh = open(path, "wb")  # noqa: SIM115 - closed by finish()/abort()
        try:
            self.fh.write(header)
        except BaseException:
            _close_quietly(self.fh)  # an open descriptor would keep a full disk full after the unlink
            raise
        self.next = 0
        self._unflushed = 0
        self._flusher: threading.Thread | None = None
        self._flush_error: OSError | None = None

    def write(self, key: str, tensor: torch.Tensor) -> None:
        info = self.infos[self.next]
        if key != info.key:
            raise RuntimeError(f"tensor {key!r} written out of plan order: expected {info.key!r}")
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise RuntimeError(f"tensor {key!r}: planned {tuple(info.shape)} {info.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
        data = tensor_bytes(tensor)
        self.fh.write(data)
        if self.hash is not None:
            self.hash.update(data)
        self.next += 1
        self._unflushed += data.nbytes
        if self._unflushed >= FLUSH_BYTES and not self.done and (self._flusher is None or not self._flusher.is_alive()):
            self._raise_flush_error()
            self.fh.flush()  # hand Python's buffer to the kernel, then let the disk start on it
            self._unflushed = 0
            self._flusher = threading.Thread(target=self._flush, name="wsa-flush", daemon=True)
            self._flusher.start()

    def _flush(self) -> None:
        try:
            _datasync(self.fh.fileno())
        except OSError as exc:  # reported by the next write or close, in the writing thread
            self._flush_error = exc

    def _raise_flush_error(self) -> None:
        if self._flush_error is not None:
            raise self._flush_error

    def _join(self) -> None:
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None

    @property
    def done(self) -> bool:
        return self.next == len(self.infos)

    def close(self) -> None:
        if not self.fh.closed:
            self._join()
            self._raise_flush_error()
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()

    def abort(self) -> None:
        self._join()  # never close a descriptor a flush still uses
        _close_quietly(self.fh)


_ShardFile = ShardFile


class _AdoptedShard:
    """A shard written complete elsewhere (a part of a distributed merge), linked into the stage."""

    done = True

    def __init__(self, path: Path) -> None:
        self.path = path

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _close_quietly(fh: BinaryIO) -> None:
    """Close without reporting: the buffered bytes are dropped, the descriptor is closed anyway.

    ``close()`` flushes Python's write buffer first; on a full disk that fails again, but CPython
    closes the descriptor regardless, so the temporary can be removed and its space is freed.
    """
    with suppress(OSError):
        fh.close()


class SafetensorsWriter:
    """Stream tensors into a safetensors file, or a sharded folder, atomically.

    ``out`` ending in ``.safetensors`` gives one file; any other path is a folder holding
    ``model.safetensors`` or ``model-0000i-of-0000N.safetensors`` shards plus an index when the
    tensors exceed ``max_shard_bytes``. Tensors must be written in the order of ``infos``.
    ``add_text`` puts side files (configs, reports) in the folder, or next to a single file.
    Nothing appears at ``out`` until the ``with`` block exits cleanly.

    Example:
        >>> infos = [TensorInfo("w", (2, 2), torch.float32)]
        >>> with SafetensorsWriter("out.safetensors", infos) as w:  # doctest: +SKIP
        ...     w.write("w", torch.eye(2))
    """

    def __init__(
        self,
        out: str | Path,
        infos: Sequence[TensorInfo],
        *,
        metadata: Mapping[str, str] | None = None,
        max_shard_bytes: int | None = None,
        force: bool = False,
        replace_own_only: bool = False,
    ) -> None:
        self.out = Path(out)
        _refuse_pickle_name(self.out)
        self.single_file = self.out.suffix == ".safetensors"
        self.force = force
        #: with ``force``, an existing folder is replaced only if it is an earlier wsa merge output
        #: holding nothing else (:func:`check_replaceable`), checked again at commit
        self.replace_own_only = replace_own_only
        shards = plan_shards(list(infos), max_shard_bytes)
        if self.single_file and len(shards) > 1:
            raise InvalidValueError(f"output {self.out} is a single file but the model needs {len(shards)} shards; give a folder path")
        if self.out.exists() and not force:
            raise OutputError("output exists; pass {opt:force} to replace it", path=self.out)
        with writing(self.out):
            self.out.parent.mkdir(parents=True, exist_ok=True)
            #: temporaries of dead runs (killed, power cut) found next to the output and removed
            self.orphans_removed = remove_orphans(self.out.parent)
            self._stage = _mkdtemp(self.out)
        self._side: dict[str, bytes] = {}
        self._copies: dict[str, Path] = {}
        names = shard_names(self.out, len(shards))
        self.shard_names = names
        self._files: list[_ShardFile | _AdoptedShard] = []
        self._plan = shards
        self._metadata = metadata
        self._current = 0
        self._weight_map = {info.key: names[i] for i, shard in enumerate(shards) for info in shard}
        self._total = sum(info.nbytes for info in infos)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor."""
        with writing(self.out):  # e.g. the disk fills up
            self._write(key, tensor)

    def _write(self, key: str, tensor: torch.Tensor) -> None:
        while self._current < len(self._files) and self._files[self._current].done:
            self._files[self._current].close()  # shard complete: move on to the next one
            self._current += 1
        if self._current >= len(self._plan):
            raise RuntimeError(f"more tensors written than planned (at {key!r})")
        if self._current == len(self._files):
            path = self._stage / self.shard_names[self._current]
            self._files.append(_ShardFile(path, self._plan[self._current], self._metadata))
        self._files[self._current].write(key, tensor)

    def adopt(self, index: int, source: str | Path) -> None:
        """Take shard ``index`` (the next one) as a complete file written elsewhere, byte for byte.

        The file is hard-linked into the stage (copied where links are not possible), so ``source``
        stays intact until the output is committed. Used to assemble a merge split into parts.
        """
        if index != len(self._files) or index >= len(self._plan):
            raise RuntimeError(f"shard {index} adopted out of order (next: {len(self._files)} of {len(self._plan)})")
        dst = self._stage / self.shard_names[index]
        with writing(self.out):
            try:
                os.link(source, dst)
            except OSError:
                shutil.copyfile(source, dst)
        self._files.append(_AdoptedShard(dst))
        self._current = index + 1

    def add_text(self, name: str, text: str) -> None:
        """A side file (e.g. a JSON report) committed together with the model."""
        self._side[name] = text.encode("utf-8")

    def add_copy(self, name: str, source: str | Path) -> None:
        """Copy a file (config, tokenizer) into the output folder at commit (folder output only).

        ``name`` may be a relative path (``1_Pooling/config.json``); a folder ``source`` is created
        there empty (sentence-transformers' ``2_Normalize/``).
        """
        if self.single_file:
            raise InvalidValueError(f"cannot copy {name} next to a single-file output; give a folder path")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"copied file name {name!r} must be relative and stay inside the output folder")
        self._copies[name] = Path(source)

    def commit(self) -> Path:
        """Check that everything planned was written, then move the output into place."""
        with writing(self.out):
            return self._commit()

    def _commit(self) -> Path:
        for i, shard in enumerate(self._plan):
            if i >= len(self._files) and shard:
                raise RuntimeError(f"only {i} of {len(self._plan)} shards written (next: {shard[0].key!r})")
            if shard and not self._files[i].done:
                raise RuntimeError(f"tensor {shard[self._files[i].next].key!r} planned but never written")
        if not self._files:  # a model with zero tensors still gets a valid, empty file
            self._files.append(_ShardFile(self._stage / self.shard_names[0], [], self._metadata))
        for f in self._files:
            f.close()
        if len(self.shard_names) > 1:
            index = {"metadata": {"total_size": self._total}, "weight_map": self._weight_map}
            self._side.setdefault(INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode("utf-8"))
        for name, src in self._copies.items():
            dst = self._stage / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                dst.mkdir(exist_ok=True)
            else:
                shutil.copyfile(src, dst)
        for name, data in self._side.items():  # side files wait in the stage too, never beside the old model
            (self._stage / name).write_bytes(data)
        if self.single_file:
            if self.out.is_dir():
                raise OutputError("output exists and is a folder", path=self.out)
            mode = _default_mode()
            for name in [self.out.name, *self._side]:
                os.chmod(self._stage / name, mode)
            with _signals_held():  # the model's move is the commit point; its side files follow at once
                if self.force:
                    os.replace(self._stage / self.out.name, self.out)
                else:
                    _place_new(self._stage / self.out.name, self.out)
                for name in self._side:
                    os.replace(self._stage / name, self.out.parent / name)
            shutil.rmtree(self._stage, ignore_errors=True)
        else:
            os.chmod(self._stage, _default_mode(directory=True))  # mkdtemp made it private
            with _signals_held():
                if self.force and self.replace_own_only and self.out.is_dir():
                    check_replaceable(self.out)  # again: files may have been added since the plan
                _swap_in_folder(self._stage, self.out, self.force)
        return self.out

    def abort(self) -> None:
        """Remove everything written so far; nothing appears at ``out``. Never raises an OS error."""
        try:
            for f in self._files:
                f.abort()
        finally:
            shutil.rmtree(self._stage, ignore_errors=True)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def foreign_entries(folder: str | Path) -> list[str]:
    """What in an existing folder output wsa did not write (relative names, sorted).

    A folder is an earlier wsa merge output when it holds a merge report
    (``wsa-merge-report.json``, format ``wsa-merge-report``); the report lists every file the
    merge wrote (``output.written``; reports without it: the model files, the copied files, the
    index and the report). Anything else inside, in any sub-folder, is foreign; in a folder
    without a valid report, everything is.

    Example:
        >>> foreign_entries("merged")  # doctest: +SKIP
        ['notes.txt']
    """
    root = Path(folder)
    written: set[str] = set()
    try:
        report = json.loads((root / MERGE_REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    if isinstance(report, dict) and report.get("format") == "wsa-merge-report" and isinstance(report.get("output"), dict):
        out = report["output"]
        listed = out.get("written")
        if not isinstance(listed, list):
            listed = [*out.get("files", []), *out.get("copied_files", []), INDEX_NAME]
        written = {str(n) for n in listed} | {MERGE_REPORT_NAME}
    parents = {str(Path(n).parent) for n in written} | {str(p) for n in written for p in Path(n).parents}
    foreign: list[str] = []

    def walk(d: Path, rel: str) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            name = rel + entry.name
            if entry.is_dir(follow_symlinks=False) and name not in written:
                if name in parents:
                    walk(Path(entry.path), name + "/")
                else:
                    foreign.append(name + "/")
            elif not entry.is_dir(follow_symlinks=False) and name not in written:
                foreign.append(name)

    walk(root, "")
    return foreign


def check_replaceable(folder: str | Path) -> None:
    """Refuse (exit 7, naming them) to replace a folder that holds files wsa did not write.

    ``--force`` replaces an earlier wsa merge output whole; it never deletes anything else.
    """
    foreign = foreign_entries(folder)
    if not foreign:
        return
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    is_wsa = (Path(folder) / MERGE_REPORT_NAME).is_file() and MERGE_REPORT_NAME not in foreign
    what = "holds files that the earlier wsa merge did not write" if is_wsa else "is not a wsa merge output"
    raise OutputError(f"exists and {what} ({shown}); {{opt:force}} replaces only a folder that wsa wrote and "
                      "never deletes other files: move them away or choose another output path", path=folder)  # fmt: skip


def _swap_in_folder(stage: Path, out: Path, force: bool) -> None:
    if out.exists() and force:
        old = _mkdtemp(out, ".wsa-old")
        os.replace(out, old / out.name)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(stage, out)  # a folder only replaces an empty folder: another run's output stays
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
        raise OutputError("output appeared while this run was writing (another run?); "
                          "nothing was replaced; pass {opt:force} to replace it", path=out) from None  # fmt: skip


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    out: str | Path,
    *,
    metadata: Mapping[str, str] | None = None,
    max_shard_bytes: int | None = None,
    force: bool = False,
) -> Path:
    """Write an in-memory state dict atomically (single file or shards).

    Example:
        >>> save_safetensors({"w": torch.zeros(2)}, "w.safetensors")  # doctest: +SKIP
    """
    infos = [TensorInfo(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    with SafetensorsWriter(out, infos, metadata=metadata, max_shard_bytes=max_shard_bytes, force=force) as w:
        for k, v in tensors.items():
            w.write(k, v)
    return Path(out)
