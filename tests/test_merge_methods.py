"""Merge methods against independent NumPy implementations written straight from the papers.

The references below do not import wsa's method code: they re-derive each formula in float64.
* average: McMahan et al. 2017 (FedAvg) -- sum_i p_i theta_i with p normalised;
* task arithmetic: Ilharco et al. 2023 -- theta_0 + lambda * sum_i tau_i;
* TIES: Yadav et al. 2023 -- trim top-k% by magnitude, elect sign by sum, disjoint mean;
* DARE: Yu et al. 2024 -- drop with p, rescale by 1 / (1 - p) (mask taken from wsa, the rest re-derived);
* Model Breadcrumbs: Davari & Belilovsky 2024 -- drop the top gamma by magnitude, keep the next density;
* DELLA: Deep et al. 2024 -- keep with probabilities density +- epsilon by magnitude rank, rescale by 1 / p
  (the uniform draws are wsa's seeded ones; ranks, probabilities, masks and rescaling re-derived);
* SLERP: Shoemake 1985;
* multislerp, karcher: Buss & Fillmore 2001 (tangent mean, exp map); nuslerp: mergekit's NuSLERP.
Every built-in method must have an entry in :data:`REFERENCES` (a test over the registry fails
naming a method without one), and every block form is checked over the registry too.
Then the same comparison runs end to end through `wsa merge` on real files (alignment off and on).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from wsa_cli.cli.app import app
from wsa_cli.errors import InvalidValueError
from wsa_cli.io import save_safetensors
from wsa_cli.merge import METHODS, BlockInputs, MethodContext, all_methods, get_method
from wsa_cli.merge.kernel import AlignedInput
from wsa_cli.merge.draws import seeded_uniform
from wsa_cli.merge.task_vectors import dare_mask

# -- references (NumPy, float64) --------------------------------------------------------------------


def ref_average(xs, w):
    p = np.asarray(w, dtype=np.float64) / np.sum(w)
    return sum(pi * x for pi, x in zip(p, xs, strict=True))


def ref_task_arithmetic(xs, base, lam, w):
    return base + lam * sum(wi * (x - base) for wi, x in zip(w, xs, strict=True))


def ref_trim(tau, density):
    flat = np.abs(tau).ravel()
    k = int(density * flat.size)
    if k <= 0:
        return np.zeros_like(tau)
    if k >= flat.size:
        return tau.copy()
    threshold = np.sort(flat)[::-1][k - 1]  # k-th largest magnitude
    return np.where(np.abs(tau) >= threshold, tau, 0.0)


def ref_ties_combine(taus, w):
    T = np.stack(taus)  # (K, ...)
    W = np.asarray(w, dtype=np.float64).reshape((-1,) + (1,) * (T.ndim - 1))
    gamma = np.sign((W * T).sum(0))  # elected sign
    agree = (np.sign(T) == gamma) & (T != 0)
    num = (agree * T * W).sum(0)
    den = (agree * W).sum(0)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def ref_ties(xs, base, density, lam, w):
    taus = [ref_trim(x - base, density) for x in xs]
    return base + lam * ref_ties_combine(taus, w)


def ref_slerp(p0, p1, t):
    a, b = p0.ravel(), p1.ravel()
    cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    omega = np.arccos(np.clip(cos, -1, 1))
    return (np.sin((1 - t) * omega) * p0 + np.sin(t * omega) * p1) / np.sin(omega)


def ref_dare(xs, base, p, lam, w, ctx, consensus, normalize=False):
    """DARE: drop with p (the mask is wsa's seeded one), rescale by 1 / (1 - p), then sum or TIES-combine."""
    taus = []
    for i, x in enumerate(xs):
        tau = x - base
        if p > 0:
            keep = dare_mask(tau.shape, p, ctx.generator_seed(i)).numpy()
            tau = np.where(keep, tau / (1 - p), 0.0)
        taus.append(tau)
    if consensus:
        return base + lam * ref_ties_combine(taus, w)
    div = np.sum(w) if normalize else 1.0
    return base + lam * sum(wi * t for wi, t in zip(w, taus, strict=True)) / div


def ref_breadcrumbs_mask(tau, density, gamma):
    """Breadcrumbs: without the top floor(gamma n) magnitudes, keep the next floor(density n) (ties: upper out, lower in)."""
    mag = np.abs(tau)
    desc = np.sort(mag.ravel())[::-1]
    n = desc.size
    k = int(density * n)
    t = min(int(gamma * n), n - k)
    if k >= n:
        return np.ones(tau.shape, dtype=bool)
    if k == 0:
        return np.zeros(tau.shape, dtype=bool)
    upper = desc[t - 1] if t > 0 else np.inf
    return (mag >= desc[t + k - 1]) & (mag < upper)


def ref_breadcrumbs(xs, base, density, gamma, lam, w, consensus):
    taus = [np.where(ref_breadcrumbs_mask(x - base, density, gamma), x - base, 0.0) for x in xs]
    if consensus:
        return base + lam * ref_ties_combine(taus, w)
    return base + lam * sum(wi * t for wi, t in zip(w, taus, strict=True))


def ref_della_probabilities(tau, density, epsilon):
    """DELLA keep probabilities: per row (dim 0 of a 2+-d tensor), np.linspace(d - e, d + e, m) indexed by magnitude rank."""
    rows = tau.reshape(tau.shape[0], -1) if tau.ndim >= 2 else tau.reshape(1, -1)
    m = rows.shape[1]
    probs = np.empty(rows.shape)
    for j, row in enumerate(np.abs(rows)):
        rank = np.empty(m, dtype=np.int64)
        rank[np.argsort(row, kind="stable")] = np.arange(m)  # 0 = smallest magnitude
        probs[j] = density if m == 1 else np.linspace(density - epsilon, density + epsilon, m)[rank]
    return probs.reshape(tau.shape)


def ref_della(xs, base, density, epsilon, lam, w, ctx, consensus):
    taus = []
    for i, x in enumerate(xs):
        tau = x - base
        p = ref_della_probabilities(tau, density, epsilon)
        u = seeded_uniform(tau.size, ctx.generator_seed(i)).numpy().reshape(tau.shape)
        taus.append(np.where(u >= 1.0 - p, tau / p, 0.0))  # keep with probability p (DARE's draw), rescale by 1 / p
    if consensus:
        return base + lam * ref_ties_combine(taus, w)
    return base + lam * sum(wi * t for wi, t in zip(w, taus, strict=True))


#: One independent reference per built-in method: ``(xs, base, w, params, ctx) -> ndarray``
#: over float64 NumPy arrays with the method's resolved parameters.
def ref_model_stock(xs, base):
    """Jang et al. 2024: t = N cos / (1 + (N - 1) cos), cos = mean pairwise cosine of the task vectors."""
    taus = [(x - base).ravel() for x in xs]
    cos = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for i, a in enumerate(taus) for b in taus[i + 1 :]]
    c = min(max(float(np.mean(cos)), 0.0), 1.0)
    t = len(xs) * c / (1 + (len(xs) - 1) * c)
    return t * np.mean(xs, axis=0) + (1 - t) * base


