"""Properties of the spherical methods: multislerp, karcher, nuslerp (their formulas: tests/test_merge_methods.py)."""

from __future__ import annotations

import itertools

import pytest
import torch

from wsa_cli.errors import InvalidValueError
from wsa_cli.merge import MethodContext, get_method
from wsa_cli.merge.methods.karcher import sphere_mean_coefficients
from wsa_cli.merge.methods.nuslerp import slerp_slices
from wsa_cli.merge.methods.slerp import slerp, slerp_coefficients

F64 = torch.float64


def _run(name, xs, base, w, params=None):
    m = get_method(name)
    return m.fn(list(xs), base, list(w), m.resolve_params(params or {}), MethodContext("fc.weight"))


def _pair(seed=0, shape=(12, 10), equal_norms=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=F64)
    b = a + 1.5 * torch.randn(shape, generator=g, dtype=F64)
    if equal_norms:
        b = b * (a.norm() / b.norm())
    return a, b


@pytest.mark.parametrize("name", ["multislerp", "karcher"])
@pytest.mark.parametrize("t", [0.0, 0.2, 0.5, 0.85, 1.0])
def test_two_models_equal_slerp(name, t):
    """Equal norms: exactly slerp at t = w_2 / (w_1 + w_2); any norms: slerp of the unit vectors, times the mean norm."""
    a, b = _pair(1, equal_norms=True)
    torch.testing.assert_close(_run(name, [a, b], None, [1 - t, t]), slerp(a, b, t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_run(name, [a, b], None, [2 * (1 - t), 2 * t]), slerp(a, b, t), rtol=1e-10, atol=1e-12)  # only ratios
    a, b = _pair(2)
    want = slerp(a / a.norm(), b / b.norm(), t) * ((1 - t) * a.norm() + t * b.norm())
    torch.testing.assert_close(_run(name, [a, b], None, [1 - t, t]), want, rtol=1e-10, atol=1e-12)


def test_nuslerp_flattened_is_slerp_at_the_weights_t():
    a, b = _pair(3)
    torch.testing.assert_close(_run("nuslerp", [a, b], None, [1.0, 3.0]), slerp(a, b, 0.75), rtol=0, atol=0)
    torch.testing.assert_close(_run("nuslerp", [a, b], None, [1.0, -1.0]), slerp(a, b, 0.5), rtol=0, atol=0)  # weights cancel: t = 0.5


@pytest.mark.parametrize("name", ["multislerp", "karcher"])
def test_order_of_the_models_does_not_matter(name):
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(7, 9, generator=g, dtype=F64) + 0.5 for _ in range(4)]
    w = [1.0, 2.0, 0.5, 3.0]
    first = _run(name, xs, None, w)
    for perm in itertools.permutations(range(4)):
        torch.testing.assert_close(_run(name, [xs[i] for i in perm], None, [w[i] for i in perm]), first, rtol=1e-10, atol=1e-12)


def test_karcher_converges_to_the_stationary_point():
    """At the result the weighted tangent mean is ~0 (the Karcher mean's defining property), and more iterations agree."""
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(40, generator=g, dtype=F64) + 1.0 for _ in range(5)]
    w = [1.0, 2.0, 3.0, 1.0, 0.5]
    out = _run("karcher", xs, None, w, {"max_iter": 200, "tol": 0.0})
    m = out / out.norm()
    p = torch.tensor(w, dtype=F64) / sum(w)
    v = torch.zeros_like(m)
    for pi, x in zip(p, xs, strict=True):
        u = x / x.norm()
        th = torch.arccos(torch.clamp(u @ m, -1, 1))
        v += pi * th / torch.sin(th) * (u - (u @ m) * m)
    assert float(v.norm()) < 1e-12
    default = _run("karcher", xs, None, w)  # tol 1e-5 (radians): the direction within about that
    assert float((default - out).norm() / out.norm()) < 1e-5
    assert float(out.norm()) == pytest.approx(float(sum(pi * x.norm() for pi, x in zip(p, xs, strict=True))), rel=1e-12)


@pytest.mark.parametrize("name", ["multislerp", "karcher", "nuslerp"])
def test_identical_inputs_return_the_input(name):
    a, _ = _pair(6)
    torch.testing.assert_close(_run(name, [a, a.clone()], None, [1.0, 3.0]), a, rtol=1e-12, atol=1e-12)
    if name != "nuslerp":
        torch.testing.assert_close(_run(name, [a] * 4, None, [1.0, 2.0, 3.0, 4.0]), a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["multislerp", "karcher", "nuslerp"])
def test_degenerate_inputs_are_finite_and_documented(name):
    a, b = _pair(7)
    z = torch.zeros_like(a)
    # a zero tensor: no direction; it counts with norm 0 -> (1 - t) a, as slerp's linear fallback
    torch.testing.assert_close(_run(name, [a, z], None, [3.0, 1.0]), 0.75 * a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_run(name, [z, z], None, [1.0, 1.0]), z)
    # antipodal with equal weights: no base point -> the weighted linear mean (0 here)
    out = _run(name, [a, -a], None, [1.0, 1.0])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, z, rtol=0, atol=1e-12)
    # antipodal with unequal weights: finite
    assert torch.isfinite(_run(name, [a, -a], None, [1.0, 3.0])).all()
    if name != "nuslerp":
        assert torch.isfinite(_run(name, [a, -a, z, b], None, [1.0, 1.0, 1.0, 1.0])).all()
        # task vectors that are all zero: the base back
        torch.testing.assert_close(_run(name, [a, a, a], a, [1.0, 1.0, 1.0], {"task_vectors": True}), a)


