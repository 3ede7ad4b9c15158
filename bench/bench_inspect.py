"""Benchmark `wsa inspect` against a plain sequential read of the same checkpoint.

Writes a synthetic float32 safetensors checkpoint of --size-gb GB (tensors of --tensor-mb MB each,
streamed to disk, never all in memory), then measures, side by side in one run:

* plain read: the file read start to end in 64 MiB blocks (no parsing, no math);
* `wsa inspect --all --format json`, as a user runs it (subprocess);
* peak resident memory of that subprocess (its own VmHWM, read at exit: ru_maxrss would also
  count the parent's pages carried across fork), the same for a process that only imports
  wsa/torch (the baseline), and their difference as a multiple of the largest tensor.

Both sides see the same page-cache state, measured twice: *warm* (the file was just read, so
both come from memory) and *cold* (the file's pages are evicted with posix_fadvise(DONTNEED)
before each timed run, so both read from disk). With --sizes A,B peak memory is measured at
several model sizes to show it does not grow with the model.

    python bench/bench_inspect.py --size-gb 2            # issue target: throughput >= 0.5x plain read
    python bench/bench_inspect.py --sizes 1,3 --tensor-mb 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsa_cli.io import SafetensorsWriter, TensorInfo  # noqa: E402


def write_checkpoint(path: Path, size_gb: float, tensor_mb: int) -> tuple[int, int]:
    """Stream a float32 checkpoint of about size_gb to path; return (bytes, largest tensor bytes)."""
    per = tensor_mb * (1 << 20) // 4
    cols = 1024
    rows = max(1, per // cols)
    count = max(1, int(size_gb * (1 << 30)) // (rows * cols * 4))
    infos = [TensorInfo(f"layers.{i}.weight", (rows, cols), torch.float32) for i in range(count)]
    g = torch.Generator().manual_seed(0)
    with SafetensorsWriter(path, infos, force=True) as w:
        for i, info in enumerate(infos):
            w.write(info.key, torch.randn(info.shape, generator=g) * (0.01 + 0.001 * i))
    return path.stat().st_size, rows * cols * 4


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages only; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def plain_read(path: Path, cold: bool = False) -> float:
    if cold:
        evict(path)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(64 << 20)
        view = memoryview(buf)
        while fh.readinto(view):
            pass
    return time.perf_counter() - start


# Runs `wsa ARGS...` (or, with no args, only the imports) and reports the process's own peak RSS.
PEAK_WRAPPER = """
import sys
import torch, wsa_cli.cli.app, wsa_cli.inspection.report, wsa_cli.io
try:
    if len(sys.argv) > 1:
        wsa_cli.cli.app.app(args=sys.argv[1:], prog_name="wsa", standalone_mode=False)
finally:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    sys.stderr.write("VMHWM_KB " + hwm.split()[1] + "\\n")
"""


def run_measured(wsa_args: list[str]) -> tuple[float, int, bytes]:
    """Wall time, peak RSS in bytes, stdout of one `wsa` process."""
    cmd = [sys.executable, "-c", PEAK_WRAPPER, *wsa_args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env={**os.environ, "WSA_NO_PROGRESS": "1"})
    elapsed = time.perf_counter() - start
    err = proc.stderr.decode()
    if proc.returncode != 0 or "VMHWM_KB" not in err:
        raise SystemExit(f"command failed: wsa {' '.join(wsa_args)}\n{err}")
    peak_kb = int(err.rsplit("VMHWM_KB ", 1)[1].split()[0])
    return elapsed, peak_kb * 1024, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--sizes", help="comma-separated sizes in GB to compare peak memory across (overrides --size-gb)")
    ap.add_argument("--tensor-mb", type=int, default=64, help="size of each tensor (the largest tensor)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repetitions; the best is reported")
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")] if args.sizes else [args.size_gb]

    workdir = Path(tempfile.mkdtemp(prefix="wsa-bench-", dir=args.dir))
    startup, base_rss, _ = min(run_measured([]) for _ in range(3))
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"baseline process (python + torch + wsa imported): {startup:.2f} s, peak RSS {base_rss / 2**20:.0f} MiB\n")
    header = (f"{'model':>9} {'cache':>5} {'tensors':>7} {'plain read':>11} {'wsa inspect':>12} {'throughput':>11} "
              f"{'w/o startup':>12} {'peak RSS':>9} {'(peak-base)/largest':>20}")
    print(header)
    print("-" * len(header))
    results = []
    try:
        for size in sizes:
            path = workdir / f"model-{size:g}gb.safetensors"
            nbytes, largest = write_checkpoint(path, size, args.tensor_mb)
            for cache in ("warm", "cold"):
                cold = cache == "cold"
                plain_read(path)  # same starting state for every configuration
                t_plain = min(plain_read(path, cold) for _ in range(args.repeats))
                cmd = ["inspect", str(path), "--all", "--format", "json", "--device", "cpu"]
                runs = []
                for _ in range(args.repeats):
                    if cold:
                        evict(path)
                    runs.append(run_measured(cmd))
                t_inspect = min(r[0] for r in runs)
                peak = max(r[1] for r in runs)
                n_tensors = json.loads(runs[0][2])["checkpoints"][0]["summary"]["tensors"]
                ratio = t_plain / t_inspect
                steady = t_plain / max(t_inspect - startup, 1e-9)  # the per-byte work, without process start-up
                mem_ratio = (peak - base_rss) / largest
                results.append({"size_gb": nbytes / 2**30, "cache": cache, "plain_s": t_plain, "inspect_s": t_inspect,
                                "throughput_ratio": ratio, "throughput_ratio_without_startup": steady, "peak_rss_mib": peak / 2**20, "extra_over_largest_tensor": mem_ratio})
                print(f"{nbytes / 2**30:7.2f}GB {cache:>5} {n_tensors:7d} {t_plain:9.2f} s {t_inspect:10.2f} s {ratio:10.2f}x "
                      f"{steady:11.2f}x {peak / 2**20:6.0f}MiB {mem_ratio:19.2f}x")
            path.unlink()
    finally:
        for p in workdir.glob("*"):
            p.unlink()
        workdir.rmdir()
    print("\nthroughput = plain read time / wsa inspect time (target >= 0.5x); 'w/o startup' subtracts the baseline "
          "process's time (python + torch import) from the inspect time")
    print("(peak-base)/largest = memory beyond the baseline process, in multiples of the largest tensor "
          "(target: the same at every model size)")
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
