"""A built wheel installs a working `wsa`: the package, its sub-packages and data, the console
script, and the method registry (collected from the installed `merge/methods/`), outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _tracked_source(dest: Path) -> Path:
    """A copy of what the project ships (git's tracked files, or the tree without caches), so the build writes nothing here."""
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in names:
        if name.startswith(("wsa_cli/", "pyproject.toml", "README.md")) and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_built_wheel_installs_a_working_wsa(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    src = _tracked_source(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = dist.glob("wsa-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"wsa_cli/py.typed", "wsa_cli/cli/app.py", "wsa_cli/merge/methods/ties.py", "wsa_cli/merge/methods/__init__.py"} <= names
    assert not any(n.startswith("tests/") for n in names)
    assert "wsa = wsa_cli.cli.app:main" in entry_points
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import wsa_cli; print(wsa_cli.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(site)  # the installed copy, not the checkout
    script = site / "bin" / "wsa"
    version = subprocess.run([str(script), "--version"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert version.stdout.strip().startswith("wsa ")
    methods = subprocess.run([sys.executable, "-m", "wsa_cli", "methods", "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    names_listed = [m["name"] for m in json.loads(methods.stdout)["methods"]]
    assert {"linear", "ties", "slerp", "model_stock"} <= set(names_listed)
