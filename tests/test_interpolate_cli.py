"""wsa interpolate end to end: plug-in contract, built-in evaluators, outputs, gates, errors."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.errors import ExitCode

TESTS = Path(__file__).parent
GOLDEN = TESTS / "golden"
PLUGIN = "interpolate_plugin_eval"
runner = CliRunner()


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, ["interpolate", *map(str, args)])


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plug-in loading puts the current directory on sys.path; undo that after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.syspath_prepend(str(TESTS))
    import importlib

    mod = importlib.import_module(PLUGIN)
    mod.CALLS.clear()
    return mod


@pytest.fixture
def pm_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A: +-1 values (mean 0, std 1) and an int buffer; B = -A. With ``bump``: loss 4 a (1 - a)."""
    signs = torch.tensor([1.0, -1.0]).repeat(6).reshape(4, 3)  # (4, 3), alternating signs
    a = {"layer.weight": signs, "layer.bias": torch.tensor([1.0, -1.0, 1.0, -1.0]), "steps": torch.tensor(3)}
    b = {"layer.weight": -signs, "layer.bias": -a["layer.bias"], "steps": torch.tensor(7)}
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(a, str(pa))
    save_file(b, str(pb))
    return pa, pb


def _normalize(data: dict, *paths: Path) -> dict:
    text = json.dumps(data)
    for p in paths:
        text = text.replace(json.dumps(str(p))[1:-1], p.name)
    return json.loads(text)


