"""Check ``wsa merge``'s predicted cost against what the merge then measures, side by side in one run.

Writes K synthetic LLM-like checkpoints of about G GB each (an embedding, per block a fused QKV,
an MLP up and down projection, norms; bfloat16 by default), then for each method and K runs the
merge in a fresh subprocess: the library call :func:`~wsa_cli.merge.executor.merge_recipe`
predicts the cost (:mod:`wsa_cli.merge.cost`) right before it runs, so prediction and
measurement come from the same process. Measured: peak RSS (``VmHWM``) and the wall time of the
call. Printed per run: predicted / measured peak memory and time, and their ratios (``above-base``:
the ratio of what the merge added to the process's memory at the time of the prediction, the
stricter check). Target: peak memory within 25% of the prediction.

With ``--max-memory`` the plan may drop the write-behind overlap; each run is also repeated with
a ceiling between the serial and the overlapped prediction (``--ceiling``), to check that the
lower plan is what runs.

    .venv/bin/python bench/bench_cost.py --quick                 # 2 x 64 MB and 8 x 64 MB, a minute
    nice -n 10 .venv/bin/python bench/bench_cost.py --size-gb 0.5 --models 2,8

``--distributed`` measures instead one linear merge of K models (default 8 x 1 GB) with a sharded
folder output: wall time of the single-process merge, of ``--part i/4`` run one after another
(each part's predicted and measured peak, then ``--assemble``), of ``--executor ray`` with 2
workers, and of a ``--parts 4`` run killed by SIGKILL after its second part, then resumed; each
output is compared byte for byte with the single-process one::

    nice -n 10 .venv/bin/python bench/bench_cost.py --distributed --size-gb 1 --models 8

Files go to ``bench/out/cost`` (ignored by git) and are removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"linear": False, "ties": True, "dare_linear": True, "slerp": False}  # method -> needs a base


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def write_models(folder: Path, k: int, size_gb: float, dtype_name: str) -> dict:
    """K models and a base, LLM-like layout, about ``size_gb`` each; returns the layout."""
    import torch

    from wsa_cli.io import SafetensorsWriter, TensorInfo

    dtype = getattr(torch, dtype_name)
    hidden = 1024 if size_gb >= 0.2 else 512
    per_block = (3 + 4 + 4) * hidden * hidden * dtype.itemsize
    vocab = 8 * hidden
    blocks = max(1, round((size_gb * 1e9 - vocab * hidden * dtype.itemsize) / per_block))
    infos = [TensorInfo("embed.weight", (vocab, hidden), dtype)]
    for b in range(blocks):
        infos += [TensorInfo(f"blocks.{b}.qkv.weight", (3 * hidden, hidden), dtype), TensorInfo(f"blocks.{b}.norm.weight", (hidden,), dtype),
                  TensorInfo(f"blocks.{b}.up.weight", (4 * hidden, hidden), dtype), TensorInfo(f"blocks.{b}.down.weight", (hidden, 4 * hidden), dtype)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"m{j}" for j in range(k)] + ["base"]):
        path = folder / f"{name}.safetensors"
        if path.exists():
            continue
        g = torch.Generator().manual_seed(i)
        with SafetensorsWriter(path, infos) as w:
            for info in infos:
                w.write(info.key, (torch.randn(info.shape, generator=g) * 0.02 * (1 + 0.1 * i)).to(dtype))
    return {"hidden": hidden, "blocks": blocks, "tensors": len(infos), "bytes": sum(i.nbytes for i in infos)}


def write_recipe(folder: Path, method: str, k: int, ceiling: str | None = None) -> Path:
    models = "".join(f"  - path: m{j}.safetensors\n" for j in range(k))
    base = "base: base.safetensors\n" if METHODS[method] else ""
    params = "parameters: {t: 0.3}\n" if method == "slerp" else ""
    path = folder / f"{method}-{k}.yaml"
    path.write_text(f"models:\n{models}{base}method: {method}\n{params}output: out-{method}-{k}.safetensors\n")
    return path


def child(recipe: str, max_memory: str | None) -> None:
    """In a fresh process: predict, merge, measure; print one JSON line."""
    from wsa_cli.merge.executor import merge_recipe

    t0 = time.perf_counter()
    res = merge_recipe(recipe, force=True, max_memory=max_memory)
    wall = time.perf_counter() - t0
    print(json.dumps({"cost": res.cost, "wall_s": wall, "peak_rss": _status_kib("VmHWM") * 1024}))


def child_part(recipe: str, part: str | None, mode: str) -> None:
    """In a fresh process: one part (or the whole merge, or assemble, or all parts on Ray); print time, peaks, predictions."""
    from wsa_cli.merge.cost import stage_memory
    from wsa_cli.merge.executor import merge_recipe
    from wsa_cli.merge.parts import Split, parse_part, split_parts
    from wsa_cli.merge.plan import plan_recipe
    from wsa_cli.recipe import load_recipe

    split = None
    pred_part = None
    if mode == "part":
        i, n = parse_part(part)
        split = Split(part=(i, n))
        plan = plan_recipe(load_recipe(recipe))[0]
        pred_part = stage_memory(plan, keys=split_parts(plan, n)[0][i - 1].keys).cpu_total
    elif mode == "assemble":
        split = Split(assemble=True)
    elif mode == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        split = Split(parts=4, executor="ray")
    t0 = time.perf_counter()
    res = merge_recipe(recipe, split=split)
    wall = time.perf_counter() - t0
    print(json.dumps({"cost": res.cost, "wall_s": wall, "peak_rss": _status_kib("VmHWM") * 1024, "pred_part": pred_part,
                      "ray": res.final.get("ray")}))  # fmt: skip


def _tree(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def distributed(folder: Path, k: int, size_gb: float) -> None:
    """The closing measurement of issue 17 (see the module docstring)."""
    import signal

    recipe = folder / "dist.yaml"
    shard = int(size_gb * 1e9 / 8) + 1  # about 8 shards: 4 parts of 2
    recipe.write_text("models:\n" + "".join(f"  - path: m{j}.safetensors\n" for j in range(k)) + f"method: linear\noutput:\n  path: dist-out\n  shard_size: {shard}\n")
    out, moved = folder / "dist-out", folder / "dist-single"

    def child(mode: str, part: str | None = None) -> dict:
        os.sync()
        cmd = [sys.executable, __file__, "--child", str(recipe), "--mode", mode] + (["--part", part] if part else [])
        res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "WSA_NO_PROGRESS": "1"})
        return json.loads(res.stdout.strip().splitlines()[-1])

    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(moved, ignore_errors=True)
    single = child("whole")
    ref = _tree(out)
    os.rename(out, moved)
    print(f"single process: {single['wall_s']:.1f} s, peak {single['peak_rss'] / 1e9:.3f} GB (predicted {single['cost']['peak_cpu_bytes'] / 1e9:.3f} GB), "
          f"predicted time {single['cost']['seconds']:.1f} s")  # fmt: skip
    total = 0.0
    for i in range(1, 5):
        r = child("part", f"{i}/4")
        total += r["wall_s"]
        print(f"  --part {i}/4: {r['wall_s']:.1f} s, peak {r['peak_rss'] / 1e9:.3f} GB, predicted {r['pred_part'] / 1e9:.3f} GB "
              f"(ratio {r['peak_rss'] / r['pred_part']:.2f})")  # fmt: skip
    a = child("assemble")
    total += a["wall_s"]
    print(f"  --assemble: {a['wall_s']:.1f} s; parts x4 sequential + assemble: {total:.1f} s = {total / single['wall_s']:.2f}x single; "
          f"byte-identical: {_tree(out) == ref}")  # fmt: skip
    shutil.rmtree(out)
    r = child("ray")
    mem = ", ".join(f"part {p['part']} pid {p['pid']}: memory= {p['memory'] / 1e9:.3f} GB, worker peak {p['peak_rss'] / 1e9:.3f} GB, "
                    f"started {p['starts']}x" for p in r["ray"])  # fmt: skip
    print(f"--executor ray, 2 workers, 4 parts: {r['wall_s']:.1f} s = {r['wall_s'] / single['wall_s']:.2f}x single ({mem}); "
          f"byte-identical: {_tree(out) == ref}")  # fmt: skip
    shutil.rmtree(out)
    cmd = [sys.executable, "-m", "wsa_cli", "merge", str(recipe), "--parts", "4", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "WSA_NO_PROGRESS": "1"})
    manifest = folder / "dist-out.wsa-parts" / "part-00002-of-00004.json"
    while not manifest.exists() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.5)  # into part 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "WSA_NO_PROGRESS": "1"})
    resumed = time.perf_counter() - t0
    print(f"--parts 4 killed by SIGKILL after {killed_at:.1f} s (exit {proc.returncode}), resumed in {resumed:.1f} s "
          f"(single process {single['wall_s']:.1f} s); byte-identical: {_tree(out) == ref}")  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(moved, ignore_errors=True)


def run(recipe: Path, max_memory: str | None = None) -> dict:
    os.sync()
    cmd = [sys.executable, __file__, "--child", str(recipe)] + (["--max-memory", max_memory] if max_memory else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "WSA_NO_PROGRESS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=0.5)
    parser.add_argument("--models", default="2,8", help="the Ks to run, comma-separated")
    parser.add_argument("--methods", default="linear,ties,dare_linear,slerp")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--quick", action="store_true", help="64 MB models, linear and ties")
    parser.add_argument("--ceiling", action="store_true", help="also run each merge under a --max-memory between the two plans")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--distributed", action="store_true", help="time one process vs --part x4 vs Ray vs a resume after SIGKILL")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--max-memory", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.mode:
            child_part(args.child, args.part, args.mode)
        else:
            child(args.child, args.max_memory)
        return
    if args.quick:
        args.size_gb, args.methods = 0.064, "linear,ties"
    ks = [int(k) for k in args.models.split(",")]
    folder = ROOT / "bench" / "out" / ("dist" if args.distributed else "cost")
    layout = write_models(folder, max(ks), args.size_gb, args.dtype)
    print(f"models: {layout['bytes'] / 1e9:.2f} GB each ({layout['tensors']} tensors, hidden {layout['hidden']}, {args.dtype}); "
          f"cpu count {os.cpu_count()}")  # fmt: skip
    if args.distributed:
        try:
            distributed(folder, max(ks), args.size_gb)
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        return
    print(f"{'method':<12} {'K':>2} {'ceiling':>9} {'pred peak':>10} {'meas peak':>10} {'mem ratio':>9} {'pred s':>7} {'meas s':>7} {'t ratio':>7} {'above-base':>10}  overlap")
    worst = 0.0
    try:
        for method in args.methods.split(","):
            for k in ks:
                if method == "slerp" and k != 2:
                    continue
                recipe = write_recipe(folder, method, k)
                runs = [(None, run(recipe))]
                if args.ceiling:
                    from wsa_cli.merge.cost import format_size

                    c = runs[0][1]["cost"]
                    terms = c["terms"]
                    lower = c["peak_cpu_bytes"] - terms.get("mapped_inputs", 0) // 2 - terms.get("output_buffers", 0) // 4
                    ceiling = str(int((lower + c["peak_cpu_bytes"]) / 2))
                    runs.append((format_size(int(ceiling)), run(recipe, ceiling)))
                for ceiling, r in runs:
                    c = r["cost"]
                    ratio = r["peak_rss"] / c["peak_cpu_bytes"]
                    worst = max(worst, abs(ratio - 1))
                    tr = r["wall_s"] / c["seconds"] if c["seconds"] else float("nan")
                    base = c["terms"]["baseline"]  # what the process held before the merge: the ratio of the rest
                    above = (r["peak_rss"] - base) / max(1, c["peak_cpu_bytes"] - base)
                    print(f"{method:<12} {k:>2} {ceiling or '-':>9} {c['peak_cpu_bytes'] / 1e9:>9.3f}G {r['peak_rss'] / 1e9:>9.3f}G {ratio:>9.2f} "
                          f"{c['seconds']:>7.2f} {r['wall_s']:>7.2f} {tr:>7.2f} {above:>10.2f}  {c['overlap']}", flush=True)  # fmt: skip
                (folder / f"out-{method}-{k}.safetensors").unlink(missing_ok=True)
                (folder / f"out-{method}-{k}.wsa-merge-report.json").unlink(missing_ok=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"worst |measured/predicted - 1| of peak memory: {worst:.1%} (target <= 25%)")


if __name__ == "__main__":
    main()
