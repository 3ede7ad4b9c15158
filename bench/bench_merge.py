"""``wsa merge`` against the plain floor and mergekit, side by side in one run, per method and thread setting.

Writes Llama-shaped model folders (``config.json`` + ``model.safetensors``, the layout of
``bench_vs_mergekit.py``: K fine-tunes of a base, in ``--dtype``), then measures in fresh child
processes, in rounds (every configuration once per round, the order rotating from round to
round, so that drift on a shared machine hits all of them alike):

* **floor**: a plain Python script that loads every input with ``safetensors.torch.load_file``,
  averages the floating-point tensors in float32, casts back, ``save_file``s and fsyncs the
  output (wsa's writer fsyncs before its atomic rename). Timed from after ``import torch``;
* **wsa**: ``wsa merge CONFIG -o OUT`` (the same mergekit config mergekit runs; ``--align`` for
  alignment on), under each thread setting. Timed twice: in the child from after ``import torch``
  (``wsa in``, compared with the floor) and as the whole process (``wsa proc``, compared with
  mergekit, whose start-up is part of its cost too);
* **mergekit** (when ``--mergekit`` exists): ``mergekit-yaml CONFIG OUT`` offline, whole process.

Thread settings (``--settings``): ``auto`` is what a user gets (wsa's own choice,
``wsa_cli/threads.py``); ``t1``/``t2``: ``--threads 1``/``2``; ``spin``: wsa's choice of threads
but spinning OpenMP waits (``OMP_WAIT_POLICY=ACTIVE``, what the command line avoids).
``--load N`` starts N CPU-bound busy loops at nice 10 for the whole measurement ("a machine doing
other things"); the table says the load average measured during the run.

Printed: per (method, alignment, setting) the median seconds and the min-max spread over the
rounds, ``wsa in / floor``, ``mk / wsa proc`` (how many times faster wsa is), peak RSS of both
tools (``/usr/bin/time -f %M``) and the largest absolute difference between their outputs (see
``bench_vs_mergekit.py`` for what to expect per method). ``--json`` prints every raw time.

    .venv/bin/python bench/bench_merge.py --size-gb 0.05 --methods linear,ties --repeat 1   # a quick check
    nice -n 5 .venv/bin/python bench/bench_merge.py --size-gb 1 --models 8 --dtype float32 --align both
    nice -n 5 .venv/bin/python bench/bench_merge.py --size-gb 0.5 --methods ties,dare_ties --load 1

Methods other than ``linear`` take two fine-tunes (and the base where they need one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_vs_mergekit as vs  # noqa: E402 - the mergekit configs, the model writer, run() and max_abs_diff()

SETTINGS = {"auto": ({"OMP_WAIT_POLICY": "PASSIVE"}, []), "t1": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", "1"]),
            "t2": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", "2"]), "spin": ({"OMP_WAIT_POLICY": "ACTIVE"}, [])}  # fmt: skip

_FLOOR = """
import os, sys, time, torch
from safetensors.torch import load_file, save_file
t0 = time.perf_counter()
out, paths = sys.argv[1], sys.argv[2:]
models = [load_file(p) for p in paths]
merged = {}
for k, t in models[0].items():
    if t.is_floating_point():
        acc = t.float()
        for m in models[1:]:
            acc = acc + m[k].float()
        merged[k] = (acc / len(models)).to(t.dtype)
    else:
        merged[k] = t