def _same(actual, expected, where="$"):  # noqa: ANN001, ANN202
    """Structure (keys, order, types) exactly; numbers to 1e-9 relative."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for k in expected:
            _same(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: length differs"
        for i, (x, y) in enumerate(zip(actual, expected, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, (int, float)) and actual == pytest.approx(expected, rel=1e-9, abs=1e-12), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _golden(name: str, actual):  # noqa: ANN001, ANN202
    path = GOLDEN / name
    if os.environ.get("WSA_UPDATE_GOLDEN"):
        path.write_text(actual if isinstance(actual, str) else json.dumps(actual, indent=2) + "\n")
    return path.read_text() if name.endswith(".csv") else json.loads(path.read_text())


# -- the plug-in contract, end to end --------------------------------------------------------------


def test_plugin_end_to_end(pm_pair, plugin) -> None:  # noqa: ANN001
    a, b = pm_pair
    res = invoke(a, b, "--eval", f"{PLUGIN}:bump", "--alphas", "0:1:5", "--modes", "naive", "--format", "json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    curve = data["modes"][0]["curve"]
    assert [r["alpha"] for r in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [r["loss"] for r in curve] == [0.0, 0.75, 1.0, 0.75, 0.0]  # 4 a (1 - a), exact
    assert list(curve[0]) == ["alpha", "loss", "accuracy", "norm"]
    s = data["modes"][0]["summary"]
    assert s["loss_barrier"] == 1.0 and s["loss_barrier_alpha"] == 0.5 and s["loss_barrier_mid"] == 1.0
    assert s["acc_barrier"] == 0.5 and s["loss_barrier_inputs"] == 1.0
    # the evaluator saw: plain dicts with every key, a torch.device, endpoints bit-exact
    assert len(plugin.CALLS) == 5
    first, device = plugin.CALLS[0]
    assert device == torch.device("cpu")
    stored = load_file(str(a))
    assert set(first) == set(stored)
    for k, v in stored.items():
        assert torch.equal(first[k], v) and first[k].dtype == v.dtype
    last = plugin.CALLS[-1][0]
    for k, v in load_file(str(b)).items():
        assert torch.equal(last[k], v)
    assert int(plugin.CALLS[2][0]["steps"]) == 3  # integer buffers come from the nearer endpoint


def test_plugin_from_a_file_path(pm_pair, tmp_path) -> None:  # noqa: ANN001
    a, b = pm_pair
    res = invoke(a, b, "--eval", f"{TESTS / (PLUGIN + '.py')}:loss_only", "--alphas", "0,1", "--modes", "naive", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)["modes"][0]["summary"]
    assert s["loss_barrier"] == 0.0 and s["acc_barrier"] is None  # no accuracy: undefined, not 0


def test_json_and_csv_are_pinned(pm_pair, plugin) -> None:  # noqa: ANN001
    a, b = pm_pair
    args = (a, b, "--eval", f"{PLUGIN}:bump", "--alphas", "0:1:5", "--device", "cpu")
    res = invoke(*args, "--format", "json")
    assert res.exit_code == 0, res.output
    data = _normalize(json.loads(res.stdout), a, b)
    _same(data, _golden("interpolate_eval.json", data))
    res = invoke(*args, "--format", "csv")
    assert res.exit_code == 0, res.output
    assert res.stdout == _golden("interpolate_eval.csv", res.stdout)


def test_data_free_diagnostics_are_labelled_and_pinned(pm_pair) -> None:  # noqa: ANN001
    a, b = pm_pair
    res = invoke(a, b, "--alphas", "0:1:5", "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "DATA-FREE DIAGNOSTICS" in res.stderr
    data = _normalize(json.loads(res.stdout), a, b)
    assert data["kind"] == "data-free-diagnostics" and data["evaluator"] is None
    naive = data["modes"][0]
    assert naive["summary"]["std_shrinkage"] == pytest.approx(1.0)  # B = -A collapses to zero at 0.5
    assert naive["summary"]["cosine"] == pytest.approx(-1.0)
    _same(data, _golden("interpolate_diagnostics.json", data))
    table = invoke(a, b, "--alphas", "0:1:5", "--format", "table")
    assert table.exit_code == 0 and "DATA-FREE DIAGNOSTICS" in table.stdout


def test_table_has_summary_and_inline_chart(pm_pair, plugin) -> None:  # noqa: ANN001
    a, b = pm_pair
    res = invoke(a, b, "--eval", f"{PLUGIN}:bump", "--alphas", "0:1:5", "--format", "table")
    assert res.exit_code == 0, res.output
    assert "summary" in res.stdout and "▁▆█▆▁" in res.stdout


# -- built-in evaluators on real (tiny) classifiers ------------------------------------------------


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from wsa_cli.tasks import train_model

    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for seed in (0, 1):
        sd, _ = train_model("digits-mlp", seed=seed, epochs=4, width=24)
        paths.append(folder / f"m{seed}.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(paths[-1]))
        if seed == 1:
            c = 4.0  # fc1 up by c, fc2 down by c: the same function (ReLU is positively homogeneous)
            scaled = dict(sd, **{"fc1.weight": sd["fc1.weight"] * c, "fc1.bias": sd["fc1.bias"] * c,
                                 "fc2.weight": sd["fc2.weight"] / c})  # fmt: skip
            paths.append(folder / "m1_scaled.safetensors")
            save_file({k: v.contiguous() for k, v in scaled.items()}, str(paths[-1]))
    return paths[0], paths[1], paths[2]


def test_identical_endpoints_have_zero_barrier(digits_pair) -> None:  # noqa: ANN001
    a = digits_pair[0]
    res = invoke(a, a, "--eval", "digits-mlp", "--alphas", "0:1:7", "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    for mode in json.loads(res.stdout)["modes"]:
        s = mode["summary"]
        assert s["loss_barrier"] == 0.0 and s["acc_barrier"] == 0.0 and s["loss_barrier_mid"] == 0.0
        assert s["loss_barrier_mean"] == 0.0
    diag = invoke(a, a, "--alphas", "0:1:7", "--json")
    assert json.loads(diag.stdout)["modes"][0]["summary"]["std_shrinkage"] == 0.0


def test_scaled_pair_raises_naive_barrier_and_wsa_lowers_it(digits_pair) -> None:  # noqa: ANN001
    a, b, b_scaled = digits_pair
    from wsa_cli.tasks import evaluate

    same = evaluate("digits-mlp", load_file(str(b)))["loss"], evaluate("digits-mlp", load_file(str(b_scaled)))["loss"]
    assert same[0] == pytest.approx(same[1], rel=1e-4)  # the rescale preserved the function
    plain = json.loads(invoke(a, b, "--eval", "digits-mlp", "--alphas", "0:1:11", "--json").stdout)
    scaled = json.loads(invoke(a, b_scaled, "--eval", "digits-mlp", "--alphas", "0:1:11", "--json").stdout)
    naive_plain = plain["modes"][0]["summary"]["loss_barrier"]
    naive_scaled, wsa_scaled = (m["summary"]["loss_barrier"] for m in scaled["modes"])
    assert naive_scaled > naive_plain
    assert wsa_scaled < naive_scaled


def test_builtin_task_evaluator_and_gates(digits_pair) -> None:  # noqa: ANN001
    a, b, _ = digits_pair
    ok = invoke(a, b, "--eval", "digits-mlp", "--alphas", "0:1:5", "--json", "--fail-above", "loss_barrier=1000")
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["evaluator"] == "digits-mlp" and [m["mode"] for m in data["modes"]] == ["naive", "wsa"]
    assert 0.0 <= data["modes"][0]["curve"][0]["accuracy"] <= 1.0
    bad = invoke(a, b, "--eval", "digits-mlp", "--alphas", "0:1:5", "--json", "--fail-above", "loss_barrier=-1")
    assert bad.exit_code == ExitCode.GATE_FAILED
    assert "mode naive: loss_barrier = " in bad.stderr and "mode wsa: loss_barrier = " in bad.stderr
    assert json.loads(bad.stdout)["modes"]  # the data is still printed
    one = invoke(a, b, "--eval", "digits-mlp", "--alphas", "0:1:5", "--json", "--fail-above", "wsa.acc_barrier=-1")
    assert one.exit_code == ExitCode.GATE_FAILED and "mode wsa: acc_barrier" in one.stderr and "mode naive" not in one.stderr


def test_gate_errors(pm_pair, plugin) -> None:  # noqa: ANN001
    a, b = pm_pair
    typo = invoke(a, b, "--eval", f"{PLUGIN}:bump", "--fail-above", "los_barrier=1")
    assert typo.exit_code == ExitCode.USAGE and "unknown metric 'los_barrier'" in typo.stderr
    no_eval = invoke(a, b, "--fail-above", "loss_barrier=1")
    assert no_eval.exit_code == ExitCode.USAGE and "barrier metrics need an evaluator" in no_eval.stderr
    diag = invoke(a, b, "--alphas", "0:1:5", "--json", "--fail-above", "std_shrinkage=0.5")
    assert diag.exit_code == ExitCode.GATE_FAILED and "std_shrinkage = 1 > 0.5" in diag.stderr


# -- BatchNorm -------------------------------------------------------------------------------------


@pytest.fixture
def cnn_pair(tmp_path: Path) -> tuple[Path, Path]:
    from wsa_cli.tasks import get_task

    paths = []
    for seed in (0, 1):
        sd = get_task("digits-cnn").build_model(4, seed=seed).state_dict()
        paths.append(tmp_path / f"cnn{seed}.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(paths[-1]))
    return paths[0], paths[1]


def test_batchnorm_warning_and_recalibration(cnn_pair, plugin) -> None:  # noqa: ANN001
    a, b = cnn_pair
    plain = invoke(a, b, "--eval", "digits-cnn", "--alphas", "0,0.5,1", "--modes", "naive", "--json")
    assert plain.exit_code == 0, plain.output
    assert "may overstate the barrier" in plain.stderr and "--recalibrate-bn" in plain.stderr
    recal = invoke(a, b, "--eval", "digits-cnn", "--alphas", "0,0.5,1", "--modes", "naive", "--json", "--recalibrate-bn")
    assert recal.exit_code == 0, recal.output
    assert "overstate" not in recal.stderr
    data_free = invoke(a, b, "--alphas", "0,0.5,1", "--json")
    assert data_free.exit_code == 0 and "may overstate the barrier" in data_free.stderr
    assert sum("overstate" in line for line in data_free.stderr.splitlines()) == 1  # one line
    needs_eval = invoke(a, b, "--recalibrate-bn")
    assert needs_eval.exit_code == ExitCode.USAGE and "--recalibrate-bn: needs an evaluator" in needs_eval.stderr
    kw = invoke(a, b, "--eval", f"{PLUGIN}:with_bn", "--alphas", "0,1", "--modes", "naive", "--json", "--recalibrate-bn")
    assert kw.exit_code == 0 and json.loads(kw.stdout)["modes"][0]["curve"][0]["loss"] == 1.0
    no_kw = invoke(a, b, "--eval", f"{PLUGIN}:bump", "--recalibrate-bn")
    assert no_kw.exit_code == ExitCode.USAGE and "does not accept a 'recalibrate_bn' keyword" in no_kw.stderr


# -- errors: messages and exit codes ---------------------------------------------------------------


def test_mismatched_checkpoints(tmp_path: Path, pm_pair) -> None:  # noqa: ANN001
    a, _ = pm_pair
    other = tmp_path / "other.safetensors"
    save_file({"layer.weight": torch.zeros(3, 4), "layer.bias": torch.zeros(4), "steps": torch.tensor(1)}, str(other))
    res = invoke(a, other, "--alphas", "0,1")
    assert res.exit_code == ExitCode.MISMATCH
    assert res.stderr.strip() == f"error: {other}: key 'layer.weight': has shape (3, 4), but {a} has (4, 3)"
    missing = tmp_path / "missing.safetensors"
    save_file({"layer.weight": torch.zeros(4, 3), "steps": torch.tensor(1)}, str(missing))
    res = invoke(a, missing, "--alphas", "0,1")
    assert res.exit_code == ExitCode.MISMATCH
    assert res.stderr.strip() == f"error: {missing}: key 'layer.bias': is missing (present in {a})"
    half = tmp_path / "half.safetensors"
    save_file({"layer.weight": torch.zeros(4, 3, dtype=torch.float16), "layer.bias": torch.zeros(4), "steps": torch.tensor(1)}, str(half))
    res = invoke(a, half, "--alphas", "0,1")
    assert res.exit_code == ExitCode.MISMATCH and "key 'layer.weight': has dtype float16, but" in res.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:fn", "error: cannot import evaluator 'no_such_module_xyz:fn': no module named 'no_such_module_xyz'"),
        (f"{PLUGIN}:nope", f"error: cannot import evaluator '{PLUGIN}:nope': module '{PLUGIN}' has no attribute 'nope'"),
        (f"{PLUGIN}:NOT_CALLABLE", f"error: evaluator '{PLUGIN}:NOT_CALLABLE' is not callable (it is a int)"),
        (f"{PLUGIN}:explode", f"error: evaluator '{PLUGIN}:explode' raised ZeroDivisionError at mode naive, alpha 0: division by zero in user code"),
        (f"{PLUGIN}:not_a_dict", f"error: evaluator '{PLUGIN}:not_a_dict' returned float at mode naive, alpha 0; expected a dict of metrics such as {{'loss': 0.3, 'accuracy': 0.9}}"),
        ("missing_file_xyz.py:fn", "error: cannot import evaluator: no such file 'missing_file_xyz.py'"),
    ],
)
def test_evaluator_failures_are_plugin_errors(pm_pair, plugin, spec: str, message: str) -> None:  # noqa: ANN001
    a, b = pm_pair
    res = invoke(a, b, "--eval", spec, "--alphas", "0,1", "--modes", "naive")
    assert res.exit_code == ExitCode.PLUGIN, res.output
    assert res.stderr.strip() == message
    assert res.stdout == ""  # nothing half-printed


def test_evaluator_that_fails_to_import(tmp_path: Path, pm_pair, monkeypatch) -> None:  # noqa: ANN001
    (tmp_path / "broken_eval_mod.py").write_text("import math\nraise RuntimeError('bad config at import')\n")
    monkeypatch.chdir(tmp_path)  # the current directory is on the import path
    a, b = pm_pair
    res = invoke(a, b, "--eval", "broken_eval_mod:fn", "--alphas", "0,1")
    assert res.exit_code == ExitCode.PLUGIN
    assert res.stderr.strip() == "error: cannot import evaluator 'broken_eval_mod:fn': RuntimeError: bad config at import"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--alphas", "0:1:1"), ExitCode.USAGE, "error: --alphas '0:1:1': COUNT must be at least 2, got 1"),
        (("--alphas", "0.5,1"), ExitCode.USAGE, "must contain the endpoints 0 and 1 (missing 0)"),
        (("--alphas", "0,x,1"), ExitCode.USAGE, "error: --alphas '0,x,1': 'x' is not a number"),
        (("--modes", "naive,bogus"), ExitCode.USAGE, "unknown interpolation mode 'bogus'"),
        (("--eval", "digits-nope"), ExitCode.USAGE, "digits-mlp"),
        (("--target", "5"), ExitCode.USAGE, "model index must be 0 (A) or 1 (B)"),
        (("--weights", "1,2,3"), ExitCode.USAGE, "error: --weights '1,2,3': 3 weights for 2 checkpoints"),
        (("--fusion", "median"), ExitCode.USAGE, "unknown fusion method 'median'"),
        (("--device", "tpu"), ExitCode.DEVICE, "--device 'tpu'"),
    ],
)
def test_usage_errors(pm_pair, args, code, message) -> None:  # noqa: ANN001
    a, b = pm_pair
    res = invoke(a, b, *args)
    assert res.exit_code == code, res.output
    assert message in res.stderr and res.stderr.count("\n") == 1


def test_missing_input(pm_pair, tmp_path) -> None:  # noqa: ANN001
    res = invoke(pm_pair[0], tmp_path / "nope.safetensors")
    assert res.exit_code == ExitCode.NOT_FOUND and "nope.safetensors: no such file or folder" in res.stderr


# -- options that shape the wsa mode ---------------------------------------------------------------


def test_scope_options_reach_the_wsa_mode(digits_pair, plugin) -> None:  # noqa: ANN001
    a, b, _ = digits_pair
    base = (a, b, "--eval", f"{PLUGIN}:bump", "--alphas", "0,1", "--modes", "wsa", "--json")
    onto_a = json.loads(invoke(*base, "--target", "0").stdout)
    assert onto_a["scope"]["target"] == 0
    # target = model 0: A's layers are already on target, so the wsa endpoint at alpha 0 is A itself
    first = plugin.CALLS[0][0]
    for k, v in load_file(str(a)).items():
        torch.testing.assert_close(first[k], v, rtol=1e-6, atol=1e-6)
    none = json.loads(invoke(*base, "--rescale", "none").stdout)
    assert none["scope"]["rescale"] == "none"
    fixed = json.loads(invoke(*base, "--target", "0,0.05", "--include", "*.bias").stdout)
    assert fixed["scope"]["target"] == {"mean": 0.0, "std": 0.05} and fixed["scope"]["include"] == ["*.bias"]


# -- --plot ----------------------------------------------------------------------------------------


def test_plot_without_matplotlib_is_a_clear_usage_error(pm_pair, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if it were not installed
    a, b = pm_pair
    res = invoke(a, b, "--plot", tmp_path / "p.png")
    assert res.exit_code == ExitCode.USAGE
    assert res.stderr.strip() == "error: --plot: needs matplotlib, which is not installed; install the extra: pip install 'wsa[plot]'"
    assert not (tmp_path / "p.png").exists()


def _fake_matplotlib(monkeypatch: pytest.MonkeyPatch) -> list:
    """A stand-in for matplotlib that records what is drawn and writes a file on savefig."""
    drawn: list = []

    class Ax:
        def plot(self, xs, ys, **kw):  # noqa: ANN001, ANN202
            drawn.append((kw.get("label"), list(xs), list(ys)))

        def __getattr__(self, name):  # noqa: ANN001, ANN204
            return lambda *a, **k: None

    class Fig:
        def suptitle(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
            pass

        def tight_layout(self):  # noqa: ANN202
            pass

        def savefig(self, path, **kw):  # noqa: ANN001, ANN003, ANN202
            Path(path).write_bytes(b"\x89PNG fake")

    pyplot = types.ModuleType("matplotlib.pyplot")
    pyplot.subplots = lambda r, c, **k: (Fig(), [[Ax() for _ in range(c)]])  # type: ignore[attr-defined]
    pyplot.close = lambda fig: None  # type: ignore[attr-defined]
    mpl = types.ModuleType("matplotlib")
    mpl.use = lambda backend: None  # type: ignore[attr-defined]
    mpl.pyplot = pyplot  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "matplotlib", mpl)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    return drawn


def test_plot_draws_every_mode_and_refuses_overwrite(pm_pair, plugin, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    drawn = _fake_matplotlib(monkeypatch)
    a, b = pm_pair
    out = tmp_path / "curve.png"
    res = invoke(a, b, "--eval", f"{PLUGIN}:bump", "--alphas", "0:1:5", "--plot", out, "--json")
    assert res.exit_code == 0, res.output
    assert out.read_bytes().startswith(b"\x89PNG")
    assert ("naive", [0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.75, 1.0, 0.75, 0.0]) in drawn
    assert {d[0] for d in drawn} == {"naive", "wsa"}
    again = invoke(a, b, "--eval", f"{PLUGIN}:bump", "--plot", out)
    assert again.exit_code == ExitCode.OUTPUT_REFUSED and "pass --force" in again.stderr
    assert invoke(a, b, "--eval", f"{PLUGIN}:bump", "--plot", out, "--force", "--json").exit_code == 0


def test_help() -> None:
    res = invoke("--help")
    assert res.exit_code == 0 and "--alphas" in res.stdout and "--fail-above" in res.stdout


# -- --recipe ----------------------------------------------------------------------------------------


def test_recipe_supplies_scope_options(pm_pair, plugin, tmp_path) -> None:  # noqa: ANN001
    a, b = pm_pair
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        f"models:\n  - {a}\n  - path: {b}\n    weight: 3\nmethod: linear\n"
        "scope:\n  fusion: precision\n  rescale: std\n  target: {model: 1}\n  include: ['*.bias']\n"
        f"output:\n  path: {tmp_path / 'merged.safetensors'}\n"
    )
    res = invoke(a, b, "--recipe", recipe, "--eval", f"{PLUGIN}:bump", "--alphas", "0,1", "--json")
    assert res.exit_code == 0, res.output
    scope = json.loads(res.stdout)["scope"]
    assert scope == {"fusion": "precision", "target": 1, "rescale": "std", "weights": [1.0, 3.0], "include": ["*.bias"], "exclude": []}
    # a command-line option wins over the recipe
    over = invoke(a, b, "--recipe", recipe, "--rescale", "affine", "--eval", f"{PLUGIN}:bump", "--alphas", "0,1", "--json")
    assert json.loads(over.stdout)["scope"]["rescale"] == "affine"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"models: [{a}, {b}]\nscope:\n  fusion: median\noutput: {{path: {tmp_path / 'o.safetensors'}}}\n")
    res = invoke(a, b, "--recipe", bad)
    assert res.exit_code == ExitCode.BAD_CONFIG and f"{bad}:3" in res.stderr


def test_the_documented_plugin_example_runs(digits_pair, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    text = (TESTS.parent / "docs" / "evaluators.md").read_text()
    code = text.split("## A complete example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_eval_doc_example.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    a, b, _ = digits_pair
    res = invoke(a, b, "--eval", "my_eval_doc_example:evaluate", "--alphas", "0:1:5", "--modes", "naive", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["metrics"] == ["loss", "accuracy", "confident"]
    assert data["modes"][0]["curve"][0]["accuracy"] > 0.5 and data["modes"][0]["summary"]["loss_barrier"] >= 0.0


def test_permutation_modes_plug_in(digits_pair) -> None:  # noqa: ANN001
    a, b, _ = digits_pair
    need = invoke(a, b, "--modes", "naive,permuted")
    assert need.exit_code == ExitCode.USAGE and "--spec: is needed by mode 'permuted'" in need.stderr
    res = invoke(a, b, "--eval", "digits-mlp", "--modes", "naive,permuted", "--spec", "digits-mlp", "--alphas", "0:1:5", "--json")
    assert res.exit_code == 0, res.output
    naive, permuted = json.loads(res.stdout)["modes"]
    # permuting B's hidden units does not change B: both modes share their endpoint losses
    assert permuted["summary"]["loss_1"] == pytest.approx(naive["summary"]["loss_1"], rel=1e-5)


def test_barrier_experiment_bench_runs_small(capsys) -> None:  # noqa: ANN001
    import importlib.util

    spec = importlib.util.spec_from_file_location("barrier_experiment_bench", TESTS.parent / "bench" / "barrier_experiment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--width", "16", "--epochs", "2", "--scales", "4", "--alphas", "0:1:5"]) == 0
    out = capsys.readouterr().out
    assert "function preserved: True" in out
    assert "A->B*4    naive" in out and "A->B*4    wsa" in out


def test_scope_file_target_is_named_in_the_report(pm_pair, plugin, tmp_path) -> None:  # noqa: ANN001
    a, b = pm_pair
    scopes = tmp_path / "scopes.json"
    scopes.write_text(json.dumps({"format": "wsa-scopes", "version": 1, "layers": {"layer.weight": {"mean": 0.0, "std": 0.5}}}))
    res = invoke(a, b, "--eval", f"{PLUGIN}:bump", "--alphas", "0,1", "--modes", "wsa", "--target", scopes, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["scope"]["target"] == str(scopes)
    # A's layer (std 1) was mapped onto std 0.5: the evaluator saw the rescaled endpoint
    assert float(plugin.CALLS[0][0]["layer.weight"].std(correction=0)) == pytest.approx(0.5)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    bad = invoke(a, b, "--target", broken)
    assert bad.exit_code == ExitCode.BAD_CONFIG and str(broken) in bad.stderr


@pytest.mark.parametrize("modes", [["naive", "wsa"], ["wsa"]])
def test_progress_calls_match_count_and_inputs_barrier_without_naive(pm_pair, plugin, modes) -> None:  # noqa: ANN001
    from wsa_cli.interpolate import Evaluator, run_interpolation
    from wsa_cli.interpolate.run import count_steps

    a, b = pm_pair
    for ev in (Evaluator("bump", plugin.bump), None):
        calls: list[str] = []
        announced: list[int] = []

        def report(n: int, label: str) -> None:
            calls.append(label)

        report.set_total = announced.append  # type: ignore[attr-defined]
        res = run_interpolation(a, b, alphas=[0.0, 0.5, 1.0], modes=modes, evaluator=ev, progress=report)
        assert len(calls) == count_steps(a, modes=modes, n_alphas=3, with_evaluator=ev is not None) == announced[0]
        if ev is not None:
            # the input checkpoints' losses are 0 at both ends (evaluated separately without naive)
            assert res.modes[-1].summary["loss_barrier_inputs"] == 1.0
            assert ("input A" in calls) == ("naive" not in modes)


def test_low_memory_gives_the_same_curves(digits_pair, plugin) -> None:  # noqa: ANN001
    a, b, _ = digits_pair
    args = (a, b, "--eval", "digits-mlp", "--alphas", "0:1:5", "--json")
    held, low = invoke(*args), invoke(*args, "--low-memory")
    assert held.exit_code == 0 and low.exit_code == 0, low.output
    assert json.loads(held.stdout)["modes"] == json.loads(low.stdout)["modes"]
    res = invoke(a, b, "--eval", f"{PLUGIN}:bump", "--alphas", "0,1", "--modes", "naive", "--low-memory", "--json")
    assert res.exit_code == 0
    for (state, _), path in zip(plugin.CALLS, (a, b), strict=True):
        for k, v in load_file(str(path)).items():
            assert torch.equal(state[k], v)  # endpoints still bit-exact when re-read


def test_spec_is_checked_even_when_no_mode_uses_it(pm_pair, tmp_path: Path) -> None:
    a, b = pm_pair
    res = invoke(a, b, "--spec", str(tmp_path / "missing.yaml"), "--json")
    assert res.exit_code == 3, res.stderr
    assert "missing.yaml" in res.stderr and res.stdout == ""
    bad = tmp_path / "notaspec.yaml"
    bad.write_text("models: [a]\n")
    res = invoke(a, b, "--spec", str(bad), "--json")
    assert res.exit_code == 6 and "not a permutation spec" in res.stderr


def test_plugin_prints_go_to_stderr_not_into_the_json(pm_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pm_pair
    (tmp_path / "chatty_eval.py").write_text(
        "print('importing chatty')\n"
        "def ev(state_dict, device):\n"
        "    print('debug: evaluating')\n"
        "    return {'loss': 0.5, 'accuracy': 0.5}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    res = invoke(a, b, "--alphas", "0,1", "--eval", "chatty_eval:ev", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # clean JSON: nothing of the plug-in's on stdout
    assert data["alphas"] == [0.0, 1.0]
    assert "importing chatty" in res.stderr and "debug: evaluating" in res.stderr


def test_multi_line_error_from_a_plugin_is_still_one_line(pm_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pm_pair
    (tmp_path / "multiline_eval.py").write_text(
        "from wsa_cli.errors import ConfigError\n"
        "def ev(state_dict, device):\n"
        "    raise ConfigError('first line\\nsecond line')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    res = invoke(a, b, "--alphas", "0,1", "--eval", "multiline_eval:ev")
    assert res.exit_code == 8
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: evaluator 'multiline_eval:ev' failed") and "first line second line" in lines[0]


def test_recipe_with_whole_model_rescale_needs_a_rescale_override() -> None:
    """rescale: fp has no per-tensor meaning for the wsa mode: exit 6 at the recipe line, unless --rescale wins."""
    from pathlib import Path

    from typer.testing import CliRunner

    from wsa_cli.cli.app import app

    recipes = Path(__file__).resolve().parent.parent / "recipes"
    a, b = str(recipes / "models/mlp-s1.safetensors"), str(recipes / "models/mlp-s2.safetensors")
    recipe = recipes / "permuted-fp.yaml"
    line = next(i for i, t in enumerate(recipe.read_text().splitlines(), 1) if t.strip() == "rescale: fp")
    res = CliRunner().invoke(app, ["interpolate", a, b, "--recipe", str(recipe), "--alphas", "0:1:3", "--format", "json"])
    assert res.exit_code == 6 and f"permuted-fp.yaml:{line}:" in res.stderr and "permuted+fp" in res.stderr
    res = CliRunner().invoke(app, ["interpolate", a, b, "--recipe", str(recipe), "--rescale", "affine", "--alphas", "0:1:3",
                                   "--modes", "naive,wsa,permuted+fp", "--format", "json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(res.stdout)
    assert data["scope"]["rescale"] == "affine"
