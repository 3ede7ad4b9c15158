"""The one thread policy: what it chooses, what overrides it, and that it neither leaks nor changes results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from wsa_cli.errors import InvalidValueError
from wsa_cli.threads import MAX_STREAMING_THREADS, check_threads, choose_threads, compute_threads


@pytest.fixture(autouse=True)
def _no_user_thread_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (4, 1), (8, 4), (6, 3), (64, MAX_STREAMING_THREADS)])
def test_streaming_work_policy_by_core_count(cores, expected):
    for work in ("merge", "inspect"):
        plan = choose_threads(work, cores=cores)
        assert (plan.compute, plan.source, plan.cores) == (expected, "policy", cores)
    assert choose_threads("merge", cores=cores).io == 3 and choose_threads("inspect", cores=cores).io == 0


def test_what_overrides_the_policy(monkeypatch):
    assert choose_threads("merge", cores=2, requested=2).compute == 2
    assert choose_threads("merge", cores=2, requested=2).source == "--threads"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    plan = choose_threads("merge", cores=2)
    assert (plan.compute, plan.source) == (3, "OMP_NUM_THREADS")
    assert choose_threads("merge", cores=2, requested=1).compute == 1  # the flag wins over the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a count: ignored
    assert choose_threads("merge", cores=2).source == "policy"


def test_cuda_compute_bound_methods_and_other_work_keep_torchs_setting():
    plans = (choose_threads("merge", device="cuda", cores=2), choose_threads("train", cores=2),
             choose_threads("merge", cores=2, memory_bound=False))  # fmt: skip
    for plan in plans:
        assert plan.source == "torch default" and plan.compute == torch.get_num_threads()


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(InvalidValueError) as info:
        check_threads(bad)
    assert info.value.option == "threads"


def test_compute_threads_restores_the_previous_count():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with compute_threads(choose_threads("merge", requested=other)):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before


def test_command_line_prefers_passive_waiting_only_before_torch_and_only_when_unset():
    code = ("import os, sys\n{pre}from wsa_cli.threads import prefer_passive_waiting\nprefer_passive_waiting()\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))\n")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = lambda pre, e: subprocess.run([sys.executable, "-c", code.format(pre=pre)], env=e, capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
    assert run("", env) == "PASSIVE"
    assert run("", {**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the user's choice stays
    assert run("import torch\n", env) == "None"  # too late once OpenMP is loaded: nothing changes


def _pair(tmp_path):
    g = torch.Generator().manual_seed(0)
    for i, name in enumerate(("a", "b")):
        save_file({"w": torch.randn(512, 512, generator=g) * (0.02 + 0.01 * i), "v": torch.randn(1_100_001, generator=g)},
                  str(tmp_path / f"{name}.safetensors"))  # fmt: skip
    return tmp_path


def test_merge_reports_its_threads_and_the_bits_do_not_depend_on_them(tmp_path, cli):
    d = _pair(tmp_path)
    before = torch.get_num_threads()
    outs = {}
    for n in (1, 2):
        out = d / f"m{n}.safetensors"
        res = cli("merge", str(d / "a.safetensors"), str(d / "b.safetensors"), "-o", str(out), "--threads", str(n), "--json")
        assert res.exit_code == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["threads"]["compute"] == n and doc["threads"]["source"] == "--threads"
        outs[n] = load_file(str(out))
    assert torch.get_num_threads() == before  # the run's setting does not leak into the caller
    for key in outs[1]:
        assert torch.equal(outs[1][key], outs[2][key]), key
    dry = cli("merge", str(d / "a.safetensors"), str(d / "b.safetensors"), "-o", str(d / "x.safetensors"), "--dry-run", "--format", "table")
    assert dry.exit_code == 0 and "threads: " in dry.stdout and "(policy)" in dry.stdout


def test_threads_flag_rejects_zero(tmp_path, cli):
    d = _pair(tmp_path)
    res = cli("merge", str(d / "a.safetensors"), str(d / "b.safetensors"), "-o", str(d / "m.safetensors"), "--threads", "0")
    assert res.exit_code == 2 and "--threads" in res.stderr and not (d / "m.safetensors").exists()


def test_a_merge_picks_its_threads_from_its_methods(tmp_path, cli):
    d = _pair(tmp_path)
    save_file(load_file(str(d / "a.safetensors")), str(d / "base.safetensors"))
    common = [str(d / "a.safetensors"), str(d / "b.safetensors"), "-o", str(d / "x.safetensors"), "--dry-run", "--json"]
    linear = json.loads(cli("merge", *common).stdout)["threads"]
    ties = json.loads(cli("merge", *common, "--method", "ties", "--base", str(d / "base.safetensors")).stdout)["threads"]
    assert linear["source"] == "policy" and ties["source"] == "torch default"
