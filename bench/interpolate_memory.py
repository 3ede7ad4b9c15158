"""Peak memory of ``wsa interpolate``: data-free diagnostics stream, evaluation holds ~3 models.

Writes two synthetic checkpoints (``--layers`` matrices of ``--mb`` MiB each, float32), then runs,
each in a fresh subprocess so peaks do not mix:

* ``data-free``: ``run_interpolation`` without an evaluator (naive and wsa modes), which should
  hold about one tensor of each endpoint plus one interpolated tensor at a time;
* ``evaluate``: the same with a no-op evaluator, which materialises each mode's two endpoints and
  one model per alpha (expected peak about 3 models);
* ``evaluate --low-memory``: endpoints re-read per alpha, only the path model is held (about 1).

Prints the extra peak RSS over the process's RSS after imports, in MiB, as a multiple of one
model's size and of one layer's size, for several layer counts side by side: data-free memory
should stay flat in layers as the model grows; evaluation should track about 3 models. Run small:

    .venv/bin/python bench/interpolate_memory.py --layers 4,8,16 --mb 8 --alphas 0:1:5

(Linux only: peak RSS is the child's VmHWM; numbers include allocator slack.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mib() -> float:
    """Peak RSS of this process image (VmHWM). Not ``ru_maxrss``: Linux carries that over from the
    parent across fork+exec, so a child of a big parent would report the parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    raise OSError("no VmHWM in /proc/self/status (Linux only)")


def _child(kind: str, a: str, b: str, alphas: str) -> None:
    import torch  # noqa: F401 - imported before the baseline is taken

    from wsa_cli.interpolate import Evaluator, parse_alphas, run_interpolation

    base = _rss_mib()
    ev = Evaluator("noop", lambda sd, device: {"loss": 0.0}) if kind.startswith("evaluate") else None
    run_interpolation(a, b, alphas=parse_alphas(alphas), modes=["naive", "wsa"], evaluator=ev, low_memory=kind == "evaluate-low")
    peak = _hwm_mib()
    print(json.dumps({"kind": kind, "baseline_mib": base, "peak_mib": peak}))


def _measure(kind: str, a: str, b: str, alphas: str) -> float:
    env = dict(os.environ)
    # a fixed mmap threshold stops glibc's dynamic threshold from keeping freed tensors in the
    # heap, so the numbers measure what wsa holds rather than allocator slack
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    out = subprocess.run([sys.executable, __file__, "--child", kind, a, b, alphas],
                         check=True, capture_output=True, text=True, env=env).stdout  # fmt: skip
    r = json.loads(out.strip().splitlines()[-1])
    return r["peak_mib"] - r["baseline_mib"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--layers", default="4,8,16", help="comma-separated layer counts (one row each)")
    ap.add_argument("--mb", type=float, default=8.0, help="MiB per layer (float32 square-ish matrix)")
    ap.add_argument("--alphas", default="0:1:5")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "A", "B", "ALPHAS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    import torch
    from safetensors.torch import save_file

    numel = int(args.mb * 2**20 / 4)
    rows = max(1, int(numel**0.5))
    cols = max(1, numel // rows)
    tensor_mib = rows * cols * 4 / 2**20
    print(f"# layers of ({rows}, {cols}) float32 = {tensor_mib:.1f} MiB each; modes naive,wsa; alphas {args.alphas}")
    print(f"# extra peak RSS over the RSS after imports; MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 1 << 20)}")
    print(f"{'layers':>6}{'model MiB':>11}{'data-free MiB':>15}{'/ model':>9}{'/ layer':>9}{'evaluate MiB':>14}{'/ model':>9}"
          f"{'--low-memory MiB':>18}{'/ model':>9}")
    for n_layers in (int(x) for x in args.layers.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for seed in (0, 1):
                g = torch.Generator().manual_seed(seed)
                sd = {f"layer{i}.weight": torch.randn(rows, cols, generator=g) * (0.02 * (seed + 1)) for i in range(n_layers)}
                paths.append(str(Path(tmp) / f"m{seed}.safetensors"))
                save_file(sd, paths[-1])
                del sd
            model_mib = n_layers * tensor_mib
            free = _measure("data-free", paths[0], paths[1], args.alphas)
            ev = _measure("evaluate", paths[0], paths[1], args.alphas)
            low = _measure("evaluate-low", paths[0], paths[1], args.alphas)
            print(f"{n_layers:>6}{model_mib:>11.1f}{free:>15.1f}{free / model_mib:>9.2f}{free / tensor_mib:>9.2f}"
                  f"{ev:>14.1f}{ev / model_mib:>9.2f}{low:>18.1f}{low / model_mib:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
