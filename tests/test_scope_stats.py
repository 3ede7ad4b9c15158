"""Scope statistics against an independent computation (numpy/scipy), invariants, selection, kinds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsa_cli.fusion import Scope, gaussian_kl
from wsa_cli.scope import LayerSelector, layer_kind, stats_from_moments, tensor_moments, tensor_scope
from wsa_cli.inspection.report import layer_histogram

# Every dtype's values are exact in float64 and all products and sums are float64, so the only
# difference from numpy/scipy is summation order.
RTOL = 1e-9


def _reference(values: np.ndarray) -> dict[str, float]:
    """Independent numpy/scipy statistics on float64 copies of the same values."""
    finite = values[np.isfinite(values)]
    return {
        "mean": float(np.mean(finite)),
        "std": float(np.std(finite)),  # numpy's default ddof=0 is the population std
        "min": float(np.min(finite)),
        "max": float(np.max(finite)),
        "skewness": float(scipy.stats.skew(finite)),
        "excess_kurtosis": float(scipy.stats.kurtosis(finite)),  # Fisher: excess
        "zero_fraction": float(np.mean(values == 0)),
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk", [None, 1000])
def test_stats_match_numpy_scipy(dtype: torch.dtype, chunk: int | None) -> None:
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(257, 129, generator=g, dtype=torch.float64) ** 3 * 0.05 + 0.2).to(dtype)
    x.view(-1)[::17] = 0  # some exact zeros
    s = stats_from_moments("w", x.shape, x.dtype, "matrix", True, tensor_moments(x, chunk=chunk))
    ref = _reference(x.double().numpy())
    rtol = RTOL
    assert s.mean == pytest.approx(ref["mean"], rel=rtol, abs=1e-12)
    assert s.std == pytest.approx(ref["std"], rel=rtol)
    assert s.min == ref["min"] and s.max == ref["max"]
    assert s.zero_fraction == pytest.approx(ref["zero_fraction"])
    assert s.skewness == pytest.approx(ref["skewness"], rel=rtol)
    assert s.excess_kurtosis == pytest.approx(ref["excess_kurtosis"], rel=rtol)


def test_nan_inf_counted_and_excluded() -> None:
    x = torch.tensor([1.0, float("nan"), 2.0, float("inf"), -float("inf"), 3.0, 0.0])
    s = stats_from_moments("w", x.shape, x.dtype, "vector", True, tensor_moments(x))
    ref = _reference(x.numpy().astype(np.float64))
    assert (s.nan_count, s.inf_count) == (1, 2)
    assert s.mean == pytest.approx(ref["mean"]) and s.std == pytest.approx(ref["std"])
    assert s.zero_fraction == pytest.approx(1 / 7)


def test_all_nonfinite_tensor_has_undefined_moments() -> None:
    x = torch.full((4,), float("nan"))
    s = stats_from_moments("w", x.shape, x.dtype, "vector", True, tensor_moments(x))
    assert s.nan_count == 4 and s.mean is None and s.std is None and s.skewness is None


def test_constant_tensor_no_division_by_zero() -> None:
    x = torch.full((10, 10), 0.25)
    s = stats_from_moments("w", x.shape, x.dtype, "matrix", True, tensor_moments(x))
    assert s.std == 0.0 and s.mean == 0.25
    assert s.skewness is None and s.excess_kurtosis is None
    assert math.isfinite(gaussian_kl(s.mean, s.std, 0.0, 0.05))  # floored, finite


def test_huge_values_do_not_overflow() -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 1e15
    m = tensor_moments(x)
    ref = _reference(x.double().numpy())
    assert m.mean == pytest.approx(ref["mean"], rel=1e-9, abs=1e3)
    assert math.sqrt(m.var) == pytest.approx(ref["std"], rel=1e-9)


def test_integer_and_bool_tensors() -> None:
    m = tensor_moments(torch.tensor([1, 2, 3, 4], dtype=torch.int64))
    assert (m.mean, m.var) == (2.5, 1.25)
    assert tensor_moments(torch.tensor([True, False, False, False])).mean == 0.25


def test_empty_tensor() -> None:
    x = torch.zeros(0, 3)
    s = stats_from_moments("w", x.shape, x.dtype, "matrix", True, tensor_moments(x))
    assert s.numel == 0 and s.mean is None and s.zero_fraction == 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=7),
)
def test_chunking_does_not_change_moments(values: list[float], chunk: int) -> None:
    """Pébay's pairwise merge: any chunking gives the moments of the whole (float64 input)."""
    x = torch.tensor(values, dtype=torch.float64)
    whole, parts = tensor_moments(x, chunk=len(values)), tensor_moments(x, chunk=chunk)
    scale = max(1.0, float(x.abs().max()))
    assert parts.mean == pytest.approx(whole.mean, abs=1e-9 * scale)
    assert parts.m2 == pytest.approx(whole.m2, rel=1e-7, abs=1e-9 * scale**2)
    assert parts.m3 == pytest.approx(whole.m3, rel=1e-6, abs=1e-7 * scale**3)
    assert parts.m4 == pytest.approx(whole.m4, rel=1e-6, abs=1e-7 * scale**4)
    assert (parts.min, parts.max) == (min(values), max(values))


