"""The scope-alignment pipeline that wsa merge uses (wsa_cli.fusion.pipeline) and the fusion / rescale invariants it relies on."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsa_cli.errors import MismatchError, InvalidValueError
from wsa_cli.fusion import Scope, ScopeTable, fuse_scopes, rescale_tensor
from wsa_cli.fusion.pipeline import ScopeOptions, align_tensor, compute_target_scopes, resolve_target
from wsa_cli.io import save_safetensors, open_checkpoint
from wsa_cli.scope import LayerSelector, tensor_scope

METHODS = ["moments", "precision", "stats-mean"]
means = st.floats(-10, 10, allow_nan=False)
stds = st.floats(1e-3, 10, allow_nan=False)
scopes = st.builds(Scope, means, stds)


@settings(max_examples=60, deadline=None)
@given(s=scopes, k=st.integers(1, 6), method=st.sampled_from(METHODS))
def test_identical_scopes_fuse_to_themselves(s: Scope, k: int, method: str) -> None:
    fused = fuse_scopes([s] * k, method=method)
    assert fused.mean == pytest.approx(s.mean, rel=1e-12, abs=1e-12)
    assert fused.std == pytest.approx(s.std, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(scopes, st.floats(0.1, 5)), min_size=2, max_size=6), method=st.sampled_from(METHODS), seed=st.integers(0, 1000))
def test_fusion_is_order_free(data: list[tuple[Scope, float]], method: str, seed: int) -> None:
    perm = list(range(len(data)))
    import random

    random.Random(seed).shuffle(perm)
    a = fuse_scopes([d[0] for d in data], [d[1] for d in data], method)
    b = fuse_scopes([data[i][0] for i in perm], [data[i][1] for i in perm], method)
    assert a.mean == pytest.approx(b.mean, rel=1e-9, abs=1e-9)
    assert a.std == pytest.approx(b.std, rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(s=scopes, method=st.sampled_from(METHODS))
def test_single_model_fusion_is_identity(s: Scope, method: str) -> None:
    fused = fuse_scopes([s], method=method)
    assert fused.mean == pytest.approx(s.mean, abs=1e-12) and fused.std == pytest.approx(s.std, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(target=scopes, seed=st.integers(0, 10_000), scale=st.floats(0.01, 5))
def test_affine_rescale_lands_on_target(target: Scope, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(32, 16, generator=g, dtype=torch.float64) * scale + 0.3
    out, done = rescale_tensor(w, tensor_scope(w), target, "affine")
    got = tensor_scope(out)
    assert done
    assert got.mean == pytest.approx(target.mean, abs=1e-9 * max(1.0, target.std))
    assert got.std == pytest.approx(target.std, rel=1e-9)


def test_std_rescale_keeps_mean_and_constant_layer_is_untouched() -> None:
    w = torch.randn(8, 8, dtype=torch.float64) + 2.0
    src = tensor_scope(w)
    out, _ = rescale_tensor(w, src, Scope(-5.0, 0.5), "std")
    assert tensor_scope(out).mean == pytest.approx(src.mean, abs=1e-9)
    assert tensor_scope(out).std == pytest.approx(0.5, rel=1e-9)
    const = torch.full((4, 4), 3.0)
    out, done = align_tensor(const, tensor_scope(const), Scope(0.0, 1.0), ScopeOptions())
    assert not done and torch.equal(out, const)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3000), scale=st.floats(1e-3, 1e3), shift=st.floats(-100, 100))
def test_tensor_scope_matches_float64_reference(seed: int, n: int, scale: float, shift: float) -> None:
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * scale + shift
    ref = x.double().numpy()
    s = tensor_scope(x, chunk=97)  # many chunks: exercises the pairwise combination
    assert s.mean == pytest.approx(float(np.mean(ref)), rel=1e-9, abs=1e-12 * scale)
    assert s.std == pytest.approx(float(np.std(ref)), rel=1e-9, abs=1e-12 * scale)


def test_tensor_scope_ignores_nonfinite_like_inspect() -> None:
    from wsa_cli.scope.stats import tensor_moments

    x = torch.tensor([1.0, float("nan"), 3.0, float("inf")])
    m = tensor_moments(x)
    assert tensor_scope(x) == Scope(m.mean, m.var**0.5) == Scope(2.0, 1.0)
    assert tensor_scope(torch.zeros(0)) == Scope(0.0, 0.0)


def test_k1_pipeline_is_identity() -> None:
    sd = {"w": torch.randn(6, 5), "b": torch.randn(5)}
    table = compute_target_scopes([sd], ScopeOptions(), "cpu")
    (src,), target = table["w"]
    out, _ = align_tensor(sd["w"], src, target, ScopeOptions())
    torch.testing.assert_close(out, sd["w"], rtol=1e-6, atol=1e-6)


def test_compute_target_scopes_on_readers_and_targets(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    a = {"fc.weight": torch.randn(4, 3, generator=g), "fc.bias": torch.randn(4, generator=g)}
    b = {"fc.weight": 3 * torch.randn(4, 3, generator=g) + 1, "fc.bias": torch.randn(4, generator=g)}
    save_safetensors(a, tmp_path / "a.safetensors")
    save_safetensors(b, tmp_path / "b.safetensors")
    with open_checkpoint(tmp_path / "a.safetensors") as ra, open_checkpoint(tmp_path / "b.safetensors") as rb:
        table = compute_target_scopes([ra, rb], ScopeOptions(weights=[1, 3]), "cpu")
        assert list(table) == ["fc.weight"]
        per, target = table["fc.weight"]
        sa, sb = (Scope(float(x.double().mean()), float(x.double().std(correction=0))) for x in (a["fc.weight"], b["fc.weight"]))
        for got, want in zip(per, [sa, sb], strict=True):
            assert got.mean == pytest.approx(want.mean, rel=1e-12) and got.std == pytest.approx(want.std, rel=1e-12)
            inspect = tensor_scope(a["fc.weight"] if want is sa else b["fc.weight"])  # what `wsa inspect` reports
            assert got.std == pytest.approx(inspect.std, rel=1e-6)
        mu = 0.25 * sa.mean + 0.75 * sb.mean
        var = 0.25 * (sa.var + (sa.mean - mu) ** 2) + 0.75 * (sb.var + (sb.mean - mu) ** 2)
        assert target.mean == pytest.approx(mu) and target.std == pytest.approx(math.sqrt(var))
        # model-index target, fixed target, include biases
        t1 = compute_target_scopes([ra, rb], ScopeOptions(target=1, selector=LayerSelector(include=["*.bias"])), "cpu")
        assert set(t1) == {"fc.weight", "fc.bias"} and t1["fc.weight"][1] == t1["fc.weight"][0][1]
        fixed = Scope(0.0, 0.1)
        assert compute_target_scopes([ra, rb], ScopeOptions(target=fixed), "cpu")["fc.weight"][1] == fixed
    # scope file target, by path
    path = tmp_path / "scopes.json"
    path.write_text(ScopeTable({"fc.weight": Scope(0.5, 0.2)}).to_json())
    opts = ScopeOptions(target=path)
    assert compute_target_scopes([a, b], opts, "cpu")["fc.weight"][1] == Scope(0.5, 0.2)
    with pytest.raises(MismatchError, match="no entry"):
        compute_target_scopes([a, b], ScopeOptions(target=path, selector=LayerSelector(include=["*.bias"])), "cpu")


def test_pipeline_errors() -> None:
    a = {"w": torch.zeros(2, 2)}
    with pytest.raises(MismatchError, match="shape"):
        compute_target_scopes([a, {"w": torch.zeros(2, 3)}], ScopeOptions(), "cpu")
    with pytest.raises(MismatchError, match="missing"):
        compute_target_scopes([a, {"v": torch.zeros(2, 2)}], ScopeOptions(), "cpu")
    with pytest.raises(InvalidValueError):
        ScopeOptions(fusion="median")
    with pytest.raises(InvalidValueError):
        ScopeOptions(rescale="shift")
    with pytest.raises(InvalidValueError, match="out of range"):
        resolve_target("w", [Scope(0, 1)], ScopeOptions(target=3))
    with pytest.raises(InvalidValueError):
        compute_target_scopes([a, a], ScopeOptions(weights=[1.0]), "cpu")


def test_tensor_scope_and_moments_never_modify_their_input() -> None:
    from wsa_cli.scope.stats import tensor_moments

    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        x = (torch.randn(300, dtype=torch.float64) + 5).to(dtype)
        before = x.clone()
        tensor_scope(x)
        tensor_moments(x)
        assert torch.equal(x, before)


def test_target_with_commas_that_is_not_mean_std_is_an_invalid_value(tmp_path, monkeypatch):
    # a malformed MEAN,STD is a bad value of the option (the command line names the flag, exit 2)
    from wsa_cli.errors import ExitCode, InvalidValueError
    from wsa_cli.fusion.targets import parse_target

    monkeypatch.chdir(tmp_path)
    for text in ("1,2,3", "0,x", "0,-1"):
        with pytest.raises(InvalidValueError) as info:
            parse_target(text)
        assert info.value.option == "target" and info.value.exit_code == ExitCode.USAGE
    assert parse_target("0,0.5") == Scope(0.0, 0.5)