def ref_sphere_mean(xs, w, max_iter, tol, base=None):
    """Buss & Fillmore 2001 on the flattened vectors: start at the normalised weighted Euclidean mean of the
    unit vectors, m <- exp_m(sum_i p_i log_m(u_i)) until |tangent| < tol, rescale by sum_i p_i |x_i|.
    max_iter=1, tol=0: multislerp's single step. With a base: on x_i - base, plus the base."""
    ys = [(x - base if base is not None else x).ravel() for x in xs]
    p = np.asarray(w, dtype=np.float64) / np.sum(w)
    norms = np.array([np.linalg.norm(y) for y in ys])
    units = np.stack([y / n for y, n in zip(ys, norms, strict=True)])  # (K, n)
    m = p @ units
    m /= np.linalg.norm(m)
    for _ in range(max_iter):
        cos = np.clip(units @ m, -1.0, 1.0)
        theta = np.arccos(cos)
        factor = np.where(theta > 1e-9, theta / np.sin(np.maximum(theta, 1e-300)), 1.0)
        v = ((p * factor)[:, None] * (units - cos[:, None] * m)).sum(0)  # the tangent mean
        vn = np.linalg.norm(v)
        if vn < tol:
            break
        m = np.cos(vn) * m + np.sin(vn) * v / vn
        m /= np.linalg.norm(m)
    out = (float(p @ norms) * m).reshape(xs[0].shape)
    return out + base if base is not None else out


def ref_nuslerp(xs, base, w, p):
    """mergekit's NuSLERP: t = w_1 / (w_0 + w_1); Shoemake's slerp on the flat tensor, or per slice along the last
    dimension (row_wise false) or the first (row_wise true); with task_vectors, on x_i - base, plus the base."""
    t = w[1] / (w[0] + w[1])
    a, b = (xs[0] - base, xs[1] - base) if p["task_vectors"] else (xs[0], xs[1])
    if p["flatten"] or a.ndim <= 1:
        out = ref_slerp(a, b, t)
    else:
        a2, b2 = (np.moveaxis(a, 0, -1), np.moveaxis(b, 0, -1)) if p["row_wise"] else (a, b)
        rows = [ref_slerp(r0, r1, t) for r0, r1 in zip(a2.reshape(-1, a2.shape[-1]), b2.reshape(-1, b2.shape[-1]), strict=True)]
        out = np.stack(rows).reshape(a2.shape)
        out = np.moveaxis(out, -1, 0) if p["row_wise"] else out
    return out + base if p["task_vectors"] else out


