"""Real processes, real signals: TERM and HUP stop a merge like Ctrl-C (exit 143 / 129, nothing left),
and of two concurrent merges to one output without --force exactly one wins; the other exits 7.

Each child runs ``wsa merge`` through a small wrapper that pauses after the first merged tensor
(the stage temporaries then exist) until the test says go, so nothing depends on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wsa_cli.errors import ExitCode
from wsa_cli.io import save_safetensors

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")

_WRAPPER = """
import os, sys, time
from pathlib import Path
import wsa_cli.merge.executor as ex

ready, go = Path(sys.argv[1]), Path(sys.argv[2])
real = ex.merge_tensor
def paused(*args, **kwargs):
    out = real(*args, **kwargs)
    if not ready.exists():
        ready.write_text(str(os.getpid()))
        deadline = time.time() + 60
        while not go.exists() and time.time() < deadline:
            time.sleep(0.01)  # a signal arrives here, in the main thread, mid-merge
    return out
ex.merge_tensor = paused
sys.argv = ["wsa", "merge", *sys.argv[3:]]
from wsa_cli.cli.app import main
main()
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        save_safetensors({f"l{k}.weight": torch.randn(64, 64, generator=g) for k in range(8)}, tmp_path / f"m{i}.safetensors")
    (tmp_path / "wrap.py").write_text(_WRAPPER)
    return tmp_path


def _start(folder: Path, tag: str, recipe: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [os.path.abspath(sys.executable), str(folder / "wrap.py"), str(folder / f"ready-{tag}"), str(folder / "go"), str(recipe)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "child never reached the first tensor"
        time.sleep(0.01)


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".wsa-" in p.name and ("wsa-tmp" in p.name or "wsa-old" in p.name)]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, ExitCode.TERMINATED), (signal.SIGHUP, ExitCode.HANGUP)])
def test_term_and_hup_stop_a_multi_stage_merge_and_leave_nothing(folder: Path, signum: int, code: int) -> None:
    recipe = folder / "r.yaml"
    recipe.write_text("stages:\n  - name: first\n    models: [m0.safetensors, m1.safetensors]\n"
                      "  - name: second\n    models: [{stage: first}, m1.safetensors]\n    output: out.safetensors\n")  # fmt: skip
    proc = _start(folder, "a", recipe)
    _wait_for(folder / "ready-a", proc)
    assert _temporaries(folder)  # the stage's temporaries exist now
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(f"error: stopped by {signal.Signals(signum).name}")
    assert _temporaries(folder) == [] and not (folder / "out.safetensors").exists()


def test_two_concurrent_merges_to_one_output_one_wins_the_other_exits_7(folder: Path) -> None:
    recipe = folder / "r.yaml"
    recipe.write_text("models: [m0.safetensors, m1.safetensors]\noutput: out.safetensors\n")
    procs = [_start(folder, tag, recipe) for tag in "ab"]
    for tag, proc in zip("ab", procs, strict=True):
        _wait_for(folder / f"ready-{tag}", proc)  # both planned (no output yet) and are writing
    (folder / "go").write_text("")
    results = [(p.wait(timeout=60), p.communicate()[1]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, ExitCode.OUTPUT_REFUSED], results
    loser = next(err for rc, err in results if rc == ExitCode.OUTPUT_REFUSED)
    assert "appeared while this run was writing" in loser and len(loser.strip().splitlines()) == 1
    assert (folder / "out.safetensors").exists() and (folder / "out.wsa-merge-report.json").exists()
    assert _temporaries(folder) == []
