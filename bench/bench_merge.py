"""Benchmark ``wsa merge`` against plain safetensors I/O, side by side in one run.

Writes K synthetic checkpoints of about G GB each (bfloat16 by default, LLM-like: square weight
matrices, 1-D biases and norms, an integer buffer), then measures, each in a fresh subprocess:

(a) baseline: plain ``safetensors`` -- read every tensor of every input once (``safe_open``;
    since ``get_tensor`` only maps the file, each tensor's bytes are copied into one reused
    buffer, the cheapest real read) and write the output once (``safetensors.torch.save_file`` of
    one model's worth of tensors);
(a') the same plus an fsync of the output, since wsa's writer fsyncs before its atomic rename;
(b) ``wsa merge`` of the K inputs (in-process library call, ``merge_recipe``) with Weight Scope
    Alignment on (and ``--method``, default ``linear``).

Each run starts after ``os.sync()`` so that one run's dirty pages are not written back on the
next one's clock; (a) and (b) alternate ``--repeat`` times and the fastest of each is reported.

It prints the wall-time ratio (b)/(a) and the merge's peak memory: the subprocess's peak RSS
(``VmHWM``) minus its RSS right before the merge started (torch and wsa already imported),
as a ratio to the largest tensor of one input. Target: time within 2x of (a); peak memory a
small constant times the largest tensor, independent of model size.

Run it small to check it works (the machine may be shared)::

    .venv/bin/python bench/bench_merge.py --size-gb 0.05 --models 2
    .venv/bin/python bench/bench_merge.py --size-gb 1 --models 8     # the real measurement

Files go to ``bench/out/merge`` (ignored by git) and are removed afterwards unless ``--keep``.
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


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _layout(size_gb: float, itemsize: int) -> tuple[int, int]:
    """(hidden, n_blocks) so that n_blocks * hidden^2 * itemsize ~= size_gb, with >= 8 blocks."""
    target = size_gb * 1e9
    hidden = 4096
    while hidden > 256 and target / (hidden * hidden * itemsize) < 8:
        hidden //= 2
    blocks = max(1, round(target / (hidden * hidden * itemsize)))
    return hidden, blocks


def write_models(folder: Path, k: int, size_gb: float, dtype_name: str, with_base: bool) -> dict:
    import torch

    from wsa_cli.io import SafetensorsWriter, TensorInfo

    dtype = getattr(torch, dtype_name)
    hidden, blocks = _layout(size_gb, dtype.itemsize)
    infos = []
    for b in range(blocks):
        infos += [
            TensorInfo(f"layers.{b}.weight", (hidden, hidden), dtype),
            TensorInfo(f"layers.{b}.bias", (hidden,), dtype),
            TensorInfo(f"layers.{b}.norm.weight", (hidden,), dtype),
        ]
    infos.append(TensorInfo("step", (), torch.int64))
    names = [f"m{i}.safetensors" for i in range(k)] + (["base.safetensors"] if with_base else [])
    for i, name in enumerate(names):
        g = torch.Generator().manual_seed(1000 + i)
        with SafetensorsWriter(folder / name, infos, force=True) as w:
            for info in infos:
                if info.dtype == torch.int64:
                    t = torch.tensor(i, dtype=torch.int64)
                else:
                    t = (torch.randn(info.shape, generator=g) * (0.02 * (1 + 0.1 * i)) + 0.001 * i).to(dtype)
                w.write(info.key, t)
    largest = max(i.nbytes for i in infos)
    return {"hidden": hidden, "blocks": blocks, "tensors": len(infos), "largest_tensor_bytes": largest,
            "model_bytes": sum(i.nbytes for i in infos), "files": names}  # fmt: skip


def _input_files(folder: Path, k: int) -> list[Path]:
    """Every file the merge reads: the K models, and the base model when the method needs one."""
    base = folder / "base.safetensors"
    return [folder / f"m{i}.safetensors" for i in range(k)] + ([base] if base.exists() else [])


def child_baseline(folder: Path, k: int) -> dict:
    import torch  # imported before the clock, like the merge child
    from safetensors import safe_open
    from safetensors.torch import save_file

    paths = _input_files(folder, k)
    out = folder / "plain-out.safetensors"
    t0 = time.perf_counter()
    handles = [safe_open(str(p), framework="pt") for p in paths]
    scratch = torch.empty(0, dtype=torch.uint8)
    result = {}
    for key in handles[0].keys():  # noqa: SIM118 - a safe_open handle is not iterable
        for h in handles:
            # get_tensor maps the file and returns without touching the bytes: copy them into a
            # reused buffer so that every input is really read once, as a merge must
            raw = h.get_tensor(key).reshape(-1).view(torch.uint8)
            if scratch.numel() < raw.numel():
                scratch = torch.empty(raw.numel(), dtype=torch.uint8)
            scratch[: raw.numel()].copy_(raw)
        result[key] = handles[0].get_tensor(key)
    save_file(result, str(out))
    wall = time.perf_counter() - t0
    fd = os.open(out, os.O_RDONLY)  # wsa's writer fsyncs before its rename; time the same for plain
    os.fsync(fd)
    os.close(fd)
    wall_fsync = time.perf_counter() - t0
    out.unlink()
    return {"wall_s": wall, "wall_fsync_s": wall_fsync}


def child_floor(folder: Path, k: int) -> dict:
    """The I/O floor, no safetensors at all: read every input file into one reused buffer with
    ``readinto``, write one model's worth of bytes from a buffer, then fsync."""
    paths = _input_files(folder, k)
    out = folder / "floor-out.bin"
    buf = memoryview(bytearray(64 << 20))
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    size = paths[0].stat().st_size  # one model's worth of output
    with open(out, "wb", buffering=0) as fh:
        left = size
        while left:
            left -= fh.write(buf[: min(left, len(buf))])
        wall = time.perf_counter() - t0
        os.fsync(fh.fileno())
    wall_fsync = time.perf_counter() - t0
    out.unlink()
    return {"wall_s": wall, "wall_fsync_s": wall_fsync}


