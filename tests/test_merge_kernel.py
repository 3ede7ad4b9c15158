"""The fused linear kernel against the plain tensor-wide formula, for every dtype and block split."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsa_cli.merge import kernel
from wsa_cli.buffers import Scratch
from wsa_cli.merge.kernel import combine_linear
from wsa_cli.scope.stats import RunningScope, tensor_scope


def _reference(xs: list[torch.Tensor], ms: list[float], shift: float, wide: torch.dtype) -> torch.Tensor:
    """``sum m_i x_i + shift`` tensor-wide in ``wide``, terms added in order (the kernel's order)."""
    out = torch.zeros(xs[0].shape, dtype=wide)
    for m, x in zip(ms, xs, strict=True):
        if m != 0.0:
            out.add_(x.to(wide), alpha=m)
    return out + shift if shift != 0.0 else out


@settings(max_examples=40, deadline=None)
@given(
    numel=st.integers(1, 300),
    block=st.integers(1, 64),
    k=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    out_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    shift=st.sampled_from([0.0, 0.25, -3.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_the_tensor_wide_formula_for_any_block_split(numel, block, k, dtype, out_dtype, shift, seed) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(numel, generator=g).to(dtype) for _ in range(k)]
    ms = [float(m) for m in torch.randn(k, generator=g)]
    if k > 1:
        ms[1] = 0.0  # an input with multiplier 0 contributes nothing
    ref = _reference(xs, ms, shift, torch.float32)
    out = torch.empty(numel, dtype=out_dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel, "SCOPE_CHUNK", block)
        scope = combine_linear(xs, ms, shift, out, wide=torch.float32, pool=Scratch())
    assert torch.equal(out, ref.to(out_dtype))  # same operations in the same order: the same bits
    want = tensor_scope(ref)
    assert scope is not None
    assert scope.mean == pytest.approx(want.mean, rel=1e-9, abs=1e-12)
    assert scope.std == pytest.approx(want.std, rel=1e-9, abs=1e-12)


def test_float64_inputs_accumulate_in_float64_and_measure_false_returns_none() -> None:
    x = torch.tensor([1.0 + 2.0**-30, 1.0, 2.0], dtype=torch.float64)  # 1 + 2^-30 is not a float32
    out = torch.empty(3, dtype=torch.float64)
    assert combine_linear([x, x], [1.0, 1.0], 0.0, out, wide=torch.float64, measure=False) is None
    assert torch.equal(out, 2 * x)


def test_no_terms_gives_the_constant() -> None:
    out = torch.empty(2, 3)
    scope = combine_linear([torch.ones(2, 3)], [0.0], 1.5, out, wide=torch.float32)
    assert torch.equal(out, torch.full((2, 3), 1.5))
    assert scope is not None and (scope.mean, scope.std) == (1.5, 0.0)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_inputs_are_converted_not_promoted(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(100, generator=g).to(dtype) for _ in range(2)]
    out = torch.empty(100, dtype=dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel, "SCOPE_CHUNK", 7)
        combine_linear(xs, [0.5, 0.5], 0.0, out, wide=torch.float32)
    assert torch.equal(out.float(), (xs[0].float() * 0.5 + xs[1].float() * 0.5).to(dtype).float())


def test_nonfinite_inputs_give_nonfinite_outputs_and_a_finite_scope() -> None:
    x = torch.tensor([1.0, float("nan"), 3.0, float("inf")])
    out = torch.empty(4)
    scope = combine_linear([x], [2.0], 0.0, out, wide=torch.float32)
    assert math.isnan(out[1]) and math.isinf(out[3])
    assert scope is not None and (scope.mean, scope.std) == (4.0, 2.0)


def test_buffers_are_reused_across_calls() -> None:
    pool = Scratch()
    cpu = torch.device("cpu")
    a = pool.get((10,), torch.float32, cpu, "kernel.acc")
    assert pool.get((5,), torch.float32, cpu, "kernel.acc").data_ptr() == a.data_ptr()
    assert pool.get((20,), torch.float32, cpu, "kernel.acc").data_ptr() != a.data_ptr()  # grown
    out = torch.empty(8)
    combine_linear([torch.ones(8)], [2.0], 0.0, out, wide=torch.float32, pool=pool)
    before = pool.get((8,), torch.float64, cpu, "f64").data_ptr()
    combine_linear([torch.ones(8)], [3.0], 0.0, out, wide=torch.float32, pool=pool)
    assert pool.get((8,), torch.float64, cpu, "f64").data_ptr() == before and torch.equal(out, torch.full((8,), 3.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_input_scopes_measured_in_the_merging_pass_equal_tensor_scope_bit_for_bit(dtype: torch.dtype) -> None:
    """An unaligned merge reports its inputs' scopes from the pass that merges them; a zero-weight input is still measured."""
    g = torch.Generator().manual_seed(3)
    xs = [(torch.randn(1000, generator=g) * 0.02 + 0.5 * i).to(dtype) for i in range(3)]
    seen = [RunningScope(), RunningScope(), None]
    out = torch.empty(1000, dtype=dtype)
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel, "SCOPE_CHUNK", 64)
        combine_linear(xs, [0.5, 0.0, 0.5], 0.0, out, wide=wide, input_scopes=seen)
        want = [tensor_scope(x, chunk=64) for x in xs[:2]]
    assert [s.scope() for s in seen[:2]] == want  # same blocks, same reductions: the same float64 bits
    assert torch.equal(out, (xs[0].to(wide) * 0.5).add_(xs[2].to(wide), alpha=0.5).to(dtype))


def test_unaligned_linear_merge_reports_each_inputs_scope_as_tensor_scope_measures_it() -> None:
    from wsa_cli.fusion.pipeline import ScopeOptions
    from wsa_cli.merge.executor import merge_tensor
    from wsa_cli.merge.plan import TensorPlan

    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(4, 300, generator=g) * (i + 1) for i in range(2)]
    entry = TensorPlan("w", (4, 300), torch.float32, torch.float32, "merge", "linear", {"normalize": True}, True, False, "affine")
    record = merge_tensor(entry, xs, None, scope=ScopeOptions(align=False), weights=[1, 1], seed=0, device=torch.device("cpu")).record
    assert record["before"] == [{"mean": s.mean, "std": s.std} for s in map(tensor_scope, xs)]
    assert list(record) == ["key", "action", "method", "aligned", "override", "before", "after"]


@pytest.mark.parametrize("method", ["dare_linear", "ties", "della", "slerp"])
def test_unaligned_block_form_reports_the_scopes_tensor_scope_measures(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Task-vector methods measure their inputs and result inside the merging pass; other block forms
    (slerp) after it: either way the report holds the bits :func:`tensor_scope` gives, in the same key order."""
    from wsa_cli.fusion.pipeline import ScopeOptions
    from wsa_cli.merge import executor
    from wsa_cli.merge.executor import merge_tensor
    from wsa_cli.merge.plan import TensorPlan
    from wsa_cli.merge.registry import get_method

    g = torch.Generator().manual_seed(6)
    shape = (700, 1000)  # more than one block of 2^19 values
    xs = [torch.randn(shape, generator=g) * 0.02 + 0.01 * i for i in range(2)]
    base = torch.randn(shape, generator=g) * 0.02
    params = get_method(method).resolve_params({"t": 0.3} if method == "slerp" else {})
    entry = TensorPlan("w", shape, torch.float32, torch.float32, "merge", method, params, True, False, "affine")
    separate = []  # tensors measured in passes of their own
    monkeypatch.setattr(executor, "tensor_scope", lambda x, *a, **kw: separate.append(x) or tensor_scope(x, *a, **kw))
    res = merge_tensor(entry, xs, None if method == "slerp" else base, scope=ScopeOptions(align=False), weights=[1, 1], seed=0,
                       device=torch.device("cpu"))  # fmt: skip
    assert res.record["before"] == [{"mean": s.mean, "std": s.std} for s in map(tensor_scope, xs)]
    s = tensor_scope(res.tensor)
    assert res.record["after"] == {"mean": s.mean, "std": s.std}
    assert list(res.record) == ["key", "action", "method", "aligned", "override", "before", "after"]
    assert len(separate) == (3 if method == "slerp" else 0)
