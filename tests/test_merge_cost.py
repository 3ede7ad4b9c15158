"""The predicted cost of a merge: the memory model term by term, disk and I/O, ``--max-memory``, and a measured peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsa_cli.errors import InvalidValueError
from wsa_cli.io import save_safetensors
from wsa_cli.merge.cost import SCOPE_CHUNK, format_size, parse_size, predict_merge, probe_read_speed, probe_write_speed, stage_memory
from wsa_cli.merge.executor import merge_recipe
from wsa_cli.merge.plan import plan_recipe
from wsa_cli.recipe import load_recipe

N = 64 * 64  # values per tensor
B = N * 4  # bytes per float32 tensor


def _models(folder: Path, k: int = 2, n_tensors: int = 4, shape: tuple[int, ...] = (64, 64)) -> None:
    g = torch.Generator().manual_seed(0)
    for name in [*"abcdefgh"[:k], "base"]:
        save_safetensors({f"l{i}.weight": torch.randn(shape, generator=g) for i in range(n_tensors)}, folder / f"{name}.safetensors")


def _recipe(folder: Path, method: str = "linear", k: int = 2, base: bool = False, out: str = "out.safetensors") -> Path:
    models = "".join(f"  - path: {m}.safetensors\n" for m in "abcdefgh"[:k])
    path = folder / f"{method}.yaml"
    path.write_text(f"models:\n{models}" + ("base: base.safetensors\n" if base else "") + f"method: {method}\noutput: {out}\n")
    return path


def test_sizes() -> None:
    assert parse_size("8GB") == 8 * 10**9 and parse_size("512MiB") == 512 << 20 and parse_size("1.5 G") == 1_500_000_000
    assert parse_size(100) == 100 and format_size(2_500_000) == "2.50 MB"
    with pytest.raises(InvalidValueError):
        parse_size("lots")


def test_memory_terms_follow_the_executor(tmp_path: Path) -> None:
    _models(tmp_path)
    plan = plan_recipe(load_recipe(_recipe(tmp_path)))[0]
    m = stage_memory(plan, "cpu", baseline=0)
    # overlapped: key i merged while key i-1 is written; a merged key's inputs go once merged -> 1 key x 2 models mapped,
    # two output pools
    assert m.cpu["mapped_inputs"] == 2 * B and m.cpu["output_buffers"] == 2 * B
    assert m.cpu["working"] == SCOPE_CHUNK * 8 + 2 * N * 4  # the f64 block, the kernel's acc/tmp blocks
    serial = stage_memory(plan, "cpu", overlap=False, baseline=0)
    assert serial.cpu["mapped_inputs"] == 2 * B and serial.cpu["output_buffers"] == B
    one = stage_memory(plan, "cpu", keys=["l0.weight"], baseline=0)  # a part holding one key
    assert one.cpu["mapped_inputs"] == 2 * B
    ties = plan_recipe(load_recipe(_recipe(tmp_path, "ties", base=True)))[0]
    t = stage_memory(ties, "cpu", baseline=0)
    assert t.cpu["mapped_inputs"] == 3 * B  # the base is read too
    # per-model task-vector blocks, |tau|, sign election + disjoint mean blocks, a block's |tau| and its zeroed flags
    assert t.cpu["working"] == m.cpu["working"] + 3 * N * 4 + N * 4 + 4 * N * 4 + N * 5
    cuda = stage_memory(plan, "cuda", baseline=0)
    assert cuda.gpu is not None and cuda.gpu["inputs"] == 2 * B and cuda.cpu["pinned_read_ring"] == 3 * 2 * B


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "breadcrumbs", "della", "task_arithmetic", "model_stock"])
def test_working_memory_prediction_covers_what_the_method_allocates(tmp_path: Path, method: str) -> None:
    """The working pool a real merge of one key grows to stays under the predicted term, and close to it."""
    from safetensors.torch import load_file

    from wsa_cli.buffers import Scratch
    from wsa_cli.merge.cost import _work_bytes
    from wsa_cli.merge.executor import merge_tensor

    _models(tmp_path, n_tensors=1, shape=(300, 300))  # more than RADIX_MIN values: TIES's histogram selection runs
    plan = plan_recipe(load_recipe(_recipe(tmp_path, method, base=True)))[0]
    entry = plan.tensors[0]
    xs = [load_file(tmp_path / f"{m}.safetensors")[entry.key] for m in "ab"]
    work = Scratch()
    merge_tensor(entry, xs, load_file(tmp_path / "base.safetensors")[entry.key], scope=plan.scope, weights=plan.weights,
                 seed=0, device=torch.device("cpu"), work=work)  # fmt: skip
    used = sum(b.numel() * b.element_size() for b in work._bufs.values())
    persistent, transient = _work_bytes(plan, entry, SCOPE_CHUNK)
    # allocated outside the pool and freed at once: DELLA's int64 rank keys, a block of DARE's and DELLA's 32-bit draws
    outside = (8 * 90_000 if method == "della" else 0) + (4 * 90_000 if method.startswith(("dare", "della")) else 0)
    assert used <= persistent + transient - outside <= used + 2 * 90_000 * 4 + 16  # slack: the linear kernel's two blocks, counted for every method


def test_disk_and_bytes(tmp_path: Path) -> None:
    _models(tmp_path, k=3)
    cost = predict_merge(plan_recipe(load_recipe(_recipe(tmp_path, "ties", k=3, base=True))))
    assert cost.read_bytes == 4 * 4 * B  # three models and the base, every tensor once
    merge_recipe(tmp_path / "ties.yaml")
    written = (tmp_path / "out.safetensors").stat().st_size
    assert written <= cost.output_bytes <= written * 1.2
    assert cost.read_bytes_per_s is None and cost.seconds == 0  # too small to be worth a probe
    probe_file = tmp_path / "probe.bin"
    probe_file.write_bytes(os.urandom(2 << 20))
    assert probe_read_speed([probe_file]) > 0 and probe_write_speed(tmp_path / "x" / "out.safetensors") > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # the write probe left nothing
    big = plan_recipe(load_recipe(_recipe(tmp_path, "ties", k=3, base=True, out="big.safetensors")))[0]
    object.__setattr__(big, "tensors", big.tensors * 300)  # enough values to calibrate: the arithmetic is measured
    from wsa_cli.merge.cost import compute_seconds

    seconds, notes = compute_seconds(big)
    assert seconds > 0 and not notes


def test_dry_run_json_and_the_line_at_the_start_of_a_merge(tmp_path: Path, cli) -> None:  # noqa: ANN001
    _models(tmp_path)
    r = cli("merge", str(_recipe(tmp_path)), "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    cost = json.loads(r.stdout)["cost"]
    assert {"peak_cpu_bytes", "peak_gpu_bytes", "disk_bytes", "output_bytes", "temp_bytes", "read_bytes", "write_bytes", "seconds",
            "read_bytes_per_s", "terms", "overlap"} <= set(cost)  # fmt: skip
    assert not (tmp_path / "out.safetensors").exists()
    seen = []
    res = merge_recipe(tmp_path / "linear.yaml", on_cost=seen.append)  # the CLI prints it on a terminal's stderr
    assert len(seen) == 1 and seen[0].to_dict()["peak_cpu_bytes"] == res.cost["peak_cpu_bytes"]
    assert seen[0].line().startswith("predicted: peak memory ") and "disk" in seen[0].line()


def test_max_memory_drops_the_overlap_or_refuses_with_the_figure(tmp_path: Path, cli) -> None:  # noqa: ANN001
    _models(tmp_path, shape=(512, 512))
    recipe = _recipe(tmp_path)
    merge_recipe(recipe)
    ref = (tmp_path / "out.safetensors").read_bytes()
    full = predict_merge(plan_recipe(load_recipe(recipe), force=True), probe=False)
    ceiling = full.peak_cpu_bytes - full.terms["mapped_inputs"] // 4  # below the overlapped plan, above the serial one
    r = cli("merge", str(recipe), "--force", "--max-memory", str(ceiling), "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["cost"]["overlap"] is False and doc["cost"]["peak_cpu_bytes"] <= ceiling
    assert (tmp_path / "out.safetensors").read_bytes() == ref  # the same bytes with fewer buffers
    r = cli("merge", str(recipe), "--force", "--max-memory", "1MB")
    assert r.exit_code == 2 and "--max-memory" in r.stderr and "needs at least" in r.stderr
    r = cli("merge", str(recipe), "--max-memory", "many")
    assert r.exit_code == 2 and "--max-memory" in r.stderr


def test_predicted_peak_is_within_25_percent_of_the_measured_one(tmp_path: Path) -> None:
    _models(tmp_path, n_tensors=6, shape=(2048, 2048))  # 16 MB per tensor, 96 MB per model
    recipe = _recipe(tmp_path, "ties", base=True)
    code = ("import json,sys; from wsa_cli.merge.executor import merge_recipe; r = merge_recipe(sys.argv[1]); "
            "hwm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
            "print(json.dumps({'pred': r.cost['peak_cpu_bytes'], 'base': r.cost['terms']['baseline'], 'meas': hwm}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, check=True, env={**os.environ, "WSA_NO_PROGRESS": "1"})
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(d["meas"] / d["pred"] - 1) <= 0.25, d
    assert 0.5 <= (d["meas"] - d["base"]) / (d["pred"] - d["base"]) <= 1.5, d  # what the merge added, not only the interpreter