def child_merge(recipe: Path, device: str) -> dict:
    from wsa_cli.merge.executor import merge_recipe

    for old in recipe.parent.glob("merged*"):  # the baseline writes a fresh file; so does the merge
        old.unlink()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    res = merge_recipe(recipe, device=device, force=True)
    wall = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return {"wall_s": wall, "rss_before_kib": rss0, "peak_kib": peak, "tensors": res.final["tensors"]}


def _run_child(args: list[str]) -> dict:
    os.sync()  # each run starts with no dirty pages left by the previous one (writeback is shared)
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.05, help="size of each input checkpoint in GB (default 0.05)")
    parser.add_argument("--models", type=int, default=2, help="number of input checkpoints K (default 2)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--method", default="linear", help="merge method (default linear; ties/dare_* add a base model)")
    parser.add_argument("--device", default="cpu", help="--device of the merge (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in both children (default: torch's default)")
    parser.add_argument("--repeat", type=int, default=2, help="repeat both measurements, alternating; report the fastest")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "merge")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        kind, arg = args.child
        if kind == "merge":
            out = child_merge(Path(arg), args.device)
        else:
            out = (child_baseline if kind == "baseline" else child_floor)(Path(arg), args.models)
        print(json.dumps(out))
        return

    sys.path.insert(0, str(ROOT))
    from wsa_cli.merge import get_method

    needs_base = get_method(args.method).needs_base
    folder = args.workdir
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        layout = write_models(folder, args.models, args.size_gb, args.dtype, needs_base)
        write_s = time.perf_counter() - t0
        recipe = folder / "recipe.yaml"
        models = "\n".join(f"  - m{i}.safetensors" for i in range(args.models))
        base = "base: base.safetensors\n" if needs_base else ""
        recipe.write_text(f"models:\n{models}\n{base}method: {args.method}\nscope: {{align: true}}\noutput: merged.safetensors\n")
        plain, floor, merged = [], [], []
        for _ in range(args.repeat):
            common = ["--models", str(args.models), "--threads", str(args.threads)]
            plain.append(_run_child(["--child", "baseline", str(folder), *common]))
            floor.append(_run_child(["--child", "floor", str(folder), *common]))
            merged.append(_run_child(["--child", "merge", str(recipe), *common, "--device", args.device]))
        a = min(plain, key=lambda r: r["wall_s"])
        f = min(floor, key=lambda r: r["wall_s"])
        f_sync = min(r["wall_fsync_s"] for r in floor)
        b = min(merged, key=lambda r: r["wall_s"])
        peak_net = max(r["peak_kib"] - r["rss_before_kib"] for r in merged) * 1024
        largest = layout["largest_tensor_bytes"]
        result = {
            "models": args.models, "size_gb_each": round(layout["model_bytes"] / 1e9, 4), "dtype": args.dtype,
            "method": args.method, "device": args.device, "threads": args.threads or "default", "layout": {k: layout[k] for k in ("hidden", "blocks", "tensors")},
            "write_inputs_s": round(write_s, 3),
            "plain_read_write_s": round(a["wall_s"], 3), "wsa_merge_s": round(b["wall_s"], 3),
            "spread_s": {name: [round(min(r["wall_s"] for r in runs), 3), round(max(r["wall_s"] for r in runs), 3)]
                         for name, runs in (("plain", plain), ("floor", floor), ("merge", merged))},
            "time_ratio": round(b["wall_s"] / a["wall_s"], 3),
            "plain_read_write_fsync_s": round(min(r["wall_fsync_s"] for r in plain), 3),
            "time_ratio_vs_fsynced_plain": round(b["wall_s"] / min(r["wall_fsync_s"] for r in plain), 3),
            "io_floor_s": round(f["wall_s"], 3), "io_floor_fsync_s": round(f_sync, 3),
            "time_ratio_vs_io_floor": round(b["wall_s"] / f["wall_s"], 3),
            "time_ratio_vs_fsynced_io_floor": round(b["wall_s"] / f_sync, 3),
            "largest_tensor_mb": round(largest / 1e6, 2), "merge_peak_rss_net_mb": round(peak_net / 1e6, 2),
            "peak_over_largest_tensor": round(peak_net / largest, 2),
            "peak_over_model_size": round(peak_net / layout["model_bytes"], 3),
        }  # fmt: skip
        if args.json:
            print(json.dumps(result))
        else:
            print(f"inputs: {args.models} x {result['size_gb_each']} GB {args.dtype} "
                  f"({layout['blocks']} blocks of {layout['hidden']}x{layout['hidden']}; largest tensor {result['largest_tensor_mb']} MB)")
            print(f"(a) plain safetensors read all + write once: {result['plain_read_write_s']:.3f} s")
            print(f"(b) wsa merge ({args.method}, WSA alignment on, {args.device}): {result['wsa_merge_s']:.3f} s")
            print(f"(a') the same plus fsync of the output (wsa's writer fsyncs before its atomic rename): "
                  f"{result['plain_read_write_fsync_s']:.3f} s")
            print(f"(c) I/O floor, readinto + write of the same bytes, no safetensors: {result['io_floor_s']:.3f} s; "
                  f"with fsync (c'): {result['io_floor_fsync_s']:.3f} s")
            print(f"time ratio (b)/(a): {result['time_ratio']:.2f}x   (target <= 2x);  (b)/(a'): "
                  f"{result['time_ratio_vs_fsynced_plain']:.2f}x;  (b)/(c): {result['time_ratio_vs_io_floor']:.2f}x;  "
                  f"(b)/(c'): {result['time_ratio_vs_fsynced_io_floor']:.2f}x")
            spread = "; ".join(f"{k} {lo:.3f}-{hi:.3f} s" for k, (lo, hi) in result["spread_s"].items())
            print(f"spread over {args.repeat} runs (fastest is reported above): {spread}")
            print(f"merge peak RSS above its start: {result['merge_peak_rss_net_mb']} MB = "
                  f"{result['peak_over_largest_tensor']}x the largest tensor = {result['peak_over_model_size']}x one model")  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