REFERENCES = {
    "linear": lambda xs, base, w, p, ctx: ref_average(xs, w) if p["normalize"] else sum(wi * x for wi, x in zip(w, xs, strict=True)),
    "task_arithmetic": lambda xs, base, w, p, ctx: ref_task_arithmetic(xs, base, p["scale"] / (np.sum(w) if p["normalize"] else 1.0), w),
    "ties": lambda xs, base, w, p, ctx: ref_ties(xs, base, p["density"], p["scale"], w),
    "dare_linear": lambda xs, base, w, p, ctx: ref_dare(xs, base, p["drop_rate"], p["scale"], w, ctx, False, p["normalize"]),
    "dare_ties": lambda xs, base, w, p, ctx: ref_dare(xs, base, p["drop_rate"], p["scale"], w, ctx, True),
    "breadcrumbs": lambda xs, base, w, p, ctx: ref_breadcrumbs(xs, base, p["density"], p["gamma"], p["scale"], w, False),
    "breadcrumbs_ties": lambda xs, base, w, p, ctx: ref_breadcrumbs(xs, base, p["density"], p["gamma"], p["scale"], w, True),
    "della": lambda xs, base, w, p, ctx: ref_della(xs, base, p["density"], p["epsilon"], p["scale"], w, ctx, True),
    "della_linear": lambda xs, base, w, p, ctx: ref_della(xs, base, p["density"], p["epsilon"], p["scale"], w, ctx, False),
    "slerp": lambda xs, base, w, p, ctx: ref_slerp(xs[0], xs[1], p["t"]),
    "copy": lambda xs, base, w, p, ctx: base if p["model"] == -1 else xs[p["model"]],
    "passthrough": lambda xs, base, w, p, ctx: xs[0],
    "model_stock": lambda xs, base, w, p, ctx: ref_model_stock(xs, base),
    "multislerp": lambda xs, base, w, p, ctx: ref_sphere_mean(xs, w, 1, 0.0, base if p["task_vectors"] else None),
    "karcher": lambda xs, base, w, p, ctx: ref_sphere_mean(xs, w, p["max_iter"], p["tol"], base if p["task_vectors"] else None),
    "nuslerp": lambda xs, base, w, p, ctx: ref_nuslerp(xs, base, w, p),
}


def ref_wsa_align(xs, w):
    """Moment fusion + affine rescale (the WSA step), re-derived."""
    mus = np.array([x.mean() for x in xs])
    sds = np.array([x.std() for x in xs])  # population std
    p = np.asarray(w, dtype=np.float64) / np.sum(w)
    mu = np.sum(p * mus)
    sd = math.sqrt(np.sum(p * (sds**2 + (mus - mu) ** 2)))
    return [(x - m) / s * sd + mu for x, m, s in zip(xs, mus, sds, strict=True)]


# -- helpers --------------------------------------------------------------------------------------------


def _tensors(k, shape=(12, 10), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=dtype)
    xs = [base + 0.3 * (i + 1) * torch.randn(shape, generator=g, dtype=dtype) + 0.1 * i for i in range(k)]
    return xs, base


def _run(name, xs, base, w, params, key="fc.weight", seed=0):
    m = get_method(name)
    return m.fn(xs, base, w, m.resolve_params(params), MethodContext(key, seed))


def _np(t):
    return t.detach().to(torch.float64).numpy()


def _model_count(m, want=3):
    """A model count the method accepts, as close to ``want`` as it allows."""
    return max(m.min_models, min(want, m.max_models or want))


BUILTIN_NAMES = [m.name for m in all_methods() if METHODS.is_builtin(m.name)]


# -- direct method calls ----------------------------------------------------------------------------------


@pytest.mark.parametrize("w", [[1, 1, 1], [1, 2, 5], [0.2, 0.0, 0.8]])
def test_linear_matches_fedavg(w):
    xs, _ = _tensors(3)
    np.testing.assert_allclose(_np(_run("linear", xs, None, w, {})), ref_average([_np(x) for x in xs], w), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("lam", "w"), [(1.0, [1, 1]), (0.4, [1, 3]), (-0.5, [1, 1])])
def test_task_arithmetic_matches_ilharco(lam, w):
    xs, base = _tensors(2, seed=3)
    got = _run("task_arithmetic", xs, base, w, {"scale": lam})
    want = ref_task_arithmetic([_np(x) for x in xs], _np(base), lam, w)
    np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("density", "lam", "w", "k"), [(0.2, 1.0, [1, 1, 1], 3), (0.5, 0.7, [1, 2, 1], 3), (1.0, 1.0, [1, 1], 2), (0.0, 1.0, [1, 1], 2), (0.33, 1.3, [3, 1, 1, 2], 4)])
def test_ties_matches_yadav(density, lam, w, k):
    xs, base = _tensors(k, seed=5)
    got = _run("ties", xs, base, w, {"density": density, "scale": lam})
    want = ref_ties([_np(x) for x in xs], _np(base), density, lam, w)
    np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=1e-12)


def test_ties_float32_agrees_within_tolerance():
    xs, base = _tensors(3, seed=11, dtype=torch.float32)
    got = _run("ties", xs, base, [1, 1, 1], {"density": 0.3})
    want = ref_ties([_np(x) for x in xs], _np(base), 0.3, 1.0, [1, 1, 1])
    np.testing.assert_allclose(_np(got), want, rtol=1e-5, atol=1e-5)


def test_ties_sign_election_by_hand():
    base = torch.zeros(3, dtype=torch.float64)
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    b = torch.tensor([3.0, 1.0, -0.5], dtype=torch.float64)
    # elected signs: +, -, 0 (tie) -> means over agreeing: (1+3)/2, -2, 0
    out = _run("ties", [a, b], base, [1, 1], {"density": 1.0})
    assert out.tolist() == [2.0, -2.0, 0.0]


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_dare_matches_yu(name, p):
    xs, base = _tensors(3, shape=(40, 30), seed=7)
    seed, key, lam, w = 13, "layer.weight", 0.8, [1, 2, 1]
    got = _run(name, xs, base, w, {"drop_rate": p, "scale": lam}, key=key, seed=seed)
    want = ref_dare([_np(x) for x in xs], _np(base), p, lam, w, MethodContext(key, seed), consensus=name == "dare_ties")
    np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=1e-12)


