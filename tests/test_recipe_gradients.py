"""Parameter gradients over the layer index (mergekit's semantics), TIES's tie_rule, and method ranges."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wsa_cli.io import save_safetensors
from wsa_cli.merge.gradients import gradient_value, layer_count, layer_index, layer_position
from wsa_cli.merge.registry import MethodContext, get_method

N = 5  # layers 0..4: x = 0, 0.25, 0.5, 0.75, 1
LAYER_KEYS = [f"model.layers.{i}.mlp.weight" for i in range(N)]
KEYS = ["model.embed_tokens.weight", *LAYER_KEYS, "model.norm.weight", "lm_head.weight"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("grad")
    g = torch.Generator().manual_seed(0)
    for name in ("a", "b", "base"):
        save_safetensors({k: torch.randn(4, 3, generator=g, dtype=torch.float64) for k in KEYS}, d / f"{name}.safetensors")
    return d


def _plan(cli, folder, text):
    (folder / "r.yaml").write_text(text)
    res = cli("merge", str(folder / "r.yaml"), "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    return {t["key"]: t["params"] for t in json.loads(res.stdout)["stages"][-1]["tensors"]}


HEAD = "models: [a.safetensors, b.safetensors]\nbase: base.safetensors\nmethod: ties\nscope: false\noutput: out.safetensors\n"


def test_layer_index_regex():
    assert [layer_index(k) for k in ("model.layers.12.self_attn.q.weight", "encoder.layer.3.output.dense.weight",
                                     "transformer.h.7.attn.c_attn.weight", "blocks.2.norm1.weight", "head.weight",
                                     "model.layers.weight")] == [12, 3, 7, 2, None, None]  # fmt: skip
    assert layer_count(KEYS) == N
    assert layer_position("model.layers.3.x.weight", 5) == 0.75 and layer_position("h.0.w", 1) == 1.0  # one layer: x = 1
    assert layer_position("model.embed_tokens.weight", 5) == 0.0 and layer_position("lm_head.weight", 5) == 1.0
    assert layer_position("transformer.ln_f.weight", 5) == 1.0 and layer_position("wte.weight", 5) == 0.0


def test_gradient_values_by_hand():
    assert gradient_value([3.0], 0.6) == 3.0
    assert gradient_value([0.0, 1.0, 0.0], 0.25) == 0.5 and gradient_value([0.0, 1.0, 0.0], 1.0) == 0.0
    assert gradient_value([0.2, 0.4, 1.0], 0.75) == pytest.approx(0.7)


def test_dry_run_shows_each_keys_values(cli, folder):
    got = _plan(cli, folder, HEAD + "parameters:\n  density: [0.2, 1.0]\n  scale: [1.0, 0.0, 2.0]\n  tie_rule: exact\n")
    # density: 0.2 + 0.8 x; scale: [1, 0, 2] over x = 0, 0.5, 1
    want = {"model.embed_tokens.weight": (0.2, 1.0), "model.layers.0.mlp.weight": (0.2, 1.0),
            "model.layers.1.mlp.weight": (0.4, 0.5), "model.layers.2.mlp.weight": (0.6, 0.0),
            "model.layers.3.mlp.weight": (0.8, 1.0), "model.layers.4.mlp.weight": (1.0, 2.0),
            "model.norm.weight": (1.0, 2.0), "lm_head.weight": (1.0, 2.0)}  # fmt: skip
    assert set(got) == set(want)
    for key, (density, scale) in want.items():
        assert got[key]["density"] == pytest.approx(density) and got[key]["scale"] == pytest.approx(scale), key
        assert got[key]["tie_rule"] == "exact"
    res_table = cli("merge", str(folder / "r.yaml"), "--dry-run", "--format", "table")
    assert res_table.exit_code == 0 and "density=0.6" in res_table.stdout


def test_override_gradient_and_merged_values(cli, folder):
    text = ("models: [a.safetensors, b.safetensors]\nbase: base.safetensors\nmethod: task_arithmetic\nscope: false\n"
            "parameters: {scale: 0.5}\noverrides:\n  - match: 'model.layers.*'\n    parameters:\n      scale: [0, 1]\n"
            "output: out.safetensors\n")  # fmt: skip
    got = _plan(cli, folder, text)
    assert [got[k]["scale"] for k in LAYER_KEYS] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert got["lm_head.weight"]["scale"] == 0.5  # the stage's scalar outside the override
    res = cli("merge", str(folder / "r.yaml"), "--device", "cpu", "--json", "--force")
    assert res.exit_code == 0, res.stderr
    out = load_file(folder / "out.safetensors")
    a, b, base = (load_file(folder / f"{n}.safetensors") for n in ("a", "b", "base"))
    for i, key in enumerate(LAYER_KEYS):
        want = base[key] + (i / 4) * ((a[key] - base[key]) + (b[key] - base[key]))
        torch.testing.assert_close(out[key], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("params", "line", "message"), [
    ("parameters:\n  tie_rule: [exact]\n", 6, "parameter 'tie_rule' takes one value, got the list ['exact']"),
    ("parameters:\n  density: [0.2, 1.5]\n", 6, "parameter 'density' must be <= 1, got 1.5 (gradient entry 1)"),
    ("parameters:\n  density: []\n", 7, "parameters: density: a gradient needs at least one number, got []"),
    ("parameters:\n  density: [0.2, [0.3]]\n", 7, "parameters: density gradient entry 1 must be a number, string or"),
    ("parameters:\n  density: [0.2, .nan]\n", 7, "parameters: density gradient entry 1 must be a finite number, got nan"),
])  # fmt: skip
def test_gradient_errors(cli, folder, params, line, message):
    (folder / "bad.yaml").write_text(HEAD + params)
    res = cli("merge", str(folder / "bad.yaml"), "--dry-run")
    assert res.exit_code == 6 and f"bad.yaml:{line}: {message}" in res.stderr, res.stderr


def test_gradient_errors_for_bool_and_int_parameters(cli, folder):
    (folder / "bad.yaml").write_text("models: [a.safetensors, b.safetensors]\nparameters:\n  normalize: [true, false]\n"
                                     "output: out.safetensors\n")  # fmt: skip
    res = cli("merge", str(folder / "bad.yaml"), "--dry-run")
    assert res.exit_code == 6 and "bad.yaml:2: parameter 'normalize' takes one value, got the list [True, False]" in res.stderr
    (folder / "bad.yaml").write_text("models: [a.safetensors, b.safetensors]\nmethod: copy\nparameters:\n  model: [0, 1]\n"
                                     "output: out.safetensors\n")  # fmt: skip
    res = cli("merge", str(folder / "bad.yaml"), "--dry-run")
    assert res.exit_code == 6 and "bad.yaml:3: parameter 'model' takes one value" in res.stderr


def test_cross_parameter_checks_run_at_every_layer(cli, folder):
    """breadcrumbs needs density + gamma <= 1: fine at the first layers, not at the last."""
    (folder / "bad.yaml").write_text(HEAD.replace("method: ties", "method: breadcrumbs")
                                     + "parameters:\n  density: [0.5, 0.99]\n  gamma: 0.05\n")  # fmt: skip
    res = cli("merge", str(folder / "bad.yaml"), "--dry-run")
    assert res.exit_code == 6 and "bad.yaml:6:" in res.stderr and "(where the gradients give density=" in res.stderr, res.stderr


# -- tie_rule --------------------------------------------------------------------------------------


def ref_trim(tau, density, rule):
    flat = np.abs(tau).ravel()
    n, k = flat.size, int(density * flat.size)
    if k <= 0:
        return np.zeros_like(tau)
    if k >= n:
        return tau.copy()
    if rule == "threshold":
        return np.where(np.abs(tau) >= np.sort(flat)[::-1][k - 1], tau, 0.0)
    order = np.lexsort((np.arange(n), -flat))  # by magnitude descending, then lowest flat index
    keep = np.zeros(n, dtype=bool)
    keep[order[:k]] = True
    return np.where(keep.reshape(tau.shape), tau, 0.0)


def ref_ties(xs, base, density, scale, w, rule):
    taus = np.stack([ref_trim(x - base, density, rule) for x in xs])
    W = np.asarray(w, dtype=np.float64).reshape(-1, *(1,) * (taus.ndim - 1))
    gamma = np.sign((W * taus).sum(0))
    agree = (np.sign(taus) == gamma) & (taus != 0)
    num, den = (agree * taus * W).sum(0), (agree * W).sum(0)
    return base + scale * np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _tied(k, shape, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randint(-3, 4, shape, generator=g).to(torch.float64) for _ in range(k)]  # 7 values: many ties
    return xs, torch.zeros(shape, dtype=torch.float64)


@pytest.mark.parametrize("rule", ["threshold", "exact"])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.3, 0.55, 1.0])
def test_tie_rule_matches_numpy(rule, density):
    xs, base = _tied(3, (13, 7), seed=1)
    m = get_method("ties")
    p = m.resolve_params({"density": density, "tie_rule": rule, "scale": 0.8})
    got = m.fn(xs, base, [1.0, 2.0, 1.0], p, MethodContext("w"))
    want = ref_ties([x.numpy() for x in xs], base.numpy(), density, 0.8, [1.0, 2.0, 1.0], rule)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_exact_keeps_k_and_threshold_keeps_the_ties():
    from wsa_cli.merge.task_vectors import combine_task_vectors

    tau = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5, 2.0], dtype=torch.float64)  # k = floor(0.5 * 6) = 3
    zero = torch.zeros(6, dtype=torch.float64)
    kw = {"sparsify": "magnitude", "density": 0.5}
    exact = combine_task_vectors([tau], zero, [1.0], MethodContext("w"), tie_rule="exact", **kw)
    thresh = combine_task_vectors([tau], zero, [1.0], MethodContext("w"), **kw)
    assert exact.tolist() == [0.0, 2.0, 2.0, 2.0, 0.0, 0.0] and thresh.tolist() == [0.0, 2.0, 2.0, 2.0, 0.0, 2.0]


@pytest.mark.parametrize("chunk", [1, 4, 10, 1000])
def test_exact_rule_does_not_depend_on_the_block_size(chunk, monkeypatch):
    from wsa_cli.merge import kernel
    from wsa_cli.merge.kernel import AlignedInput
    from wsa_cli.merge.registry import BlockInputs

    xs, base = _tied(2, (9, 5), seed=4)
    m = get_method("ties")
    p = m.resolve_params({"density": 0.4, "tie_rule": "exact"})
    whole = m.fn(xs, base, [1.0, 1.0], p, MethodContext("w"))
    monkeypatch.setattr(kernel, "SCOPE_CHUNK", chunk)
    out = torch.empty_like(base)
    m.into(BlockInputs(out, [AlignedInput(x) for x in xs], AlignedInput(base), [1.0, 1.0], p, MethodContext("w"), torch.float64))
    assert torch.equal(out, whole)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_exact_rule_same_on_cuda():
    xs, base = _tied(3, (64, 33), seed=2)
    m = get_method("ties")
    p = m.resolve_params({"density": 0.3, "tie_rule": "exact"})
    cpu = m.fn(xs, base, [1.0] * 3, p, MethodContext("w"))
    dev = torch.device("cuda")
    gpu = m.fn([x.to(dev) for x in xs], base.to(dev), [1.0] * 3, p, MethodContext("w", device=dev))
    assert torch.equal(gpu.cpu(), cpu)


def test_methods_show_ranges():
    rows = {p["name"]: p["range"] for p in get_method("della").to_dict()["parameters"]}
    assert rows == {"density": "(0, 1]", "epsilon": "[0, 0.5)", "scale": None}
    assert {p["name"]: p["range"] for p in get_method("copy").to_dict()["parameters"]} == {"model": ">= -1"}