def test_tensor_scope_is_population_std() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert tensor_scope(x) == Scope(2.5, math.sqrt(1.25))
    assert tensor_scope(x).std == pytest.approx(float(x.std(correction=0)))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=7),
    st.floats(-1e4, 1e4),
)
def test_tensor_scope_agrees_with_moments_for_any_chunking(values: list[float], chunk: int, offset: float) -> None:
    """The two-sum blocks (centred again when they would cancel) give the float64 moments' scope,
    also with a mean far from 0 relative to the spread."""
    x = torch.tensor(values, dtype=torch.float64) + offset
    m = tensor_moments(x)
    s = tensor_scope(x, chunk=chunk)
    scale = max(1.0, float(x.abs().max()))
    assert s.mean == pytest.approx(m.mean, rel=1e-12, abs=1e-12 * scale)
    assert s.std == pytest.approx(math.sqrt(m.var), rel=1e-6, abs=1e-7 * scale)


def test_tensor_scope_skips_nonfinite_values_block_by_block() -> None:
    x = torch.tensor([1.0, float("nan"), 3.0, float("inf"), 5.0, -float("inf"), float("nan"), float("nan")])
    finite = x[torch.isfinite(x)]
    for chunk in (1, 2, 3, 8):
        s = tensor_scope(x, chunk=chunk)
        assert s.mean == pytest.approx(3.0) and s.std == pytest.approx(float(finite.std(correction=0))), chunk
    assert tensor_scope(torch.full((4,), float("nan"))) == Scope(0.0, 0.0)


def test_tensor_scope_buffer_is_reused_or_replaced_and_input_untouched() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1000, generator=g).bfloat16() + 50  # far from 0: the block is centred in scratch
    before = x.clone()
    expected = tensor_scope(x)
    for buffer in (torch.empty(16, dtype=torch.float64), torch.empty(4096, dtype=torch.float64), torch.empty(8)):
        got = tensor_scope(x, chunk=300, buffer=buffer)
        assert (got.mean, got.std) == pytest.approx((expected.mean, expected.std), rel=1e-12)
    assert torch.equal(x, before)
    assert tensor_scope(torch.empty(0), buffer=torch.empty(4, dtype=torch.float64)) == Scope(0.0, 0.0)


# -- KL ------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    st.floats(-5, 5), st.floats(1e-3, 5), st.floats(-5, 5), st.floats(1e-3, 5),
)
def test_kl_matches_torch_distributions(mu_p: float, s_p: float, mu_q: float, s_q: float) -> None:
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(torch.tensor(mu_p, dtype=torch.float64), torch.tensor(s_p, dtype=torch.float64)),
        torch.distributions.Normal(torch.tensor(mu_q, dtype=torch.float64), torch.tensor(s_q, dtype=torch.float64)),
    )
    assert gaussian_kl(mu_p, s_p, mu_q, s_q) == pytest.approx(float(ref), rel=1e-9, abs=1e-12)
    assert gaussian_kl(mu_p, s_p, mu_q, s_q) >= 0
    assert gaussian_kl(mu_p, s_p, mu_p, s_p) == 0


