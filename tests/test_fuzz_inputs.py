"""Fuzzing the readers: corrupt checkpoints are one clean error line, never a crash, a traceback or a hang.

Seeded single-byte flips, truncations and insertions of a small safetensors file's header region
and of small ``torch.save`` pickles (zip and legacy formats) each go through ``wsa inspect FILE``
in-process and through ``open_checkpoint`` plus reading every tensor. A case fails on exit 70 (a
bug), a traceback, more than one stderr line, an error that is not a ``WsaError`` naming the file,
or a run longer than a few seconds (an alarm interrupts a hang). Mutants that still parse may read
fine: that is allowed, crashing on them is not.
"""

from __future__ import annotations

import random
import signal
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from wsa_cli.errors import ExitCode, WsaError
from wsa_cli.io import open_checkpoint

SEED = 20240611
#: mutants per source file; 4 sources -> 360 cases, each run twice (CLI and library)
CASES = {"safetensors": 120, "pt-zip": 90, "pt-legacy": 90, "pt-zip-whole": 60}
#: a case slower than this is a failure (a healthy one takes milliseconds)
CASE_SECONDS = 3.0


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.zeros(4), "steps": torch.tensor([3, 1])}


def _sources(tmp: Path) -> dict[str, tuple[bytes, int, int, str]]:
    """name -> (file bytes, first and end byte of the region to mutate, suffix)."""
    save_file(_state(), tmp / "src.safetensors", metadata={"origin": "fuzz"})
    torch.save({**_state(), "epoch": 2}, tmp / "src.pt")
    torch.save(_state(), tmp / "legacy.pt", _use_new_zipfile_serialization=False)
    st = (tmp / "src.safetensors").read_bytes()
    pt = (tmp / "src.pt").read_bytes()
    with zipfile.ZipFile(tmp / "src.pt") as z:  # the pickle inside the zip (stored, not compressed)
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    legacy = (tmp / "legacy.pt").read_bytes()
    return {
        "safetensors": (st, 0, 8 + int.from_bytes(st[:8], "little"), ".safetensors"),
        "pt-zip": (pt, start, start + info.compress_size, ".pt"),
        "pt-legacy": (legacy, 0, len(legacy), ".pt"),
        "pt-zip-whole": (pt, 0, len(pt), ".pt"),
    }


def _mutants(data: bytes, lo: int, hi: int, n: int, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for _ in range(n):
        pos = rng.randrange(lo, hi)
        op = rng.choice(("flip", "flip", "truncate", "insert"))
        out = bytearray(data)
        if op == "flip":
            out[pos] ^= rng.randrange(1, 256)
        elif op == "truncate":
            del out[pos:]
        else:
            out[pos:pos] = bytes([rng.randrange(256)])
        yield f"{op}@{pos}", bytes(out)


class _Hang(Exception):
    pass


@contextmanager
def _deadline(seconds: float, what: str) -> Iterator[None]:
    """Interrupt a case that hangs (SIGALRM stops blocking system calls too), and fail a slow one."""

    def on_alarm(signum: int, frame: object) -> None:
        raise _Hang(f"{what}: still running after {seconds * 2:.0f}s (a hang)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds * 2)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    took = time.monotonic() - start
    assert took < seconds, f"{what}: took {took:.1f}s"


def _read_all(path: Path) -> None:
    with open_checkpoint(path) as r:
        for key in r:
            r.get(key).double().sum()
            r.view(key).double().sum()
            r.release(key)


def _check_library(path: Path, what: str) -> str:
    try:
        _read_all(path)
    except WsaError as exc:
        assert exc.exit_code in (ExitCode.BAD_CHECKPOINT, ExitCode.NOT_FOUND), f"{what}: {exc.exit_code!r}: {exc}"
        assert exc.path == str(path), f"{what}: error does not name the file: {exc}"
        return "error"
    except _Hang:
        raise
    except Exception as exc:  # noqa: BLE001 - the very thing this test hunts for
        pytest.fail(f"{what}: {type(exc).__name__} escaped the reader (exit 70 in the CLI): {exc}")
    return "ok"


def _check_cli(cli: Callable[..., Any], path: Path, what: str) -> int:
    res = cli("inspect", str(path))
    err = res.stderr
    assert res.exit_code != ExitCode.INTERNAL, f"{what}: exit 70: {err}"
    assert "Traceback" not in err and "Traceback" not in res.stdout, f"{what}: traceback: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    if res.exit_code == 0:
        assert not any(line.startswith("error:") for line in lines), f"{what}: {err}"
    else:
        assert res.exit_code == ExitCode.BAD_CHECKPOINT, f"{what}: exit {res.exit_code}: {err}"
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), f"{what}: stderr is not one error line: {err!r}"
    assert len(lines) <= 1, f"{what}: {len(lines)} stderr lines: {err!r}"
    return res.exit_code


def test_mutated_checkpoints_are_clean_errors(tmp_path: Path, cli: Callable[..., Any]) -> None:
    rng = random.Random(SEED)
    sources = _sources(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    outcomes: dict[str, dict[str, int]] = {}
    cases = 0
    for name, (data, lo, hi, suffix) in sources.items():
        seen = outcomes.setdefault(name, {"ok": 0, "error": 0})
        for label, blob in _mutants(data, lo, hi, CASES[name], rng):
            what = f"{name} {label}"
            path = tmp_path / f"mutant{suffix}"
            path.write_bytes(blob)
            try:
                with _deadline(CASE_SECONDS, what):
                    seen[_check_library(path, what)] += 1
                with _deadline(CASE_SECONDS, what):
                    _check_cli(cli, path, what)
            finally:
                path.unlink()
            cases += 1
    assert cases == sum(CASES.values())
    # the campaign exercised the error paths, not only lucky mutants that still read
    assert all(seen["error"] > seen["ok"] for seen in outcomes.values()), outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_fuzz_sources_read_unmutated(tmp_path: Path, cli: Callable[..., Any], kind: str) -> None:
    """The campaign's sources are valid: without a mutation everything reads and inspect succeeds."""
    sources = _sources(tmp_path)
    path = tmp_path / ("src.safetensors" if kind == "safetensors" else "src.pt")
    assert path.read_bytes() == sources["safetensors" if kind == "safetensors" else "pt-zip"][0]
    assert _check_library(path, kind) == "ok"
    assert _check_cli(cli, path, kind) == 0
