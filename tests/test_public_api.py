"""The library's public names import lazily and point at the real objects."""

from __future__ import annotations

import subprocess
import sys

import wsa_cli


def test_every_exported_name_resolves() -> None:
    for name in wsa_cli.__all__:
        assert getattr(wsa_cli, name) is not None, name


def test_importing_the_package_does_not_import_torch() -> None:
    probe = "import sys, wsa_cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