def test_kl_tensor_form_is_differentiable() -> None:
    mu = torch.tensor(0.3, requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    kl = gaussian_kl(mu, s, 0.0, 1.0)
    kl.backward()
    # d/dmu = mu / s_q^2; d/ds = -1/s + s / s_q^2
    assert mu.grad.item() == pytest.approx(0.3)
    assert s.grad.item() == pytest.approx(-1 / 0.5 + 0.5)


# -- selection and kinds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "shape", "dtype", "include", "exclude", "expected"),
    [
        ("fc.weight", (4, 4), torch.float32, (), (), True),
        ("fc.bias", (4,), torch.float32, (), (), False),
        ("fc.bias", (4,), torch.float32, ("*.bias",), (), True),
        ("fc.weight", (4, 4), torch.float32, (), ("fc.*",), False),
        ("fc.weight", (4, 4), torch.float32, ("fc.*",), ("fc.*",), False),  # exclude wins
        ("conv.weight", (4, 3, 3, 3), torch.bfloat16, (), (), True),
        ("ids", (4, 4), torch.int64, ("*",), (), False),  # integers are never layers
        ("h.0.attn.weight", (4, 4), torch.float16, (), ("re:attn",), False),
        ("h.0.mlp.weight", (4, 4), torch.float16, (), ("re:attn",), True),
    ],
)
def test_layer_selection(key, shape, dtype, include, exclude, expected) -> None:  # noqa: ANN001
    assert LayerSelector(include=include, exclude=exclude).selects(key, shape, dtype) is expected


def test_bad_regex_is_a_usage_error() -> None:
    from wsa_cli.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="bad regular expression"):
        LayerSelector(include=("re:(",))


@pytest.mark.parametrize(
    ("key", "shape", "dtype", "kind"),
    [
        ("features.0.weight", (16, 3, 3, 3), torch.float32, "conv"),
        ("fc.weight", (10, 4), torch.float32, "matrix"),
        ("fc.bias", (10,), torch.float32, "bias"),
        ("bn1.weight", (16,), torch.float32, "norm"),
        ("layer_norm.bias", (16,), torch.float32, "norm"),
        ("bn1.running_mean", (16,), torch.float32, "buffer"),
        ("bn1.num_batches_tracked", (), torch.int64, "integer"),
        ("transformer.wte.weight", (100, 16), torch.float16, "embedding"),
        ("logit_scale", (), torch.float32, "scalar"),
    ],
)
def test_layer_kind(key, shape, dtype, kind) -> None:  # noqa: ANN001
    assert layer_kind(key, shape, dtype) == kind


def test_histogram_counts_and_gaussian_mass() -> None:
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(0))
    h = layer_histogram(x, "w", bins=25)
    assert sum(h.counts) == 20_000
    np_counts, _ = np.histogram(x.double().numpy(), bins=np.array(h.edges))
    assert h.counts == np_counts.tolist()
    assert sum(h.gaussian) == pytest.approx(20_000, rel=0.01)  # nearly all mass within [min, max]


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_tensors_have_moments_like_their_float32_values(dtype) -> None:
    # float8 kinds lack count_nonzero/aminmax kernels on the CPU; stats come from the float64 copy
    t = (torch.randn(16, 8, generator=torch.Generator().manual_seed(0))).to(dtype)
    t[0, 0] = 0.0
    m, ref = tensor_moments(t), tensor_moments(t.float())
    assert (m.n, m.zeros, m.min, m.max) == (ref.n, ref.zeros, ref.min, ref.max)
    assert m.mean == pytest.approx(ref.mean) and m.var == pytest.approx(ref.var)
    assert tensor_scope(t) == pytest.approx(tensor_scope(t.float()))