def test_dare_is_seeded_and_drops_about_p():
    xs, base = _tensors(1, shape=(200, 100), seed=1)
    a = _run("dare_linear", xs, base, [1], {"drop_rate": 0.7}, seed=4)
    b = _run("dare_linear", xs, base, [1], {"drop_rate": 0.7}, seed=4)
    c = _run("dare_linear", xs, base, [1], {"drop_rate": 0.7}, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = (a - base != 0).double().mean().item()
    assert abs(kept - 0.3) < 0.02  # 20000 Bernoulli(0.3) draws: sd ~ 0.003
    tau = xs[0] - base
    nz = a - base != 0
    torch.testing.assert_close((a - base)[nz], tau[nz] / 0.3)  # survivors rescaled by 1/(1-p)


@pytest.mark.parametrize("name", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize(("density", "gamma", "lam", "w", "k"), [(0.9, 0.01, 1.0, [1, 1, 1], 3), (0.5, 0.2, 0.7, [1, 2, 1], 3),
                                                               (0.3, 0.0, 1.0, [1, 1], 2), (0.0, 0.5, 1.0, [1, 1], 2), (0.6, 0.4, 1.3, [3, 1, 1, 2], 4)])  # fmt: skip
def test_breadcrumbs_matches_davari(name, density, gamma, lam, w, k):
    xs, base = _tensors(k, seed=5)
    got = _run(name, xs, base, w, {"density": density, "gamma": gamma, "scale": lam})
    want = ref_breadcrumbs([_np(x) for x in xs], _np(base), density, gamma, lam, w, consensus=name == "breadcrumbs_ties")
    np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=1e-12)


def test_breadcrumbs_removes_exactly_the_top_gamma_and_keeps_density():
    g = torch.Generator().manual_seed(3)
    magnitudes = torch.randperm(200, generator=g).double() + 1.0  # 1..200, all distinct
    signs = torch.where(torch.rand(200, generator=g) < 0.5, -1.0, 1.0).double()
    tau = (magnitudes * signs).reshape(20, 10)
    base = torch.zeros(20, 10, dtype=torch.float64)
    out = _run("breadcrumbs", [base + tau], base, [1], {"density": 0.8, "gamma": 0.05})
    kept = out != 0
    assert int(kept.sum()) == 160  # density 0.8 of 200
    assert torch.equal(out[kept], tau[kept])  # survivors unchanged (no rescaling)
    assert set(tau.abs()[kept].long().tolist()) == set(range(31, 191))  # the top 10 (191..200) and the smallest 30 go
    # ties: both entries tied at the upper threshold go, both tied at the lower one stay
    tied = torch.tensor([5.0, -5.0, 4.0, 3.0, -3.0, 1.0], dtype=torch.float64)
    out = _run("breadcrumbs", [tied], torch.zeros(6, dtype=torch.float64), [1], {"density": 0.5, "gamma": 1 / 6})
    assert out.tolist() == [0.0, 0.0, 4.0, 3.0, -3.0, 0.0]
    # gamma = 0 is TIES's trim
    xs, b = _tensors(2, seed=4)
    torch.testing.assert_close(_run("breadcrumbs_ties", xs, b, [1, 2], {"density": 0.3, "gamma": 0.0}), _run("ties", xs, b, [1, 2], {"density": 0.3}), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "bad"), [("breadcrumbs", {"density": 0.9, "gamma": 0.2}), ("breadcrumbs_ties", {"density": 1.0, "gamma": 0.01}),
                                          ("della", {"density": 0.9, "epsilon": 0.15}), ("della_linear", {"density": 0.1, "epsilon": 0.1})])  # fmt: skip
def test_breadcrumbs_and_della_refuse_fractions_out_of_range(name, bad):
    m = get_method(name)
    with pytest.raises(InvalidValueError, match=r"density \+ gamma must be at most 1|density \+- epsilon must stay in \(0, 1\]"):
        m.validate(m.resolve_params(bad), 2, has_base=True)
    ok = {"density": 0.7, "gamma": 0.3} if "gamma" in m.param_names() else {"density": 0.5, "epsilon": 0.5 - 1e-9}
    m.validate(m.resolve_params(ok), 2, has_base=True)  # the boundary itself is allowed
    with pytest.raises(InvalidValueError, match="needs a base model"):
        m.validate(m.resolve_params({}), 2, has_base=False)


@pytest.mark.parametrize("name", ["della", "della_linear"])
@pytest.mark.parametrize(("density", "epsilon", "shape"), [(0.7, 0.15, (40, 30)), (0.5, 0.45, (40, 30)), (0.3, 0.0, (40, 30)), (0.6, 0.3, (50,)),
                                                           (0.6, 0.3, (6, 4, 5)), (0.8, 0.1, (30, 1))])  # fmt: skip
def test_della_matches_deep(name, density, epsilon, shape):
    xs, base = _tensors(3, shape=shape, seed=7)
    seed, key, lam, w = 13, "layer.weight", 0.8, [1, 2, 1]
    got = _run(name, xs, base, w, {"density": density, "epsilon": epsilon, "scale": lam}, key=key, seed=seed)
    want = ref_della([_np(x) for x in xs], _np(base), density, epsilon, lam, w, MethodContext(key, seed), consensus=name == "della")
    np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=1e-12)


