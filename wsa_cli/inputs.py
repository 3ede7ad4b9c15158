"""Input paths checked before anything opens them, and OS errors as one-line user errors.

Kept apart from the readers (and free of torch) so that a command can refuse a path that does not
exist, or is a FIFO or a device, before it imports torch (about 1-2 s): ``wsa inspect`` does.
"""

from __future__ import annotations

import errno
import os
import resource
import stat

from wsa_cli.errors import CheckpointError, InputNotFoundError, WsaError


def shown_path(path: str | os.PathLike[str]) -> str:
    """The path as an error shows it: a null byte spelled ``\\0`` so that the one stderr line stays text."""
    return os.fspath(path).replace("\0", "\\0")


def _open_fds(limit: int) -> int:
    """How many file descriptors this process holds (probing each: at EMFILE nothing can list them)."""
    count = 0
    for fd in range(min(limit, 1 << 16)):
        try:
            os.fstat(fd)
        except OSError:
            continue
        count += 1
    return count


def os_error(exc: OSError, path: str | os.PathLike[str], *, key: str | None = None) -> WsaError:
    """The one translation of an OS error met while reading an input into a one-line user error.

    A path that does not exist (or cannot, e.g. its name is too long) is exit 3; a file that
    exists but cannot be read (permission denied, a symlink loop, too many open files, an I/O
    error) is exit 4, with the OS reason named.

    Example:
        >>> str(os_error(PermissionError(errno.EACCES, "Permission denied"), "m.pt"))
        'm.pt: permission denied (the file exists but this user may not read it)'
    """
    where = shown_path(path)
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return InputNotFoundError("no such file or folder", path=where, key=key)
    if code == errno.ENAMETOOLONG:
        return InputNotFoundError("file name too long", path=where, key=key)
    if code in (errno.EACCES, errno.EPERM):
        return CheckpointError("permission denied (the file exists but this user may not read it)", path=where, key=key)
    if code == errno.ELOOP:
        return CheckpointError("too many levels of symbolic links (a symlink loop)", path=where, key=key)
    if code == errno.EMFILE:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return CheckpointError(
            f"too many open files: {_open_fds(limit)} are open and this process may hold {limit} "
            "(raise the limit with `ulimit -n`, or pass fewer models at once)",
            path=where,
            key=key,
        )
    if code == errno.ENFILE:
        return CheckpointError("too many open files in the whole system (ENFILE); close some programs", path=where, key=key)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return CheckpointError(f"cannot read it ({reason})", path=where, key=key)


def check_input(path: str | os.PathLike[str]) -> os.stat_result:
    """Stat an input before anything opens it, so that every path problem is one clear error.

    Only regular files and folders are read: opening a FIFO named like a checkpoint would block
    forever, and a device has no end. A dangling symlink says where it points.
    """
    text = os.fspath(path)
    if "\0" in text:
        raise InputNotFoundError("the path contains a null byte (no file can be named so)", path=shown_path(text))
    try:
        st = os.stat(text)
    except FileNotFoundError:
        if os.path.islink(text):
            target = os.readlink(text)
            raise InputNotFoundError(f"broken symlink (it points to {target!r}, which does not exist)", path=text) from None
        raise InputNotFoundError("no such file or folder", path=text) from None
    except OSError as exc:
        raise os_error(exc, text) from None
    except ValueError as exc:  # a path the OS cannot even express
        raise InputNotFoundError(f"not a valid path ({exc})", path=shown_path(text)) from None
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return st
    kinds = {stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device"}  # fmt: skip
    kind = next((name for test, name in kinds.items() if test(st.st_mode)), "of an unknown file type")
    raise CheckpointError(f"is {kind}, not a regular file or folder; refusing to read it", path=text)


__all__ = ["check_input", "os_error", "shown_path"]
