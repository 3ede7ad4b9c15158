"""One exception family for everything wsa reports to a user.

Every error knows *where* it happened (a file, a tensor key, a recipe line) and which exit code the
CLI returns for it, so the single handler in ``wsa_cli.cli.app`` can print exactly one line::

    error: model_b.safetensors: key 'fc.weight' has shape (10, 64), expected (10, 32)

Library code raises these and never prints or exits. Exit codes are part of the public contract
(see ``docs/exit-codes.md``) and each one has a test.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from os import PathLike

#: ``{opt:force}`` in a message names an option without saying how it was given: the CLI shows
#: its flag (``--force``), Python callers see the parameter name (``force``).
_OPTION_REF = re.compile(r"\{opt:([a-z_]+)\}")


class ExitCode(enum.IntEnum):
    """Process exit codes of the ``wsa`` command. Stable: scripts and CI jobs rely on them."""

    OK = 0
    #: A ``--fail-above`` gate was exceeded (the command itself worked).
    GATE_FAILED = 1
    #: Bad command-line usage (unknown option, bad value); also click's own code.
    USAGE = 2
    #: An input path does not exist.
    NOT_FOUND = 3
    #: A checkpoint cannot be read: unknown format, corrupt or truncated file, unsafe pickle, empty.
    BAD_CHECKPOINT = 4
    #: Checkpoints do not line up: keys, shapes or dtypes differ where they must agree.
    MISMATCH = 5
    #: A recipe, spec, scope file or other configuration file is invalid.
    BAD_CONFIG = 6
    #: The output was refused: it exists (no ``--force``), or it would overwrite an input.
    OUTPUT_REFUSED = 7
    #: A user plug-in (evaluator, model factory) could not be imported or raised.
    PLUGIN = 8
    #: The requested device is not available (e.g. ``--device cuda`` without CUDA).
    DEVICE = 9
    #: A bug in wsa: an unexpected exception. Run with ``--debug`` and report it.
    INTERNAL = 70
    #: The terminal closed (SIGHUP); no partial output is left behind.
    HANGUP = 129
    #: Interrupted by the user (Ctrl-C).
    INTERRUPTED = 130
    #: Terminated (SIGTERM: ``timeout``, ``docker stop``, systemd); no partial output is left behind.
    TERMINATED = 143


class WsaError(Exception):
    """Base of all errors wsa reports to users.

    ``path``, ``key`` and ``line`` say where the problem is; :meth:`location` renders them as the
    prefix of the one-line message.

    Example:
        >>> str(WsaError("has shape (10, 64), expected (10, 32)", path="b.safetensors", key="fc.weight"))
        "b.safetensors: key 'fc.weight': has shape (10, 64), expected (10, 32)"
    """

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike[str] | None = None,
        key: str | None = None,
        line: int | None = None,
        option: str | None = None,
        value: object = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.key = key
        self.line = line
        #: the library parameter the problem is about (``weights``, ``device``...), so the CLI can
        #: name its flag and a recipe parser its key; ``value`` is what was given (None: not shown)
        self.option = option
        self.value = value
        super().__init__(self.__str__())

    def describe(self, names: Mapping[str, str] | None = None) -> str:
        """The message with ``{opt:NAME}`` references spelled through ``names`` (default: the bare name).

        Example:
            >>> OutputError("output exists; pass {opt:force} to replace it").describe({"force": "--force"})
            'output exists; pass --force to replace it'
        """
        where = self.location()
        text = _OPTION_REF.sub(lambda m: (names or {}).get(m.group(1), m.group(1)), self.message)
        return f"{where}: {text}" if where else text

    def location(self) -> str:
        """``file:line: key 'k'`` prefix, or an empty string when nothing is known."""
        parts: list[str] = []
        if self.path is not None:
            parts.append(self.path if self.line is None else f"{self.path}:{self.line}")
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.key is not None:
            parts.append(f"key {self.key!r}")
        return ": ".join(parts)

    def __str__(self) -> str:
        return self.describe()


class UsageError(WsaError):
    """A command-line value is invalid (bad alpha grid, malformed ``--fail-above``...).

    Raised by the CLI layer, which knows the flag; library code raises :class:`InvalidValueError`.
    """

    exit_code = ExitCode.USAGE


class InvalidValueError(WsaError):
    """A value given to a library function is invalid: an unknown name, a number out of range, bad text.

    Library code raises this without naming where the value came from; the caller that knows
    (the recipe parser: a file and line; the CLI: a flag) re-raises it as :class:`ConfigError` or
    :class:`UsageError`. Reaching the CLI unconverted, it is bad usage (exit 2).

    Example:
        >>> str(InvalidValueError("must be >= 0, got -1", key="fc.weight"))
        "key 'fc.weight': must be >= 0, got -1"
    """

    exit_code = ExitCode.USAGE


class InputNotFoundError(WsaError):
    """An input file or folder does not exist."""

    exit_code = ExitCode.NOT_FOUND


class CheckpointError(WsaError):
    """A checkpoint cannot be read: unknown format, corrupt header, unsafe pickle, empty."""

    exit_code = ExitCode.BAD_CHECKPOINT


class MismatchError(WsaError):
    """Several checkpoints (or a checkpoint and a spec) do not line up."""

    exit_code = ExitCode.MISMATCH


class ConfigError(WsaError):
    """A recipe, permutation spec, scope file or similar is invalid; ``line`` points into it."""

    exit_code = ExitCode.BAD_CONFIG


class OutputError(WsaError):
    """Writing the output was refused (exists without ``--force``, or would overwrite an input)."""

    exit_code = ExitCode.OUTPUT_REFUSED


class PluginError(WsaError):
    """A user-supplied callable (``package.module:function``) failed to import or raised."""

    exit_code = ExitCode.PLUGIN


class DeviceError(WsaError):
    """The requested compute device is not available."""

    exit_code = ExitCode.DEVICE


class GateFailed(WsaError):
    """A ``--fail-above METRIC=VALUE`` threshold was exceeded."""

    exit_code = ExitCode.GATE_FAILED