def test_three_directions_whose_unit_mean_vanishes_fall_back_to_the_linear_mean():
    e = [torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([-0.5, 3**0.5 / 2], dtype=F64), torch.tensor([-0.5, -(3**0.5) / 2], dtype=F64)]
    xs = [2 * e[0], e[1], e[2]]
    for name in ("multislerp", "karcher"):
        out = _run(name, xs, None, [1.0, 1.0, 1.0])
        torch.testing.assert_close(out, sum(xs) / 3)


def test_coefficients_match_the_slerp_helper_for_two_unit_vectors():
    for cos, t in [(0.3, 0.25), (-0.7, 0.6), (0.99, 0.5)]:
        gram = [[1.0, cos], [cos, 1.0]]
        got = sphere_mean_coefficients(gram, [1 - t, t], 10, 1e-12)
        assert got == pytest.approx(list(slerp_coefficients(1.0, 1.0, cos, t)), rel=1e-9, abs=1e-12)


def test_sphere_mean_refuses_weights_that_cancel():
    with pytest.raises(InvalidValueError, match="sum to zero"):
        sphere_mean_coefficients([[1.0, 0.0], [0.0, 1.0]], [1.0, -1.0], 10, 1e-5)


def test_nuslerp_row_wise_versus_flattened():
    """flatten: one angle; flatten false: one angle per slice (last dim), row_wise: per slice along dim 0."""
    a, b = _pair(8, shape=(6, 5))
    t = 2.0 / 3.0
    rows = _run("nuslerp", [a, b], None, [1.0, 2.0], {"flatten": False})
    cols = _run("nuslerp", [a, b], None, [1.0, 2.0], {"flatten": False, "row_wise": True})
    flat = _run("nuslerp", [a, b], None, [1.0, 2.0], {"flatten": True, "row_wise": True})  # row_wise ignored when flattened
    for r in range(6):
        torch.testing.assert_close(rows[r], slerp(a[r], b[r], t), rtol=1e-12, atol=1e-12)
    for c in range(5):
        torch.testing.assert_close(cols[:, c], slerp(a[:, c], b[:, c], t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flat, slerp(a, b, t))
    assert not torch.allclose(rows, flat) and not torch.allclose(cols, flat) and not torch.allclose(rows, cols)
    # a 3-D tensor: slices along the last / first dimension
    g = torch.Generator().manual_seed(9)
    x0, x1 = torch.randn(3, 4, 5, generator=g, dtype=F64), torch.randn(3, 4, 5, generator=g, dtype=F64)
    got = _run("nuslerp", [x0, x1], None, [1.0, 1.0], {"flatten": False, "row_wise": True})
    torch.testing.assert_close(got[:, 2, 3], slerp(x0[:, 2, 3], x1[:, 2, 3], 0.5), rtol=1e-12, atol=1e-12)
    # a bias (1-D) is one vector in every variant
    torch.testing.assert_close(_run("nuslerp", [a[0], b[0]], None, [1.0, 2.0], {"flatten": False}), slerp(a[0], b[0], t))


def test_nuslerp_slices_fall_back_per_slice():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=F64)
    b = torch.tensor([[0.0, 1.0], [1.0, 2.0], [-1.0, -1.0]], dtype=F64)
    out = slerp_slices(a, b, 0.25)
    torch.testing.assert_close(out[0], slerp(a[0], b[0], 0.25))
    torch.testing.assert_close(out[1], 0.75 * a[1] + 0.25 * b[1])  # a zero row: linear
    torch.testing.assert_close(out[2], 0.75 * a[2] + 0.25 * b[2])  # antipodal: linear
    assert torch.isfinite(out).all()


def test_task_vectors_and_base_rules():
    a, b = _pair(10)
    base = 0.5 * a
    got = _run("nuslerp", [a, b], base, [1.0, 1.0], {"task_vectors": True})
    torch.testing.assert_close(got, base + slerp(a - base, b - base, 0.5))
    for name in ("multislerp", "karcher", "nuslerp"):
        m = get_method(name)
        assert m.uses_base(m.resolve_params({"task_vectors": True})) and not m.uses_base(m.resolve_params({}))
        with pytest.raises(InvalidValueError, match="needs a base model"):
            m.validate(m.resolve_params({"task_vectors": True}), 2, has_base=False)
        with pytest.raises(InvalidValueError, match="at least 2"):
            m.validate(m.resolve_params({}), 1, has_base=False)
    with pytest.raises(InvalidValueError, match="at most 2"):
        get_method("nuslerp").validate({}, 3, has_base=False)
    with pytest.raises(InvalidValueError, match=">= 1"):
        get_method("karcher").resolve_params({"max_iter": 0})
