"""Plug-ins from installed packages: merge methods, evaluators and interpolation modes named by
entry points, found through a real ``*.dist-info`` folder on ``sys.path`` (no mocking of
``importlib.metadata``).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from wsa_cli.errors import PluginError
from wsa_cli.interpolate.evaluators import EVALUATORS, resolve_evaluator
from wsa_cli.interpolate.modes import MODES, get_mode
from wsa_cli.merge import METHODS, MethodContext, all_methods, get_method
from wsa_cli.merge.registry import builtin_methods
from wsa_cli.registry import Registry

PLUGIN_MODULE = '''
"""A package that adds one merge method, one evaluator and one interpolation mode to wsa."""

import torch

from wsa_cli.interpolate.mode_base import Mode
from wsa_cli.merge.registry import MergeMethod, Param

IMPORTED = True


def _max_abs(tensors, base, weights, params, ctx):
    stacked = torch.stack(tensors)  # (K, ...)
    pick = stacked.abs().argmax(0, keepdim=True)
    return stacked.gather(0, pick).squeeze(0) * params["gain"]


MAX_ABS = MergeMethod(
    name="{method}",
    fn=_max_abs,
    summary="Entry with the largest magnitude across the models.",
    reference="-",
    params=(Param("gain", float, 1.0, "scale of the result"),),
)


def evaluate(state_dict, device):
    return {{"loss": float(sum(t.float().abs().sum() for t in state_dict.values())), "accuracy": 0.5}}


SWAP = Mode("{mode}", lambda a, b, opts: (b, a), "B to A instead of A to B")
'''


def _install(root: Path, dist: str, module: str, groups: dict[str, dict[str, str]], method: str, mode: str) -> None:
    """Write ``module.py`` (a method and a mode of these names) and a ``dist-0.1.dist-info`` folder
    naming its objects under ``groups``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(PLUGIN_MODULE.format(method=method, mode=mode))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = []
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {module}:{attr}" for name, attr in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


GROUPS = {
    "wsa.merge_methods": {"fake_max_abs": "MAX_ABS"},
    "wsa.evaluators": {"fake-eval": "evaluate"},
    "wsa.interpolation_modes": {"fake_swap": "SWAP"},
}


@pytest.fixture
def fresh_registries():
    """Make the module registries load again (built-ins and entry points), and put them back afterwards."""
    registries = (METHODS, MODES, EVALUATORS)
    saved = [(r._items, r._builtin_names) for r in registries]
    for r in registries:
        r._items = None
    yield
    for r, (items, names) in zip(registries, saved, strict=True):
        r._items, r._builtin_names = items, names


@pytest.fixture
def plugin_package(tmp_path, monkeypatch, fresh_registries):
    _install(tmp_path / "site", "fake_pkg", "fake_wsa_plugin", GROUPS, method="fake_max_abs", mode="fake_swap")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "fake_wsa_plugin", raising=False)
    return tmp_path / "site"


def test_merge_method_entry_point_is_listed_and_merges(plugin_package, tmp_path):
    names = [m.name for m in all_methods()]
    assert "fake_max_abs" in names and names == sorted(names)
    assert METHODS.is_builtin("linear") and not METHODS.is_builtin("fake_max_abs")
    m = get_method("fake_max_abs")
    out = m.fn([torch.tensor([1.0, -5.0]), torch.tensor([-3.0, 2.0])], None, [1, 1], m.resolve_params({"gain": 2.0}), MethodContext("w"))
    assert out.tolist() == [-6.0, -10.0]
    # and through the whole merge: planned, validated, run
    from wsa_cli.io import save_safetensors
    from wsa_cli.merge.executor import merge_recipe
    from safetensors.torch import load_file

    save_safetensors({"w": torch.tensor([[1.0, -5.0]])}, tmp_path / "a.safetensors")
    save_safetensors({"w": torch.tensor([[-3.0, 2.0]])}, tmp_path / "b.safetensors")
    (tmp_path / "r.yaml").write_text("models: [a.safetensors, b.safetensors]\nmethod: fake_max_abs\n"
                                     "scope: {align: false}\noutput: m.safetensors\n")  # fmt: skip
    merge_recipe(tmp_path / "r.yaml", device="cpu")
    assert load_file(tmp_path / "m.safetensors")["w"].tolist() == [[-3.0, -5.0]]


def test_evaluator_entry_point_is_named_by_the_entry_point_and_imported_on_use(plugin_package):
    assert EVALUATORS.names()[:2] == ["digits-mlp", "digits-cnn"] and "fake-eval" in EVALUATORS
    assert "fake_wsa_plugin" not in sys.modules  # listing the names imported nothing
    ev = resolve_evaluator("fake-eval")
    assert ev.kind == "plugin" and ev.name == "fake-eval"
    assert ev({"w": torch.tensor([1.0, -2.0])}, torch.device("cpu")) == {"loss": 3.0, "accuracy": 0.5}


def test_interpolation_mode_entry_point(plugin_package):
    assert "fake_swap" in MODES.names()
    a, b = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert get_mode("fake_swap").prepare(a, b, None) == (b, a)


def test_fresh_registry_objects_read_the_same_entry_points(plugin_package):
    methods = Registry("merge method", builtin_methods, entry_point_group="wsa.merge_methods")
    assert "fake_max_abs" in methods and methods.names()[-1] == "fake_max_abs"  # plug-ins after the built-ins
    without = Registry("merge method", builtin_methods)
    assert "fake_max_abs" not in without


def test_colliding_names_are_plugin_errors(tmp_path, monkeypatch, fresh_registries):
    # a package whose entry points reuse built-in names
    clash = {"wsa.merge_methods": {"linear": "MAX_ABS"}, "wsa.evaluators": {"digits-mlp": "evaluate"},
             "wsa.interpolation_modes": {"naive": "SWAP"}}  # fmt: skip
    _install(tmp_path / "site", "clash_pkg", "clash_wsa_plugin", clash, method="linear", mode="naive")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "clash_wsa_plugin", raising=False)
    with pytest.raises(PluginError, match=r"entry point 'linear' of clash_pkg \(group wsa.merge_methods\) adds merge method 'linear', which already exists"):
        get_method("linear")
    with pytest.raises(PluginError, match=r"entry point 'digits-mlp' of clash_pkg \(group wsa.evaluators\) adds evaluator 'digits-mlp'"):
        EVALUATORS.names()
    with pytest.raises(PluginError, match=r"adds interpolation mode 'naive', which already exists"):
        MODES.names()


def test_an_entry_point_that_cannot_be_imported_is_a_plugin_error(tmp_path, monkeypatch, fresh_registries):
    root = tmp_path / "site"
    root.mkdir()
    info = root / "broken_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken_pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [wsa.merge_methods]
        gone = no_such_module_for_wsa:METHOD
        [wsa.evaluators]
        gone-eval = no_such_module_for_wsa:evaluate
        """))
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(PluginError, match="cannot load entry point 'gone' of broken_pkg"):
        all_methods()
    assert "gone-eval" in EVALUATORS  # listed without importing it
    with pytest.raises(PluginError, match="cannot load entry point 'gone-eval' of broken_pkg .*ModuleNotFoundError"):
        resolve_evaluator("gone-eval")
