"""The KL scope regularizer: values, gradients (closed form, autograd, Monte Carlo), options."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsa_cli.errors import ConfigError, InvalidValueError
from wsa_cli.fusion import Scope
from wsa_cli.regularize import ScopeRegularizer, differentiable_scope, layer_kl
from wsa_cli.scope import LayerSelector
from wsa_cli.threads import small_model_threads


def kl_closed_form(mu_p: float, s_p: float, mu_q: float, s_q: float) -> float:
    """The issue's formula, written out independently of the library."""
    return math.log(s_q / s_p) + (s_p**2 + (mu_p - mu_q) ** 2) / (2 * s_q**2) - 0.5


def _pop_stats(w: torch.Tensor) -> tuple[float, float]:
    x = w.double().flatten()
    return float(x.mean()), float(x.std(correction=0))


def test_differentiable_scope_is_population_mean_and_std():
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    mu, s = differentiable_scope(w)
    m_ref, s_ref = _pop_stats(w)
    assert float(mu) == pytest.approx(m_ref, abs=1e-6)
    assert float(s) == pytest.approx(s_ref, rel=1e-6)
    mu16, s16 = differentiable_scope(w.to(torch.bfloat16))
    assert mu16.dtype == torch.float32 and s16.dtype == torch.float32


@settings(max_examples=60, deadline=None)
@given(
    mean=st.floats(-2, 2), scale=st.floats(0.01, 3), mu_t=st.floats(-2, 2), s_t=st.floats(0.01, 3),
    seed=st.integers(0, 10_000),
)  # fmt: skip
def test_layer_kl_matches_closed_form_and_is_nonnegative(mean, scale, mu_t, s_t, seed):
    w = (torch.randn(64, generator=torch.Generator().manual_seed(seed)) * scale + mean).double()
    mu, s = _pop_stats(w)
    fwd = float(layer_kl(w, Scope(mu_t, s_t), "forward"))
    rev = float(layer_kl(w, Scope(mu_t, s_t), "reverse"))
    assert fwd == pytest.approx(kl_closed_form(mu, s, mu_t, s_t), rel=1e-9, abs=1e-9)
    assert rev == pytest.approx(kl_closed_form(mu_t, s_t, mu, s), rel=1e-9, abs=1e-9)
    assert fwd >= -1e-12 and rev >= -1e-12


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 5))
def test_kl_to_own_scope_is_zero(seed, scale):
    w = torch.randn(5, 9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    mu, s = _pop_stats(w)
    assert abs(float(layer_kl(w, Scope(mu, s)))) < 1e-9
    assert abs(float(layer_kl(w, Scope(mu, s), "reverse"))) < 1e-9


def _analytic_grad(w: torch.Tensor, t: Scope, direction: str) -> torch.Tensor:
    """dKL/dw_i by hand: dKL/dmu * 1/n + dKL/ds * (w_i - mu) / (n s)."""
    x = w.double()
    n = x.numel()
    mu = float(x.mean())
    s = float(x.std(correction=0))
    if direction == "forward":
        g_mu = (mu - t.mean) / t.std**2
        g_s = -1.0 / s + s / t.std**2
    else:
        g_mu = (mu - t.mean) / s**2
        g_s = 1.0 / s - (t.std**2 + (t.mean - mu) ** 2) / s**3
    return g_mu / n + g_s * (x - mu) / (n * s)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gradient_matches_hand_derivative_and_autograd_of_closed_form(direction):
    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(12, 6, generator=gen, dtype=torch.float64) * 0.3 + 0.1).requires_grad_(True)
    target = Scope(-0.05, 0.2)
    reg = ScopeRegularizer(target, coef=1.0, direction=direction)
    reg({"layer.weight": w}).backward()
    torch.testing.assert_close(w.grad, _analytic_grad(w.detach(), target, direction), rtol=1e-9, atol=1e-12)

    # autograd of the closed form on (mu, s) as leaves, chained to w by hand
    mu_l = torch.tensor(float(w.detach().mean()), dtype=torch.float64, requires_grad=True)
    s_l = torch.tensor(float(w.detach().std(correction=0)), dtype=torch.float64, requires_grad=True)
    mt, st_ = torch.tensor(target.mean, dtype=torch.float64), torch.tensor(target.std, dtype=torch.float64)
    if direction == "forward":
        kl = torch.log(st_ / s_l) + (s_l**2 + (mu_l - mt) ** 2) / (2 * st_**2) - 0.5
    else:
        kl = torch.log(s_l / st_) + (st_**2 + (mt - mu_l) ** 2) / (2 * s_l**2) - 0.5
    kl.backward()
    x = w.detach()
    n = x.numel()
    chained = mu_l.grad / n + s_l.grad * (x - mu_l.detach()) / (n * s_l.detach())
    torch.testing.assert_close(w.grad, chained, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gradient_agrees_with_monte_carlo_estimate(direction):
    """Reparameterised Monte-Carlo KL, differentiated by autograd, vs the regularizer's gradient."""
    gen = torch.Generator().manual_seed(7)
    w = (torch.randn(40, 10, generator=gen, dtype=torch.float64) * 0.4 + 0.2).requires_grad_(True)
    target = Scope(0.0, 0.3)
    ScopeRegularizer(target, coef=1.0, direction=direction)({"w": w}).backward()

    mu0, s0 = _pop_stats(w.detach())
    mu = torch.tensor(mu0, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(400_000, generator=torch.Generator().manual_seed(11), dtype=torch.float64)

    def log_normal(x, m, sd):  # noqa: ANN001, ANN202
        return -torch.log(sd) - 0.5 * math.log(2 * math.pi) - (x - m) ** 2 / (2 * sd**2)

    mt = torch.tensor(target.mean, dtype=torch.float64)
    st_ = torch.tensor(target.std, dtype=torch.float64)
    if direction == "forward":  # E_{x ~ N(mu, s^2)} [log p(x) - log q(x)], x = mu + s * eps
        x = mu + s * eps
        mc = (log_normal(x, mu, s) - log_normal(x, mt, st_)).mean()
    else:  # E_{x ~ target} [log q(x) - log p(x)]: samples do not depend on (mu, s)
        x = mt + st_ * eps
        mc = (log_normal(x, mt, st_) - log_normal(x, mu, s)).mean()
    mc.backward()
    assert float(mc.detach()) == pytest.approx(float(layer_kl(w.detach(), target, direction)), rel=0.02, abs=2e-3)
    n = w.numel()
    expected = mu.grad / n + s.grad * (w.detach() - mu0) / (n * s0)
    torch.testing.assert_close(w.grad, expected, rtol=0.03, atol=0.03 * float(expected.abs().max()))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def test_sum_mean_and_coefficient():
    model = _model()
    t = Scope(0.0, 0.1)
    kl = {k: float(layer_kl(p.detach(), t)) for k, p in model.named_parameters() if p.ndim >= 2}
    s = ScopeRegularizer(t, coef=0.5, reduction="sum")
    m = ScopeRegularizer(t, coef=0.5, reduction="mean")
    assert float(s(model).detach()) == pytest.approx(0.5 * sum(kl.values()), rel=1e-6)
    assert float(m(model).detach()) == pytest.approx(0.5 * sum(kl.values()) / 2, rel=1e-6)
    assert s.last_values == pytest.approx(kl, rel=1e-6)
    assert set(s.last_values) == {"0.weight", "2.weight"}  # biases are not layers by default
    assert s.last_total == pytest.approx(float(s(model).detach()))
    assert float(ScopeRegularizer(t, coef=0.0)(model).detach()) == 0.0


def test_layer_selection_rules_are_the_shared_ones():
    model = _model()
    t = Scope(0.0, 0.1)
    with_bias = ScopeRegularizer(t, selector=LayerSelector(include=("*.bias",)))
    with_bias(model)
    assert set(with_bias.last_values) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    only_first = ScopeRegularizer(t, selector=LayerSelector(exclude=("2.*",)))
    only_first(model)
    assert set(only_first.last_values) == {"0.weight"}


def test_targets_from_model_state_dict_and_table():
    model = _model()
    ref = _model()
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(3.0)
    from_module = ScopeRegularizer(ref, coef=1.0)
    from_sd = ScopeRegularizer(ref.state_dict(), coef=1.0)
    assert float(from_module(model).detach()) == pytest.approx(float(from_sd(model).detach()))
    assert float(from_module(ref).detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(from_module(model).detach()) > 0.1  # std differs by 3x in every layer
    table = {"0.weight": Scope(0.0, 0.2)}
    with pytest.raises(ConfigError, match="2.weight"):
        ScopeRegularizer(table)(model)
    skip = ScopeRegularizer(table, missing="skip")
    skip(model)
    assert set(skip.last_values) == {"0.weight"} and skip.skipped == ["2.weight"]
    with pytest.raises(ConfigError, match="none of the model"):
        ScopeRegularizer({"other.weight": Scope(0.0, 1.0)}, missing="skip")(model)


def test_bad_options_are_usage_errors():
    with pytest.raises(InvalidValueError):
        ScopeRegularizer(Scope(0.0, 0.1), reduction="max")
    with pytest.raises(InvalidValueError):
        ScopeRegularizer(Scope(0.0, 0.1), direction="sideways")
    with pytest.raises(InvalidValueError):
        ScopeRegularizer(Scope(0.0, 0.1), coef=-1)
    with pytest.raises(InvalidValueError):
        ScopeRegularizer(Scope(0.0, 0.0))
    with pytest.raises(ConfigError):
        ScopeRegularizer({"a.weight": Scope(0.0, 0.0)})


def test_gradient_descent_on_the_penalty_reaches_the_target():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    target = Scope(0.25, 0.05)
    reg = ScopeRegularizer(target, coef=1.0)
    opt = torch.optim.Adam([w], lr=0.02)
    with small_model_threads("cpu", w.numel()):  # tiny tensors: one thread is much faster
        for _ in range(400):
            opt.zero_grad()
            reg({"w.weight": w}).backward()
            opt.step()
    mu, s = _pop_stats(w.detach())
    assert mu == pytest.approx(0.25, abs=5e-3)
    assert s == pytest.approx(0.05, rel=0.05)