save_file(merged, out)
fd = os.open(out, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
print(time.perf_counter() - t0)
"""

# the wsa child: torch first (the clock starts after it, as the floor's), then the command line in-process;
# the parent sets the OpenMP waiting policy the command line would have set before torch
_WSA = """
import sys, time, torch
t0 = time.perf_counter()
from wsa_cli.cli.app import main
sys.argv = ["wsa", *sys.argv[2:]]
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
elapsed = time.perf_counter() - t0
import os
with open(os.environ["WSA_BENCH_TIME"], "w") as fh:
    fh.write(str(elapsed))
"""


def mergekit_config(method: str, folders: list[Path], base: Path, layers: int, dtype: str) -> str:
    """The mergekit config of ``method`` over ``folders`` (and ``base``), as bench_vs_mergekit writes it."""
    if method == "linear" and len(folders) != 2:
        body = "models:\n" + "".join(f"  - model: {f}\n    parameters: {{weight: 1.0}}\n" for f in folders)
    else:
        if len(folders) != 2:
            raise SystemExit(f"{method}: the mergekit configs take two fine-tunes; use --models 2 (or --methods linear)")
        table = vs.TWO if method in vs.TWO else vs.BASE2
        if method not in table:
            raise SystemExit(f"unknown method {method!r}: one of {', '.join(sorted({*vs.TWO, *vs.BASE2}))}")
        body = table[method][0].format(A=folders[0], B=folders[1], BASE=base, L=layers, H=layers // 2)
    return f"merge_method: {method}\n{body}dtype: {dtype}\n"


def write_inputs(work: Path, k: int, size_gb: float, layers: int, dtype: str) -> tuple[list[Path], Path, int]:
    """A base and K fine-tunes as model folders in ``dtype``; returns the folders, the base and the hidden size."""
    import torch
    from safetensors.torch import load_file, save_file

    h = vs.hidden_for(size_gb * 1e3 * 4 / getattr(torch, dtype).itemsize, layers)
    base = vs.write_model(work / "base", h, layers, None, 0)
    folders = [work / f"m{i}" for i in range(k)]
    for i, f in enumerate(folders):
        vs.write_model(f, h, layers, base, i + 1)
    if dtype != "float32":  # the writer makes float32; the same values, stored in dtype
        for f in [work / "base", *folders]:
            sd = {key: t.to(getattr(torch, dtype)) for key, t in load_file(f / "model.safetensors").items()}
            save_file(sd, f / "model.safetensors")
            cfg = json.loads((f / "config.json").read_text())
            (f / "config.json").write_text(json.dumps({**cfg, "torch_dtype": dtype}, indent=2))
    return folders, work / "base", h


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})" if len(xs) > 1 else f"{xs[0]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=0.05, help="size of each input model in GB (default 0.05)")
    ap.add_argument("--models", type=int, default=2, help="fine-tunes K (default 2; more than 2: linear only)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--methods", default="linear", help="comma-separated methods (default linear)")
    ap.add_argument("--align", choices=["on", "off", "both"], default="off", help="scope alignment in wsa (mergekit has none)")
    ap.add_argument("--settings", default="auto", help=f"comma-separated thread settings: {', '.join(SETTINGS)} (default auto)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--load", type=int, default=0, help="competing busy-loop processes at nice 10 (default 0)")
    ap.add_argument("--mergekit", default=str(vs.DEFAULT_MERGEKIT), help="mergekit-yaml in its own venv (skipped when missing)")
    ap.add_argument("--workdir", default=None, help="inputs and outputs (default: a temporary folder under bench/, removed)")
    ap.add_argument("--out-dir", default=None, help="where outputs are written (e.g. /dev/shm: no disk-write variance)")
    ap.add_argument("--json", action="store_true", help="one JSON object with every raw time")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    settings = [s for s in args.settings.split(",") if s]
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise SystemExit(f"unknown setting {bad[0]!r}: use {', '.join(SETTINGS)}")
    aligns = ["off", "on"] if args.align == "both" else [args.align]
    mk = Path(args.mergekit)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="wsa-bench-", dir=str(ROOT / "bench")))
    work.mkdir(parents=True, exist_ok=True)
    outs = Path(args.out_dir) if args.out_dir else work
    outs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    loops = []
    try:
        t0 = time.perf_counter()
        folders, base, h = write_inputs(work, args.models, args.size_gb, args.layers, args.dtype)
        size = (folders[0] / "model.safetensors").stat().st_size / 1e9
        print(f"inputs: {args.models} x {size:.2f} GB {args.dtype} Llama-shaped ({args.layers} layers, hidden {h}) + base, "
              f"written in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} cores")  # fmt: skip
        if not mk.exists():
            print(f"mergekit not found at {mk}: its columns are left out (python -m venv /work/mkvenv && "
                  "/work/mkvenv/bin/pip install torch==2.13.0 mergekit)")  # fmt: skip
        configs = {}
        for m in methods:
            cfg = work / f"{m}.yml"
            cfg.write_text(mergekit_config(m, folders, base, args.layers, args.dtype))
            configs[m] = cfg
        jobs = [("floor", None, None, None)]
        jobs += [("wsa", m, a, s) for m in methods for a in aligns for s in settings]
        jobs += [("mk", m, None, None) for m in methods] if mk.exists() else []
        times: dict[tuple, list[dict]] = {j: [] for j in jobs}
        loops = [subprocess.Popen([sys.executable, "-c", "import os\nos.nice(10)\nwhile True:\n    pass\n"]) for _ in range(args.load)]
        if loops:
            time.sleep(2)
        loads = []
        stamp = work / "wsa-time.txt"
        for r in range(args.repeat):
            order = jobs[r % len(jobs):] + jobs[: r % len(jobs)]
            for job in order:
                kind, m, a, s = job
                os.sync()
                if kind == "floor":
                    out = outs / "floor.safetensors"
                    cmd = [sys.executable, "-c", _FLOOR, str(out), *(str(f / "model.safetensors") for f in folders)]
                    wall, peak, text = vs.run(cmd, env, work)
                    times[job].append({"in": float(text.strip().splitlines()[-1]), "proc": wall, "rss_mb": peak})
                    out.unlink(missing_ok=True)
                elif kind == "wsa":
                    out = outs / f"wsa-{m}-{a}"
                    extra_env, flags = SETTINGS[s]
                    cmd = [sys.executable, "-c", _WSA, "wsa", "merge", str(configs[m]), "-o", str(out), "--quiet", "--force",
                           *(["--align"] if a == "on" else []), *flags]  # fmt: skip
                    wall, peak, _ = vs.run(cmd, {**env, **extra_env, "WSA_BENCH_TIME": str(stamp)}, work)
                    times[job].append({"in": float(stamp.read_text()), "proc": wall, "rss_mb": peak})
                else:
                    out = outs / f"mk-{m}"
                    shutil.rmtree(out, ignore_errors=True)
                    cmd = [str(mk), str(configs[m]), str(out), "--no-copy-tokenizer", "--no-write-model-card", "--quiet",
                           "--random-seed", "0"]  # fmt: skip
                    wall, peak, _ = vs.run(cmd, env, work)
                    times[job].append({"proc": wall, "rss_mb": peak})
                loads.append(os.getloadavg()[0])
        diffs = {m: vs.max_abs_diff(outs / f"wsa-{m}-{aligns[0]}", outs / f"mk-{m}")[0] if mk.exists() and aligns[0] == "off" else None
                 for m in methods}  # fmt: skip
        floor = [t["in"] for t in times[jobs[0]]]
        how = f"{args.load} busy loop(s) at nice 10" if args.load else "nothing else started"
        print(f"{args.repeat} round(s); load: {how}, 1-min load average {min(loads):.1f}-{max(loads):.1f}; "
              f"floor (load_file + average + save_file + fsync) {_median(floor)} s; medians (min-max) in s")  # fmt: skip
        head = f"{'method':13} {'align':5} {'set':4} {'wsa in':>17} {'in/flr':>6} {'wsa proc':>17} {'mk proc':>18} {'mk/wsa':>6} " \
               f"{'MB wsa':>6} {'MB mk':>6} {'|diff|':>8}"  # fmt: skip
        print(head)
        print("-" * len(head))
        rows = []
        for m in methods:
            mk_t = times.get(("mk", m, None, None), [])
            for a in aligns:
                for s in settings:
                    w = times[("wsa", m, a, s)]
                    w_in, w_proc = [t["in"] for t in w], [t["proc"] for t in w]
                    row = {"method": m, "align": a, "setting": s, "wsa_in_s": w_in, "wsa_proc_s": w_proc, "floor_s": floor,
                           "wsa_rss_mb": max(t["rss_mb"] for t in w), "mk_proc_s": [t["proc"] for t in mk_t],
                           "mk_rss_mb": max((t["rss_mb"] for t in mk_t), default=None), "max_abs_diff": diffs[m] if a == "off" else None}  # fmt: skip
                    rows.append(row)
                    ratio_f = statistics.median(w_in) / statistics.median(floor)
                    mk_cols = (f"{_median(row['mk_proc_s']):>18} {statistics.median(row['mk_proc_s']) / statistics.median(w_proc):6.2f}"
                               if mk_t else f"{'-':>18} {'-':>6}")  # fmt: skip
                    diff = "-" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2g}"
                    mk_mb = "-" if row["mk_rss_mb"] is None else f"{row['mk_rss_mb']:.0f}"
                    print(f"{m:13} {a:5} {s:4} {_median(w_in):>17} {ratio_f:6.2f} {_median(w_proc):>17} {mk_cols} "
                          f"{row['wsa_rss_mb']:6.0f} {mk_mb:>6} {diff:>8}", flush=True)  # fmt: skip
        if args.json:
            print(json.dumps({"models": args.models, "size_gb": size, "dtype": args.dtype, "load": args.load, "load_average": loads,
                              "rows": rows}))  # fmt: skip
    finally:
        for p in loops:
            p.kill()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        if args.out_dir:
            for o in outs.glob("wsa-*"):
                shutil.rmtree(o, ignore_errors=True)
            for o in outs.glob("mk-*"):
                shutil.rmtree(o, ignore_errors=True)


if __name__ == "__main__":
    main()
