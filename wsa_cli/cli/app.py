"""The typer app and the one place where errors become a message and an exit code.

Each command lives in its own ``*_cmd.py`` and imports heavy modules (torch) inside its function,
so ``wsa --help`` stays instant. :class:`WsaGroup` wraps every command invocation: a
:class:`~wsa_cli.errors.WsaError` prints ``error: <where>: <what>`` on stderr and exits with its
code; anything else is an internal error (exit 70) whose traceback ``--debug`` shows.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from wsa_cli import __version__
from wsa_cli.errors import ExitCode, WsaError

#: signals that stop a run like Ctrl-C does, and their exit codes (128 + the signal number)
_STOP_SIGNALS = {getattr(signal, "SIGTERM"): ExitCode.TERMINATED, **({signal.SIGHUP: ExitCode.HANGUP} if hasattr(signal, "SIGHUP") else {})}


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C, so every ``finally`` and abort path runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """While a command runs, TERM and HUP raise :class:`Stopped`; a second one is ignored (cleanup is under way)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handler(signum: int, frame: object) -> None:
        if stopping:
            return
        stopping.append(signum)
        raise Stopped(signum)

    old = {}
    for signum in _STOP_SIGNALS:
        with suppress(OSError, ValueError):  # not settable here
            old[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)


def _fail(message: str, code: int) -> None:
    message = " ".join(line.strip() for line in message.strip().splitlines())  # one line, whatever the cause said
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _is_cli_signal(exc: BaseException) -> bool:
    """Exit/Abort and click-style usage errors are handled by the CLI framework itself."""
    return isinstance(exc, (typer.Exit, typer.Abort)) or hasattr(exc, "format_message")


def _is_usage_error(exc: BaseException) -> bool:
    """A click-style parse error (unknown option, bad value, missing argument), but not a help screen."""
    return hasattr(exc, "format_message") and type(exc).__name__ != "NoArgsIsHelpError"


def _fail_usage(exc: Any) -> None:
    """One line instead of typer's boxed usage panel: ``error: wsa merge: Missing argument 'recipe'.``"""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "wsa"
    what = " ".join(str(exc.format_message()).split())
    hint = f" (see '{where} -h')" if ctx is not None else ""
    _fail(f"{where}: {what}{hint}", int(getattr(exc, "exit_code", ExitCode.USAGE)))


class WsaGroup(TyperGroup):
    """Typer group whose ``invoke`` turns exceptions into one stderr line and an exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # options of the root itself (`wsa --bogus`) are parsed here, before invoke
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:  # noqa: BLE001 - only click usage errors are turned into a line
            if _is_usage_error(exc):
                _fail_usage(exc)
            raise

    def invoke(self, ctx: Any) -> Any:
        debug = bool(ctx.params.get("debug"))  # the root's own --debug, parsed before any command runs
        try:
            with _stop_signals_raise():
                return super().invoke(ctx)
        except WsaError as exc:
            if debug:
                traceback.print_exc()
            from wsa_cli.cli.common import COMMON_FLAGS

            _fail(exc.describe(COMMON_FLAGS), int(exc.exit_code))
        except Stopped as exc:
            code = _STOP_SIGNALS.get(exc.signum, ExitCode.TERMINATED)
            _fail(f"stopped by {signal.Signals(exc.signum).name}; no partial output was left", int(code))
        except KeyboardInterrupt:
            _fail("interrupted", int(ExitCode.INTERRUPTED))
        except BrokenPipeError:
            # the reader of our stdout went away (e.g. `| head`); not an error of ours
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(int(ExitCode.OK)) from None
        except Exception as exc:  # noqa: BLE001 - the single last-resort handler
            if _is_usage_error(exc):
                _fail_usage(exc)
            if _is_cli_signal(exc):
                raise
            if debug:
                traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0]
            _fail(f"internal error ({type(exc).__name__}: {first}); rerun with --debug and report it", int(ExitCode.INTERNAL))


app = typer.Typer(
    name="wsa",
    cls=WsaGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Merge neural-network checkpoints with Weight Scope Alignment (Xu et al., 2024).

    Exit codes: 0 ok, 1 a --fail-above gate failed, 2 bad usage, 3 input not found,
    4 unreadable checkpoint, 5 checkpoints do not match, 6 bad recipe/spec/config,
    7 output refused, 8 plug-in failed, 9 device unavailable, 70 internal error, 129 hangup,
    130 interrupted, 143 terminated.
    """


def _register() -> None:
    """Attach every command. Each module defines ``command`` (a function) or ``app`` (a sub-group)."""
    # one import and one line per command; keep alphabetical
    from wsa_cli.cli import align_cmd
    from wsa_cli.cli import demo_cmd
    from wsa_cli.cli import fedsim_cmd
    from wsa_cli.cli import inspect_cmd
    from wsa_cli.cli import interpolate_cmd
    from wsa_cli.cli import merge_cmd
    from wsa_cli.cli import methods_cmd
    from wsa_cli.cli import recipe_cmd
    from wsa_cli.cli import scope_cmd
    from wsa_cli.cli import spec_cmd
    from wsa_cli.cli import sweep_cmd
    from wsa_cli.cli import train_cmd

    app.command("align")(align_cmd.command)
    app.command("demo")(demo_cmd.command)
    app.command("fedsim")(fedsim_cmd.command)
    app.command("inspect")(inspect_cmd.command)
    app.command("interpolate")(interpolate_cmd.command)
    app.command("merge")(merge_cmd.command)
    app.command("methods")(methods_cmd.command)
    app.add_typer(recipe_cmd.app, name="recipe")
    app.add_typer(scope_cmd.app, name="scope")
    app.add_typer(spec_cmd.app, name="spec")
    app.command("sweep")(sweep_cmd.command)
    app.command("train")(train_cmd.command)


_register()


def main() -> None:
    """Console-script entry point (``wsa``) and ``python -m wsa_cli``."""
    from wsa_cli.threads import prefer_passive_waiting

    prefer_passive_waiting()  # before any command imports torch (see wsa_cli/threads.py)
    try:
        app(prog_name="wsa")
    finally:
        skip_the_exit_collection()


def skip_the_exit_collection() -> None:
    """Keep the objects still alive out of the garbage collection Python runs as it exits.

    The command has finished (its files are written and closed, its threads joined), so that
    collection only frees memory the process is about to give back: with torch imported it
    walks torch's hundreds of thousands of objects, about 0.25 s of every run on a 2-core VM
    (`python -c "import torch"` 1.34 s, 1.09 s with this). Objects are still freed when their
    last reference goes, and exit handlers still run.
    """
    import gc

    gc.freeze()
