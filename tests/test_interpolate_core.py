"""wsa interpolate, library level: alpha grids, the path, barrier definitions, diagnostics, modes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsa_cli.errors import InvalidValueError
from wsa_cli.fusion.pipeline import ScopeOptions
from wsa_cli.interpolate import (
    MODES,
    ModeOptions,
    get_mode,
    interpolate_state,
    lerp_tensor,
    parse_alphas,
    parse_modes,
    path_diagnostics,
    register_mode,
    summarize_curve,
)
from wsa_cli.interpolate.barrier import max_above_line
from wsa_cli.interpolate.report import csv_rows, sparkline

# -- alpha grids ---------------------------------------------------------------------------------


def test_range_grid_is_linspace_with_exact_ends() -> None:
    grid = parse_alphas("0:1:25")
    assert len(grid) == 25
    assert grid[0] == 0.0 and grid[-1] == 1.0 and grid[12] == 0.5
    assert grid == pytest.approx([i / 24 for i in range(25)], abs=1e-15)


def test_range_grid_may_extrapolate() -> None:
    assert parse_alphas("-0.5:1.5:5") == [-0.5, 0.0, 0.5, 1.0, 1.5]


def test_list_grid_sorted() -> None:
    assert parse_alphas(" 1, 0.25,0 ") == [0.0, 0.25, 1.0]
    assert parse_alphas("-0,1") == [0.0, 1.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty; expected START:STOP:COUNT"),
        ("0:1", "expected START:STOP:COUNT"),
        ("0:1:x", "COUNT 'x' is not a whole number"),
        ("0:1:1", "COUNT must be at least 2, got 1"),
        ("1:0:5", "STOP must be greater than START"),
        ("0:1:99999", "at most 10001 are allowed"),
        ("0,a,1", "'a' is not a number"),
        ("0,nan,1", "'nan' is not a finite number"),
        ("0,0.5,0.5,1", "value 0.5 is listed twice"),
        ("0.2:1:5", "must contain the endpoints 0 and 1 (missing 0)"),
        ("0,0.5", "(missing 1)"),
    ],
)
def test_bad_grids(spec: str, message: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        parse_alphas(spec)
    assert message in str(info.value)
    assert info.value.exit_code == 2 and info.value.option == "alphas" and info.value.value == spec


@given(st.integers(2, 200))
def test_range_grid_properties(count: int) -> None:
    grid = parse_alphas(f"0:1:{count}")
    assert len(grid) == count and grid[0] == 0.0 and grid[-1] == 1.0
    assert all(x < y for x, y in zip(grid, grid[1:], strict=False))


# -- the path ------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_endpoints_are_bit_exact_and_the_same_objects(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(7, 5, generator=g).to(dtype), "n": torch.tensor(3)}
    b = {"w": torch.randn(7, 5, generator=g).to(dtype), "n": torch.tensor(9)}
    s0, s1 = interpolate_state(a, b, 0.0), interpolate_state(a, b, 1.0)
    for k in a:
        assert s0[k] is a[k] and s1[k] is b[k]
        assert torch.equal(s0[k], a[k]) and torch.equal(s1[k], b[k])


@pytest.mark.parametrize("dtype", DTYPES)
def test_blend_computed_in_float32_and_cast_back(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, generator=g).to(dtype), torch.randn(64, generator=g).to(dtype)
    out = lerp_tensor(a, b, 0.3)
    assert out.dtype == dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    expected = (0.7 * a.to(torch.float64) + 0.3 * b.to(torch.float64)).to(compute).to(dtype)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-2)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


def test_integer_tensors_come_from_the_nearer_endpoint() -> None:
    a, b = torch.tensor([1, 2]), torch.tensor([5, 6])
    assert lerp_tensor(a, b, 0.5) is a and lerp_tensor(a, b, 0.51) is b


@settings(deadline=None, max_examples=40)
@given(st.floats(-1.0, 2.0, allow_nan=False), st.sampled_from(DTYPES))
def test_identical_endpoints_give_the_same_model_everywhere(alpha: float, dtype: torch.dtype) -> None:
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(2)).to(dtype)
    assert torch.equal(lerp_tensor(w, w.clone(), alpha), w)


# -- barrier definitions against hand-computed curves -------------------------------------------


def test_barriers_hand_computed_asymmetric_curve() -> None:
    # L = 1, 2, 4, 2.5, 3 at alpha 0, .25, .5, .75, 1; line = 1 + 2 alpha = 1, 1.5, 2, 2.5, 3
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    s = summarize_curve(alphas, [1.0, 2.0, 4.0, 2.5, 3.0], [0.9, 0.7, 0.4, 0.75, 0.8])
    assert s.loss_0 == 1.0 and s.loss_1 == 3.0
    assert s.loss_barrier == pytest.approx(2.0) and s.loss_barrier_alpha == 0.5  # 4 - 2
    assert s.loss_barrier_mean == pytest.approx(2.0) and s.loss_barrier_mean_alpha == 0.5  # 4 - (1+3)/2
    assert s.loss_barrier_mid == pytest.approx(2.0)
    # acc line = 0.9 - 0.1 alpha = .9, .875, .85, .825, .8 ; drops: 0, .175, .45, .075, 0
    assert s.acc_barrier == pytest.approx(0.45) and s.acc_barrier_alpha == 0.5


def test_definitions_disagree_where_they_should() -> None:
    # peak off the middle and unequal endpoints: the three loss definitions all differ
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    loss = [0.0, 3.0, 1.5, 2.0, 2.0]  # line = 0, .5, 1, 1.5, 2 ; mean = 1
    s = summarize_curve(alphas, loss, None)
    assert s.loss_barrier == pytest.approx(2.5) and s.loss_barrier_alpha == 0.25
    assert s.loss_barrier_mean == pytest.approx(2.0) and s.loss_barrier_mean_alpha == 0.25
    assert s.loss_barrier_mid == pytest.approx(0.5)
    assert s.acc_barrier is None and s.accuracy_0 is None


def test_convex_curve_has_zero_linear_barrier_but_mean_barrier_of_half_the_gap() -> None:
    alphas = [0.0, 0.5, 1.0]
    s = summarize_curve(alphas, [1.0, 1.2, 3.0], [0.5, 0.9, 0.9])
    assert s.loss_barrier == 0.0 and s.loss_barrier_alpha == 0.0  # first of the ties (both ends)
    assert s.loss_barrier_mean == pytest.approx(1.0) and s.loss_barrier_mean_alpha == 1.0
    assert s.loss_barrier_mid == pytest.approx(-0.8)
    assert s.acc_barrier == 0.0  # accuracy above its line everywhere


def test_midpoint_missing_from_grid_is_none_not_guessed() -> None:
    s = summarize_curve([0.0, 0.4, 1.0], [1.0, 5.0, 1.0], None)
    assert s.loss_barrier_mid is None and s.loss_barrier == pytest.approx(4.0)


def test_extrapolated_points_do_not_count() -> None:
    s = summarize_curve([-0.5, 0.0, 0.5, 1.0, 1.5], [100.0, 1.0, 2.0, 1.0, 100.0], None)
    assert s.loss_barrier == pytest.approx(1.0) and s.loss_barrier_alpha == 0.5


def test_nan_on_the_curve_is_not_hidden() -> None:
    s = summarize_curve([0.0, 0.5, 1.0], [1.0, math.nan, 1.0], None)
    assert math.isnan(s.loss_barrier)


def test_inputs_barrier_uses_the_input_losses() -> None:
    s = summarize_curve([0.0, 0.5, 1.0], [2.0, 3.0, 2.0], None, input_losses=(1.0, 1.0))
    assert s.loss_barrier == pytest.approx(1.0) and s.loss_barrier_inputs == pytest.approx(2.0)


@given(st.floats(-10, 10, allow_nan=False), st.integers(2, 30))
def test_constant_curve_has_exactly_zero_barrier(value: float, count: int) -> None:
    alphas = parse_alphas(f"0:1:{count}")
    s = summarize_curve(alphas, [value] * count, [value] * count)
    assert s.loss_barrier == 0.0 and s.acc_barrier == 0.0 and s.loss_barrier_mean == 0.0
    assert s.loss_barrier_mid in (None, 0.0)


@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=3, max_size=12))
def test_linear_barrier_is_nonnegative_and_below_the_mean_version_plus_gap(values: list[float]) -> None:
    alphas = parse_alphas(f"0:1:{len(values)}")
    s = summarize_curve(alphas, values, None)
    assert s.loss_barrier >= 0.0
    gap = abs(values[0] - values[-1]) / 2
    assert s.loss_barrier <= s.loss_barrier_mean + gap + 1e-9


def test_max_above_line_sign() -> None:
    assert max_above_line([0, 0.5, 1], [1.0, 0.0, 1.0], 1.0, 1.0, sign=-1.0).value == pytest.approx(1.0)


# -- data-free diagnostics -----------------------------------------------------------------------


def test_diagnostics_identical_endpoints() -> None:
    w = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    r = path_diagnostics({"w": w}, {"w": w.clone()}, [0.0, 0.5, 1.0], ScopeOptions(), torch.device("cpu"))
    assert r.layers[0].std_ratio == [1.0, 1.0, 1.0]
    assert r.summary["std_shrinkage"] == 0.0 and r.distance == 0.0 and r.cosine == pytest.approx(1.0)
    assert r.summary["max_scope_kl"] == pytest.approx(0.0, abs=1e-12)


def test_diagnostics_hand_computed() -> None:
    # A = [[1, -1]] (std 1) and B = [[-3, 3]] (std 3) point in opposite directions: the path
    # passes through zero, the classic variance collapse.
    a = {"w": torch.tensor([[1.0, -1.0]]), "b": torch.tensor([0.5])}
    b = {"w": torch.tensor([[-3.0, 3.0]]), "b": torch.tensor([0.5])}
    r = path_diagnostics(a, b, [0.0, 0.25, 0.5, 1.0], ScopeOptions(), torch.device("cpu"))
    lp = r.layers[0]
    assert [lp.std_a, lp.std_b] == [1.0, 3.0]
    # alpha .25: [[0, 0]] -> std 0, line 1.5 ; alpha .5: [[-1, 1]] std 1, line 2
    assert lp.std_ratio == pytest.approx([1.0, 0.0, 0.5, 1.0])
    assert r.summary["std_shrinkage"] == pytest.approx(1.0) and r.summary["min_std_ratio_alpha"] == 0.25
    assert lp.distance == pytest.approx(math.sqrt(16 + 16)) and lp.cosine == pytest.approx(-1.0)
    # whole model: w and the bias (distance 0); cosine over [1,-1,.5] and [-3,3,.5]
    assert r.distance == pytest.approx(math.sqrt(32))
    assert r.cosine == pytest.approx((-6 + 0.25) / math.sqrt(2.25 * 18.25))
    # fused target of N(0,1) and N(0,9) (moments): N(0, 5); KL at alpha .5 of N(0,1)
    kl = math.log(math.sqrt(5)) + 1 / 10 - 0.5
    assert lp.scope_kl[2] == pytest.approx(kl)


# -- modes ---------------------------------------------------------------------------------------


def test_builtin_modes_and_parsing() -> None:
    assert list(MODES)[:2] == ["naive", "wsa"]
    assert [m.name for m in parse_modes("wsa,naive")] == ["wsa", "naive"]
    with pytest.raises(InvalidValueError, match="unknown interpolation mode 'nope'; known: naive, wsa"):
        parse_modes("naive,nope")
    with pytest.raises(InvalidValueError, match="mode 'naive' is listed twice"):
        parse_modes("naive,naive")
    with pytest.raises(InvalidValueError, match="no mode given"):
        parse_modes(" , ")


def test_register_mode_plugs_in() -> None:
    register_mode("swap-test", lambda a, b, opts: (b, a), "B to A")
    try:
        a, b = get_mode("swap-test").prepare({"w": 1}, {"w": 2}, ModeOptions())
        assert (a, b) == ({"w": 2}, {"w": 1})
    finally:
        MODES.unregister("swap-test")


def test_wsa_mode_lands_both_endpoints_on_the_fused_scope() -> None:
    g = torch.Generator().manual_seed(4)
    a = {"w": torch.randn(16, 8, generator=g) * 0.1, "bias": torch.randn(16, generator=g)}
    b = {"w": torch.randn(16, 8, generator=g) * 2.0 + 1.0, "bias": torch.randn(16, generator=g)}
    pa, pb = get_mode("wsa").prepare(a, b, ModeOptions())
    # the fused scope by moment matching, from the endpoints' own statistics (population std)
    mus = [float(t["w"].double().mean()) for t in (a, b)]
    sds = [float(t["w"].double().std(correction=0)) for t in (a, b)]
    mu = sum(mus) / 2
    fused_std = math.sqrt(sum(s * s + (m - mu) ** 2 for m, s in zip(mus, sds, strict=True)) / 2)
    for prepared in (pa, pb):
        w = prepared["w"].double()
        assert float(w.mean()) == pytest.approx(mu, abs=1e-5)
        assert float(w.std(correction=0)) == pytest.approx(fused_std, rel=1e-5)
    assert pa["bias"] is a["bias"]  # not a layer by default: untouched
    assert pa["w"].dtype == a["w"].dtype


def test_wsa_mode_keeps_half_precision_dtype() -> None:
    g = torch.Generator().manual_seed(5)
    a = {"w": torch.randn(4, 4, generator=g).to(torch.bfloat16)}
    b = {"w": (torch.randn(4, 4, generator=g) * 3).to(torch.bfloat16)}
    pa, pb = get_mode("wsa").prepare(a, b, ModeOptions())
    assert pa["w"].dtype == torch.bfloat16 and pb["w"].dtype == torch.bfloat16


# -- report helpers ------------------------------------------------------------------------------


def test_sparkline() -> None:
    assert sparkline([0.0, 1.0, 2.0, 1.0, 0.0]) == "▁▅█▅▁"
    assert sparkline([1.0, None, math.nan, 1.0]) == "▁  ▁"
    assert sparkline([0.0, 1.0], lo=0.0, hi=10.0) == "▁▂"


def test_csv_rows_have_curve_then_summary(tmp_path) -> None:  # noqa: ANN001
    from wsa_cli.interpolate.run import InterpolationResult, ModeCurve

    res = InterpolationResult(
        "evaluation", "a", "b", [0.0, 1.0], "x", "cpu",
        [ModeCurve("naive", "d", [{"alpha": 0.0, "loss": 1.0}, {"alpha": 1.0, "loss": 2.0}], {"loss_barrier": 0.0})],
        ["loss"], {},
    )  # fmt: skip
    rows = csv_rows(res)
    assert [r["row"] for r in rows] == ["curve", "curve", "summary"]


def test_no_negative_zero_barriers() -> None:
    s = summarize_curve([0.0, 1.0], [1.0, 1.0], [0.5, 0.5])
    assert math.copysign(1.0, s.acc_barrier) == 1.0 and math.copysign(1.0, s.loss_barrier) == 1.0


def test_data_free_csv_names_every_column_once(tmp_path) -> None:  # noqa: ANN001
    import csv
    import io

    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from wsa_cli.cli.app import app

    g = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        save_file({"w": torch.randn(8, 8, generator=g), "v": torch.randn(8, 8, generator=g)}, tmp_path / f"{name}.safetensors")
    res = CliRunner().invoke(app, ["interpolate", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                                   "--alphas", "0:1:5", "--format", "csv"])  # fmt: skip
    assert res.exit_code == 0, res.output
    header = next(csv.reader(io.StringIO(res.stdout)))
    assert len(header) == len(set(header)) and "min_std_ratio" in header
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    summary = [r for r in rows if r["row"] == "summary"]
    curve = [r for r in rows if r["row"] == "curve"]
    assert summary and all(r["min_std_ratio"] for r in summary)
    assert min(float(r["min_std_ratio"]) for r in curve if r["mode"] == summary[0]["mode"]) == pytest.approx(float(summary[0]["min_std_ratio"]))
