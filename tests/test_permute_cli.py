"""End to end: wsa align and wsa spec on real files; exit codes; interpolation modes; recipe hook."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file

from wsa_cli.io import save_safetensors
from wsa_cli.permute import apply_permutation, load_spec
from wsa_cli.permute.spec import shapes_of
from wsa_cli.tasks import get_task, model_from_state_dict


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("align")
    paths = []
    for seed in (1, 2, 3):
        sd = get_task("digits-mlp").build_model(16, seed=seed).state_dict()
        p = d / f"m{seed}.safetensors"
        save_safetensors(sd, p)
        paths.append(p)
    return d, paths


def _logits(sd, x):
    with torch.no_grad():
        return model_from_state_dict("digits-mlp", sd)(x)


def test_align_one_model_writes_checkpoint_and_perms(ckpts, tmp_path, cli):
    _, (a, b, _) = ckpts
    out = tmp_path / "b_al.safetensors"
    before = b.read_bytes()
    res = cli("align", str(a), str(b), "--spec", "digits-mlp", "-o", str(out), "--model", "digits-mlp", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    m = report["models"][0]
    assert m["max_abs_diff"] <= 1e-4 * m["output_max_abs"]
    assert m["objective"][-1] >= m["objective"][0] and m["sweeps"] == len(m["objective"]) - 1
    assert b.read_bytes() == before  # input untouched
    perms_doc = json.loads((tmp_path / "b_al.perms.json").read_text())
    assert perms_doc["format"] == "wsa-permutations" and set(perms_doc["groups"]) == {"P_fc1", "P_fc2"}
    aligned = load_file(out)
    original = load_file(b)
    spec = load_spec("digits-mlp", shapes=shapes_of(original))
    perms = {g: torch.tensor(p) for g, p in perms_doc["models"][0]["perms"].items()}
    expected = apply_permutation(spec, original, perms)
    assert all(torch.equal(aligned[k], expected[k]) for k in expected)
    x = torch.rand(20, 64)
    torch.testing.assert_close(_logits(aligned, x), _logits(original, x), rtol=1e-5, atol=1e-5)

    # reuse: --perms gives bit-identical output without matching
    again = tmp_path / "again.safetensors"
    res = cli("align", str(a), str(b), "--spec", "digits-mlp", "-o", str(again), "--perms", str(tmp_path / "b_al.perms.json"), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["models"][0]["sweeps"] == 0
    assert all(torch.equal(v, aligned[k]) for k, v in load_file(again).items())

    # output exists: refused without --force (exit 7), accepted with it
    res = cli("align", str(a), str(b), "--spec", "digits-mlp", "-o", str(out))
    assert res.exit_code == 7 and "--force" in res.stderr
    assert cli("align", str(a), str(b), "--spec", "digits-mlp", "-o", str(out), "--force", "--json").exit_code == 0


def test_align_several_models_into_a_folder(ckpts, tmp_path, cli):
    _, (a, b, c) = ckpts
    out = tmp_path / "aligned"
    res = cli("align", str(a), str(b), str(c), "--spec", "digits-mlp", "-o", str(out), "-f", "csv")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("source,output,sweeps")
    assert sorted(p.name for p in out.iterdir()) == ["m2.safetensors", "m3.safetensors", "perms.json"]
    assert len(json.loads((out / "perms.json").read_text())["models"]) == 2
    res = cli("align", str(a), str(b), str(c), "--spec", "digits-mlp", "-o", str(tmp_path / "x.safetensors"))
    assert res.exit_code == 2 and "names a folder" in res.stderr


BAD_SPEC = textwrap.dedent(
    """\
    format: wsa-permutation-spec
    version: 1
    axes:
      fc1.weight: [P1, null]
      fc1.bias: [P1]
      fc2.weight: [P2, P1]
      fc2.bias: [P2]
      fc3.weight: [Q, P2]
      fc3.bias: [Q]
    """
)


def test_spec_errors_have_messages_and_exit_codes(ckpts, tmp_path, cli):
    _, (a, b, _) = ckpts
    missing = tmp_path / "missing.yaml"
    missing.write_text(BAD_SPEC.replace("  fc3.bias: [Q]\n", ""))
    res = cli("spec", "check", str(missing), str(a))
    assert res.exit_code == 6 and "key 'fc3.bias'" in res.stderr and "not covered" in res.stderr
    sizes = tmp_path / "sizes.yaml"
    sizes.write_text(BAD_SPEC.replace("fc3.weight: [Q, P2]", "fc3.weight: [P1, P2]"))
    res = cli("spec", "check", str(sizes), str(a))
    assert res.exit_code == 6 and "inconsistent sizes" in res.stderr and "sizes.yaml:8" in res.stderr
    res = cli("spec", "check", str(tmp_path / "nope.yaml"), str(a))
    assert res.exit_code == 3
    # structurally fine but wrong for the model: the output layer cannot be permuted
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(BAD_SPEC)
    assert cli("spec", "check", str(wrong), str(a), "--json").exit_code == 0
    res = cli("spec", "check", str(wrong), str(a), "--model", "digits-mlp")
    assert res.exit_code == 6 and "permuting group 'Q' changes the model's outputs" in res.stderr
    out = tmp_path / "never.safetensors"
    res = cli("align", str(a), str(b), "--spec", str(wrong), "-o", str(out), "--model", "digits-mlp")
    assert res.exit_code == 5 and "computes something else" in res.stderr
    assert not out.exists() and not (tmp_path / "never.perms.json").exists()


def test_spec_infer_guess_template_and_unhandled_op(ckpts, tmp_path, monkeypatch, cli):
    _, (a, _, _) = ckpts
    res = cli("spec", "template", "digits-mlp", str(a), "-o", str(tmp_path / "t.yaml"))
    assert res.exit_code == 0, res.output
    res = cli("spec", "guess", str(a), "-o", str(tmp_path / "g.yaml"))
    assert res.exit_code == 0, res.output
    res = cli("spec", "infer", "--model", "digits-mlp", "-o", str(tmp_path / "i.yaml"))
    assert res.exit_code == 0, res.output
    for name in ("t.yaml", "g.yaml", "i.yaml"):
        check = cli("spec", "check", str(tmp_path / name), str(a), "--model", "digits-mlp", "--json")
        assert check.exit_code == 0, check.output
        data = json.loads(check.stdout)
        assert data["groups"] == {"P_fc1": 16, "P_fc2": 16} and data["functional"]["ok"] is True
    plugin = tmp_path / "mymodels.py"
    plugin.write_text(textwrap.dedent(
        """\
        import torch
        from torch import nn

        class Cat(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(4, 4)
                self.out = nn.Linear(8, 2)

            def forward(self, x):
                return self.out(torch.cat([self.a(x), x], 1))

        def factory():
            return Cat()
        """
    ))
    res = cli("spec", "infer", "--model", f"{plugin}:factory", "--input-shape", "4")
    assert res.exit_code == 6 and "cannot handle node 'cat'" in res.stderr
    res = cli("spec", "infer", "--model", f"{plugin}:nothere", "--input-shape", "4")
    assert res.exit_code == 8
    res = cli("spec", "infer", "--model", f"{plugin}:factory")
    assert res.exit_code == 2 and "--input-shape" in res.stderr
    bn = tmp_path / "res.safetensors"
    from wsa_cli.permute.examples import tiny_resnet

    save_safetensors(tiny_resnet().state_dict(), bn)
    res = cli("spec", "guess", str(bn))
    assert res.exit_code == 6 and "cannot guess a spec" in res.stderr
    res = cli("spec", "check", "resnet", str(bn), "--model", "wsa_cli.permute.examples:tiny_resnet", "--input-shape", "3,8,8", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["functional"]["rescale_max_abs_diff"] is not None


def test_interpolation_modes_are_registered(ckpts):
    from wsa_cli.errors import InvalidValueError
    from wsa_cli.interpolate.modes import MODES, ModeOptions

    _, (a, b, _) = ckpts
    sa, sb = load_file(a), load_file(b)
    assert {"permuted", "permuted+wsa", "permuted+fp"} <= set(MODES)
    with pytest.raises(InvalidValueError, match="mode 'permuted' needs a permutation spec"):
        MODES["permuted"].prepare(sa, sb, ModeOptions())
    opts = ModeOptions(spec="digits-mlp")
    pa, pb = MODES["permuted"].prepare(sa, sb, opts)
    x = torch.rand(10, 64)
    torch.testing.assert_close(_logits(dict(pb), x), _logits(sb, x), rtol=1e-5, atol=1e-5)
    fa, fb = MODES["permuted+fp"].prepare(sa, sb, opts)
    torch.testing.assert_close(_logits(dict(fa), x), _logits(sa, x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(dict(fb), x), _logits(sb, x), rtol=1e-4, atol=1e-4)
    assert not torch.equal(fa["fc1.weight"], sa["fc1.weight"])


def test_recipe_entry_point(ckpts):
    from wsa_cli.errors import ConfigError
    from wsa_cli.permute.recipe import permute_inputs

    _, paths = ckpts
    states = [load_file(p) for p in paths]
    out = permute_inputs(states, "digits-mlp", reference=1, seed=0, device="cpu")
    assert len(out) == 3 and all(torch.equal(out[1][k], states[1][k]) for k in states[1])
    x = torch.rand(10, 64)
    for o, s in zip(out, states, strict=True):
        torch.testing.assert_close(_logits(o, x), _logits(s, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="out of range"):
        permute_inputs(states, "digits-mlp", reference=5)


def test_recipe_permuted_wsa_runs(tmp_path, cli):
    """recipes/permuted-wsa.yaml (spec file next to the recipe) merges like the built-in template does."""
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "recipes"
    work = tmp_path / "recipes"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("out"))
    (work / "out").mkdir()
    res = cli("merge", str(work / "permuted-wsa.yaml"), "--json")
    assert res.exit_code == 0, res.output
    merged = load_file(work / "out" / "permuted-wsa.safetensors")
    # the same stage with the template name instead of the file gives the same tensors
    text = (work / "permuted-wsa.yaml").read_text().replace("specs/digits-mlp.spec.yaml", "digits-mlp")
    (work / "by-name.yaml").write_text(text.replace("out/permuted-wsa.safetensors", "out/by-name.safetensors"))
    assert cli("merge", str(work / "by-name.yaml"), "--json").exit_code == 0
    again = load_file(work / "out" / "by-name.safetensors")
    assert all(torch.equal(merged[k], again[k]) for k in merged)
    # and it differs from plain averaging of the unaligned models
    (work / "plain.yaml").write_text(
        "models: [models/mlp-s1.safetensors, models/mlp-s2.safetensors]\nmethod: linear\noutput: out/plain.safetensors\n"
    )
    assert cli("merge", str(work / "plain.yaml"), "--json").exit_code == 0
    assert not torch.equal(load_file(work / "out" / "plain.safetensors")["fc1.weight"], merged["fc1.weight"])


@pytest.mark.parametrize("verb", ["guess", "template"])
def test_spec_output_never_replaces_its_checkpoint(ckpts, tmp_path, verb, cli):
    _, (a, _, _) = ckpts
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(a.read_bytes())
    before = ckpt.read_bytes()
    args = ["spec", verb, *(["digits-mlp"] if verb == "template" else []), str(ckpt), "-o", str(ckpt), "--force"]
    res = cli(*args)
    assert res.exit_code == 7 and "would overwrite input" in res.stderr
    assert ckpt.read_bytes() == before


def test_spec_infer_wrong_input_shape_is_one_line_with_the_cause(cli):
    # torch.fx's ShapeProp prints the model's traceback itself; only our line may reach stderr
    res = cli("spec", "infer", "--model", "digits-mlp", "--input-shape", "3")
    assert res.exit_code == 8
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "input shape (3,)" in lines[0] and "mat1 and mat2 shapes cannot be multiplied" in lines[0]


def test_builtin_model_error_keeps_its_own_exit_code(ckpts, cli):
    # a built-in task that does not fit the checkpoint is a mismatch (5), not a failing plug-in (8)
    _, (a, _, _) = ckpts
    res = cli("spec", "check", "digits-mlp", str(a), "--model", "digits-cnn", "--input-shape", "64")
    assert res.exit_code == 5 and "not a digits-cnn checkpoint" in res.stderr


def test_align_perms_out_equal_to_out_is_refused(ckpts, tmp_path, cli):
    _, (a, b, _) = ckpts
    out = tmp_path / "al.safetensors"
    res = cli("align", str(a), str(b), "--spec", "digits-mlp", "-o", str(out), "--perms-out", str(out))
    assert res.exit_code == 2 and "--perms-out" in res.stderr and "same path as the aligned output" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_factory_prints_go_to_stderr_not_into_the_spec(tmp_path, monkeypatch, cli):
    (tmp_path / "chatty_factory.py").write_text(
        "import torch\nprint('importing chatty')\n"
        "def factory():\n"
        "    print('building')\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    res = cli("spec", "infer", "--model", "chatty_factory:factory", "--input-shape", "4")
    assert res.exit_code == 0, res.output
    assert "importing chatty" in res.stderr and "building" in res.stderr
    assert "building" not in res.stdout and "importing" not in res.stdout
    assert yaml.safe_load(res.stdout)["format"] == "wsa-permutation-spec"


def test_spec_list_and_check_csv_is_csv_not_json(ckpts, cli):
    _, (a, _, _) = ckpts
    res = cli("spec", "list", "--format", "csv")
    assert res.exit_code == 0 and res.stdout.splitlines()[0] == "name,description"
    assert "digits-mlp," in res.stdout
    res = cli("spec", "check", "digits-mlp", str(a), "--format", "csv")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == ["group,size,axes", "P_fc1,16,3", "P_fc2,16,3"]