def test_della_keep_probabilities_follow_the_magnitude_rank():
    from wsa_cli.merge.task_vectors import magprune_probabilities

    row = torch.tensor([[0.3, -2.0, 1.0, 0.1, 5.0]], dtype=torch.float64)  # ranks 1, 3, 2, 0, 4
    p = magprune_probabilities(row.abs(), 0.6, 0.2, torch.float64)
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.7, 0.6, 0.4, 0.8]], dtype=torch.float64))
    # empirically: every row holds magnitudes 1..5 in a random order; entry of rank r survives with p_r, rescaled by 1 / p_r
    g = torch.Generator().manual_seed(0)
    tau = torch.stack([torch.randperm(5, generator=g) for _ in range(20000)]).double() + 1.0  # (20000, 5)
    base = torch.zeros_like(tau)
    out = _run("della_linear", [tau], base, [1], {"density": 0.6, "epsilon": 0.2}, seed=2)
    for r, want in enumerate([0.4, 0.5, 0.6, 0.7, 0.8]):
        at_rank = tau == r + 1  # magnitude r + 1 has rank r in its row
        kept = out[at_rank] != 0
        assert abs(kept.double().mean().item() - want) < 0.015  # 20000 Bernoulli draws: sd <= 0.0035
        torch.testing.assert_close(out[at_rank][kept], tau[at_rank][kept] / want)
    # epsilon = 0 keeps what DARE with drop_rate = 1 - density keeps
    xs, b = _tensors(2, shape=(30, 20), seed=6)
    torch.testing.assert_close(_run("della_linear", xs, b, [1, 2], {"density": 0.4, "epsilon": 0.0}, seed=9),
                               _run("dare_linear", xs, b, [1, 2], {"drop_rate": 0.6}, seed=9), rtol=1e-12, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("name", ["della", "della_linear", "breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_and_della_are_deterministic_under_a_seed(name):
    xs, base = _tensors(3, shape=(30, 20), seed=1)
    a = _run(name, xs, base, [1, 1, 1], {}, seed=4)
    assert torch.equal(a, _run(name, xs, base, [1, 1, 1], {}, seed=4))
    if name.startswith("della"):  # random: another seed or key draws other masks
        assert not torch.equal(a, _run(name, xs, base, [1, 1, 1], {}, seed=5))
        assert not torch.equal(a, _run(name, xs, base, [1, 1, 1], {}, seed=4, key="other.weight"))
    else:  # deterministic by construction: the seed plays no part
        assert torch.equal(a, _run(name, xs, base, [1, 1, 1], {}, seed=5))


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp_matches_shoemake(t):
    xs, _ = _tensors(2, seed=9)
    got = _run("slerp", xs, None, [1, 1], {"t": t})
    np.testing.assert_allclose(_np(got), ref_slerp(_np(xs[0]), _np(xs[1]), t), rtol=1e-10, atol=1e-12)


def test_slerp_endpoints_and_parallel_fallback():
    xs, _ = _tensors(2, seed=2)
    assert torch.allclose(_run("slerp", xs, None, [1, 1], {"t": 0.0}), xs[0])
    assert torch.allclose(_run("slerp", xs, None, [1, 1], {"t": 1.0}), xs[1])
    x = xs[0]
    out = _run("slerp", [x, 2 * x], None, [1, 1], {"t": 0.5})  # parallel: lerp
    torch.testing.assert_close(out, 1.5 * x)


def test_copy_and_parameter_validation():
    xs, base = _tensors(2)
    assert torch.equal(_run("copy", xs, base, [1, 1], {"model": 1}), xs[1])
    assert torch.equal(_run("copy", xs, base, [1, 1], {"model": -1}), base)
    m = get_method("ties")
    with pytest.raises(InvalidValueError, match="did you mean 'density'"):
        m.resolve_params({"densty": 0.3})
    with pytest.raises(InvalidValueError, match="<= 1"):
        m.resolve_params({"density": 1.5})
    with pytest.raises(InvalidValueError, match="must be a number"):
        m.resolve_params({"density": "high"})
    with pytest.raises(InvalidValueError, match="did you mean 'ties'"):
        get_method("tie")
    with pytest.raises(InvalidValueError, match="at most 2"):
        get_method("slerp").check_model_count(3)


def test_copy_declares_when_it_reads_the_base_and_checks_its_index():
    copy = get_method("copy")
    assert copy.uses_base({"model": -1}) and not copy.uses_base({"model": 0}) and not copy.needs_base
    assert get_method("ties").uses_base({}) and not get_method("linear").uses_base({"normalize": True})
    copy.validate({"model": -1}, 2, has_base=True)
    with pytest.raises(InvalidValueError, match="method 'copy' needs a base model"):
        copy.validate({"model": -1}, 2, has_base=False)
    with pytest.raises(InvalidValueError, match="model index 2 is out of range for 2 models"):
        copy.validate({"model": 2}, 2, has_base=True)
    with pytest.raises(InvalidValueError, match="needs a base model"):
        get_method("ties").validate({"density": 0.2, "scale": 1.0}, 2, has_base=False)


@pytest.mark.parametrize("name", [m.name for m in all_methods()])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_numeric_parameters_refuse_nan_and_infinities(name, bad):
    numeric = [p for p in get_method(name).params if p.type in (int, float)]
    for p in numeric:
        with pytest.raises(InvalidValueError, match=f"parameter '{p.name}' must be a finite number, got {bad!r}"):
            get_method(name).resolve_params({p.name: bad})


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_every_builtin_method_matches_its_independent_reference(name):
    """A built-in method without an entry in REFERENCES fails here, by name."""
    if name not in REFERENCES:
        pytest.fail(f"built-in method {name!r} has no independent reference in REFERENCES (tests/test_merge_methods.py)")
    m = get_method(name)
    k = _model_count(m)
    xs, base = _tensors(k, seed=17)
    w = [1.0, 2.0, 0.5][:k]
    params = m.resolve_params({})
    b = base if m.uses_base(params) else None
    ctx = MethodContext("fc.weight", 3)
    got = m.fn(xs, b, w, params, ctx)
    want = REFERENCES[name]([_np(x) for x in xs], None if b is None else _np(b), w, params, ctx)
    np.testing.assert_allclose(_np(got), want, rtol=1e-10, atol=1e-12)


def test_every_method_documents_parameters_and_reference():
    names = [m.name for m in all_methods()]
    assert {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "copy"} <= set(names)
    assert names == sorted(names)
    for m in all_methods():
        assert m.summary and m.reference
        assert all(p.doc for p in m.params)


def test_every_builtin_method_has_a_docs_row():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "methods.md").read_text()
    missing = [name for name in BUILTIN_NAMES if f"| `{name}` |" not in text]
    assert not missing, f"docs/methods.md has no table row for {missing}"


# -- end to end through wsa merge -----------------------------------------------------------------------------


def _write_models(tmp_path, k, dtype=torch.float64):
    g = torch.Generator().manual_seed(42)
    base = {"fc1.weight": torch.randn(16, 8, generator=g, dtype=dtype), "fc1.bias": torch.randn(16, generator=g, dtype=dtype),
            "fc2.weight": torch.randn(4, 16, generator=g, dtype=dtype)}  # fmt: skip
    paths = []
    for i in range(k):
        sd = {n: (1 + 0.5 * i) * (t + 0.2 * torch.randn(t.shape, generator=g, dtype=dtype)) + 0.05 * i for n, t in base.items()}
        p = tmp_path / f"m{i}.safetensors"
        save_safetensors(sd, p)
        paths.append(p)
    save_safetensors(base, tmp_path / "base.safetensors")
    return paths, tmp_path / "base.safetensors"


def _merge(tmp_path, body):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(body)
    res = CliRunner().invoke(app, ["merge", str(recipe), "--format", "json", "--device", "cpu", "--force"])
    assert res.exit_code == 0, res.output
    json.loads(res.stdout)
    return load_file(tmp_path / "out.safetensors")


def _load_np(path):
    return {k: v.numpy() for k, v in load_file(path).items()}


def test_end_to_end_methods_match_references(tmp_path):
    paths, base_path = _write_models(tmp_path, 3)
    ms = [_load_np(p) for p in paths]
    base = _load_np(base_path)
    models = "\n".join(f"  - path: {p.name}\n    weight: {w}" for p, w in zip(paths, [1, 2, 3], strict=True))
    out = _merge(tmp_path, f"models:\n{models}\nscope: {{align: false}}\noutput: out.safetensors\n")
    for k in base:
        np.testing.assert_allclose(out[k].numpy(), ref_average([m[k] for m in ms], [1, 2, 3]), rtol=1e-12, atol=1e-12)
    out = _merge(tmp_path, f"models:\n{models}\nbase: base.safetensors\nmethod: task_arithmetic\nparameters: {{scale: 0.5}}\n"
                           "scope: {align: false}\noutput: out.safetensors\n")  # fmt: skip
    for k in base:
        np.testing.assert_allclose(out[k].numpy(), ref_task_arithmetic([m[k] for m in ms], base[k], 0.5, [1, 2, 3]), rtol=1e-12, atol=1e-12)
    out = _merge(tmp_path, f"models:\n{models}\nbase: base.safetensors\nmethod: ties\nparameters: {{density: 0.4}}\n"
                           "scope: {align: false}\noutput: out.safetensors\n")  # fmt: skip
    for k in base:
        np.testing.assert_allclose(out[k].numpy(), ref_ties([m[k] for m in ms], base[k], 0.4, 1.0, [1, 2, 3]), rtol=1e-12, atol=1e-12)


def test_end_to_end_wsa_alignment_then_average_and_ties(tmp_path):
    paths, base_path = _write_models(tmp_path, 3)
    ms = [_load_np(p) for p in paths]
    base = _load_np(base_path)
    w = [1, 1, 2]
    models = "\n".join(f"  - path: {p.name}\n    weight: {wi}" for p, wi in zip(paths, w, strict=True))
    out = _merge(tmp_path, f"models:\n{models}\noutput: out.safetensors\n")
    for k in ("fc1.weight", "fc2.weight"):  # layers (ndim >= 2): aligned, then averaged
        want = ref_average(ref_wsa_align([m[k] for m in ms], w), w)
        np.testing.assert_allclose(out[k].numpy(), want, rtol=1e-10, atol=1e-10)
    # biases are not layers by default: plain average
    np.testing.assert_allclose(out["fc1.bias"].numpy(), ref_average([m["fc1.bias"] for m in ms], w), rtol=1e-12, atol=1e-12)
    # TIES on aligned models, base aligned onto the same target (align_base default)
    out = _merge(tmp_path, f"models:\n{models}\nbase: base.safetensors\nmethod: ties\nparameters: {{density: 0.5}}\noutput: out.safetensors\n")
    for k in ("fc1.weight", "fc2.weight"):
        aligned = ref_wsa_align([m[k] for m in ms], w)
        # target of the base = the fused scope of the models
        tgt = ref_wsa_align([m[k] for m in ms] + [base[k]], w + [0])[-1]
        np.testing.assert_allclose(out[k].numpy(), ref_ties(aligned, tgt, 0.5, 1.0, w), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", [m.name for m in all_methods() if m.linear_form is not None])
@pytest.mark.parametrize("w", [[1.0, 1.0, 1.0], [0.5, 2.0, 1.0]])
def test_linear_form_agrees_with_method(name, w):
    """The folded one-pass path (coefficients) must equal the method's own function."""
    m = get_method(name)
    xs, base = _tensors(_model_count(m), seed=21)
    w = w[: len(xs)]
    for given in ({}, {"normalize": True} if "normalize" in m.param_names() else {}, {"scale": 0.3} if "scale" in m.param_names() else {},
                  {"model": -1} if name == "copy" else {}):  # fmt: skip
        params = m.resolve_params(given)
        coeffs, c_base = m.linear_form(w, params, True)
        folded = sum(c * x for c, x in zip(coeffs, xs, strict=True)) + c_base * base
        torch.testing.assert_close(m.fn(xs, base, w, params, MethodContext("k")), folded, rtol=1e-12, atol=1e-12)


def test_folded_alignment_equals_align_then_merge():
    from wsa_cli.fusion.pipeline import ScopeOptions, align_tensor, resolve_target
    from wsa_cli.scope.stats import tensor_scope
    from wsa_cli.merge.executor import merge_tensor
    from wsa_cli.merge.plan import TensorPlan

    xs, base = _tensors(3, seed=8)
    opts = ScopeOptions(weights=[1, 2, 3])
    for name, params in (("linear", {}), ("task_arithmetic", {"scale": 0.6})):
        m = get_method(name)
        p = m.resolve_params(params)
        entry = TensorPlan("w", tuple(xs[0].shape), torch.float64, torch.float64, "merge", name, p, True, True, "affine")
        got = merge_tensor(entry, xs, base, scope=opts, weights=[1, 2, 3], seed=0, device=torch.device("cpu")).tensor
        scopes = [tensor_scope(x) for x in xs]
        target = resolve_target("w", scopes, opts)
        aligned = [align_tensor(x, s, target, opts)[0] for x, s in zip(xs, scopes, strict=True)]
        b = align_tensor(base, tensor_scope(base), target, opts)[0]
        torch.testing.assert_close(got, m.fn(aligned, b, [1, 2, 3], p, MethodContext("w")), rtol=1e-12, atol=1e-12)


#: Extra parameter sets for the block-form tests (every method with a block form also runs with its defaults).
BLOCK_PARAMS = {
    "ties": [{"density": 0.3}, {"density": 0.0}, {"density": 1.0}],
    "dare_linear": [{"drop_rate": 0.6, "normalize": True}],
    "dare_ties": [{"drop_rate": 0.4, "scale": 0.7}],
    "breadcrumbs": [{"density": 0.3, "gamma": 0.1}, {"density": 0.0}, {"density": 1.0, "gamma": 0.0}],
    "breadcrumbs_ties": [{"density": 0.3, "gamma": 0.2, "scale": 0.7}],
    "della": [{"density": 0.5, "epsilon": 0.45}, {"density": 1.0, "epsilon": 0.0}],
    "della_linear": [{"epsilon": 0.0, "scale": 0.6}],
    "slerp": [{"t": 0.3}],
    "multislerp": [{"task_vectors": True}],
    "karcher": [{"task_vectors": True}, {"max_iter": 1}],
}
#: Block forms whose bits do not depend on the block size (the others sum float64 partials in block order).
BIT_EXACT_BLOCKS = {"ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"}
BLOCK_METHODS = [(m.name, params) for m in all_methods() if m.into is not None for params in [{}, *BLOCK_PARAMS.get(m.name, [])]]


def _run_into(m, xs, base, w, params, ctx):
    out = torch.empty(xs[0].shape, dtype=xs[0].dtype)
    job = BlockInputs(out, [AlignedInput(x) for x in xs], None if base is None else AlignedInput(base), list(w), params, ctx, xs[0].dtype)
    m.into(job)
    return out


def test_every_block_form_is_covered():
    assert {"ties", "dare_linear", "dare_ties", "slerp"} <= {name for name, _ in BLOCK_METHODS}


@pytest.mark.parametrize(("name", "params"), BLOCK_METHODS)
def test_block_size_does_not_change_the_result(name, params, monkeypatch):
    """Thresholds are whole-tensor, seeded draws a stream read block by block: any block size gives the same tensor."""
    from wsa_cli.merge import kernel

    m = get_method(name)
    k = _model_count(m)
    xs, base = _tensors(k, shape=(37, 11), seed=5, dtype=torch.float32)
    p = m.resolve_params(params)
    b = base if m.uses_base(p) else None
    w = [1.0, 2.0, 0.5][:k]
    whole = _run_into(m, xs, b, w, p, MethodContext("w", 3))  # 407 values: one block
    torch.testing.assert_close(whole, m.fn(xs, b, w, p, MethodContext("w", 3)), rtol=1e-6, atol=1e-7)  # agrees with fn
    for chunk in (10, 7):  # 41 blocks, the last one short; odd blocks split the draws' 64-bit outputs
        monkeypatch.setattr(kernel, "SCOPE_CHUNK", chunk)
        blocked = _run_into(m, xs, b, w, p, MethodContext("w", 3))
        if name in BIT_EXACT_BLOCKS:
            assert torch.equal(blocked, whole)
        else:
            torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("name", "params"), BLOCK_METHODS)
def test_block_form_with_alignment_equals_align_then_merge(name, params, monkeypatch):
    """The executor hands TIES/DARE/SLERP the alignment inside the inputs; same as aligning copies first."""
    from wsa_cli.fusion.pipeline import ScopeOptions, align_tensor, resolve_target
    from wsa_cli.merge import kernel
    from wsa_cli.buffers import Scratch
    from wsa_cli.merge.executor import merge_tensor
    from wsa_cli.merge.plan import TensorPlan
    from wsa_cli.scope.stats import tensor_scope

    monkeypatch.setattr(kernel, "SCOPE_CHUNK", 16)
    m = get_method(name)
    k = _model_count(m)
    xs, base = _tensors(k, shape=(9, 13), seed=12, dtype=torch.float32)
    xs = [x.bfloat16() for x in xs]  # stored narrow: converted per block
    base = base.bfloat16()
    w = [1.0, 2.0, 3.0][:k]
    opts = ScopeOptions(weights=w)
    p = m.resolve_params(params)
    b = base if m.uses_base(p) else None
    entry = TensorPlan("w", tuple(xs[0].shape), torch.bfloat16, torch.float32, "merge", name, p, True, True, "affine")
    work = Scratch()
    for _ in range(2):  # the second call reuses the working buffers
        res = merge_tensor(entry, xs, b, scope=opts, weights=w, seed=1, device=torch.device("cpu"), scratch=Scratch(), work=work)
        scopes = [tensor_scope(x) for x in xs]
        target = resolve_target("w", scopes, opts)
        aligned = [align_tensor(x.float(), s, target, opts)[0] for x, s in zip(xs, scopes, strict=True)]
        ab = None if b is None else align_tensor(base.float(), tensor_scope(base), target, opts)[0]
        want = m.fn(aligned, ab, w, p, MethodContext("w", 1))
        torch.testing.assert_close(res.tensor, want, rtol=1e-5, atol=1e-6)
        assert res.record["after"]["std"] == pytest.approx(float(want.std(correction=0)), rel=1e-5)


def test_model_stock_moves_between_the_average_and_the_base_with_the_angle():
    """Parallel task vectors keep the average, orthogonal ones the base; three fine-tunes follow the paper's t."""
    base = torch.zeros(2, 2, dtype=torch.float64)
    same = [torch.ones(2, 2, dtype=torch.float64), 3 * torch.ones(2, 2, dtype=torch.float64)]
    torch.testing.assert_close(_run("model_stock", same, base, [1, 1], {}), 2 * torch.ones(2, 2, dtype=torch.float64))
    ortho = [torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)]
    torch.testing.assert_close(_run("model_stock", ortho, base, [1, 1], {}), base)
    # three task vectors at 60 degrees to each other: cos = 0.5, t = 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    e = [torch.tensor(v, dtype=torch.float64) for v in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])]
    xs = [e[0] + e[1], e[1] + e[2], e[0] + e[2]]
    got = _run("model_stock", xs, torch.zeros(3, dtype=torch.float64), [1, 1, 1], {})
    torch.testing.assert_close(got, 0.75 * torch.stack(xs).mean(0))
    with pytest.raises(InvalidValueError, match="at least 2"):
        get_method("model_stock").validate({}, 1, has_base=True)


@pytest.mark.parametrize("method", [m.name for m in all_methods()])
def test_every_method_end_to_end_through_wsa_merge_matches_its_reference(tmp_path, method):
    """Each registered method, run by `wsa merge` on float64 files (alignment off, default parameters,
    recipe seed 3), equals its independent reference: the executor's path, not only the method's function."""
    m = get_method(method)
    k = _model_count(m)
    paths, base_path = _write_models(tmp_path, k)
    ms, base = [_load_np(p) for p in paths], _load_np(base_path)
    w = [1.0, 2.0, 3.0][:k]
    models = "\n".join(f"  - path: {p.name}\n    weight: {wi}" for p, wi in zip(paths, w, strict=True))
    base_line = "base: base.safetensors\n" if m.uses_base(m.resolve_params({})) else ""
    out = _merge(tmp_path, f"models:\n{models}\n{base_line}method: {method}\nseed: 3\nscope: {{align: false}}\noutput: out.safetensors\n")
    params = m.resolve_params({})
    for key in base:
        want = REFERENCES[method]([x[key] for x in ms], base[key], w, params, MethodContext(key, 3))
        np.testing.assert_allclose(out[key].numpy(), want, rtol=1e-9, atol=1e-9, err_msg=f"{method}: {key}")
