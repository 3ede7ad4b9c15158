"""Every ``Example:`` in the library's docstrings runs and prints what it shows.

Examples that need files on disk are marked ``+SKIP`` where they are written; everything else
runs here, in a temporary working folder, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import warnings

import pytest

import wsa_cli

MODULES = sorted(m.name for m in pkgutil.walk_packages(wsa_cli.__path__, "wsa_cli."))
#: modules that import an optional extra when loaded, and the library each needs
NEEDS_EXTRA = {"wsa_cli.fed.flower.strategy": "flwr", "wsa_cli.fed.flower.engine": "flwr"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    if name in NEEDS_EXTRA:
        pytest.importorskip(NEEDS_EXTRA[name])  # a developer without the extra deselects nothing by hand
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an example that warns is a bad example
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run pytest -s to see them)"
