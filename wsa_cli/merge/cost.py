"""What a merge will cost, predicted from its plan before a tensor is read.

Peak memory follows how :func:`wsa_cli.merge.executor.stream_tensors` allocates, term by term:

* **mapped inputs** (CPU runs): each input tensor is a view into its file's memory map; its pages
  count in the process's RSS once the merge touches them and leave when the key is released: right
  after it is merged, or for a copied key (whose output may be those very pages) after its write.
  So one key's inputs (K models plus the base) are mapped at once, plus the previous key's when
  that was a copy written while this one merges (``overlap``, the default).
* **output buffers**: two :class:`~wsa_cli.buffers.Scratch` pools (one written while the other is
  filled), each grown to the largest output tensor; one without ``overlap``. A copied tensor whose
  dtype changes, and a ``rows:`` split, allocate a fresh output instead.
* **working buffers** (one pool, grown to the largest need of any key): the cache-sized blocks of
  the linear kernel and the scope measurement; for block-form methods the wide result when the
  output dtype is narrower; TIES/Breadcrumbs/DELLA one full-size magnitude buffer; the block
  buffers of the task-vector loop (sign election, disjoint mean, DARE's and DELLA's draws);
  DELLA's per-model keep probabilities; methods
  without a block form (nuslerp) K aligned wide copies, the base and the result.
* **CUDA runs**: the pinned read ring (``prefetch + 2`` sets of K+base buffers of the largest
  tensor) and the CPU copies of two results on the host; the K inputs, the output pools and the
  working pool on the device.
* a **permutation** stage holds every model in memory (and its permuted copy) before streaming.

Everything is added to the process's resident memory when the prediction is made (Python, torch).
Disk is the output (headers included) plus what lives beside it during the run: intermediate
stages, and an existing output that ``force`` replaces only after the new one is in place.
Time is ``read / read speed + compute + write / write speed``: the speeds come from a short probe
of the inputs' and the output's file systems (the read probe sees the page cache when the input
is cached), the compute rate from merging a 1M-value synthetic tensor with each (method, K) of
the plan on the device (merges of fewer than 4M values are not calibrated: their arithmetic is
counted as nothing).

Example:
    >>> parse_size("8GB"), parse_size("1.5GiB"), parse_size("512")
    (8000000000, 1610612736, 512)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import InvalidValueError, WsaError
from wsa_cli.io.base import numel
from wsa_cli.io.writer import plan_shards, temp_tag
from wsa_cli.merge.plan import StagePlan, TensorPlan
from wsa_cli.merge.draws import draw_slots
from wsa_cli.merge.registry import get_method
from wsa_cli.merge.task_vectors import RADIX_MIN
from wsa_cli.scope.stats import SCOPE_CHUNK, SCOPE_CHUNK_CUDA

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9, "T": 10**12, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}  # fmt: skip
#: bytes the read probe reads (at most), and the write probe writes and fsyncs
PROBE_READ_BYTES = 64 << 20
PROBE_WRITE_BYTES = 4 << 20
#: merges reading less are not probed (no speeds, no I/O time: they take milliseconds)
PROBE_MIN_BYTES = 16 << 20
#: values of the synthetic tensor the compute rate is measured on
CALIBRATION_NUMEL = 1 << 20
#: merges with fewer values are not calibrated (their arithmetic takes milliseconds)
CALIBRATION_MIN_NUMEL = 4 << 20
#: safetensors header bytes per tensor (JSON entry) and per shard (metadata), an upper estimate
HEADER_PER_TENSOR, HEADER_PER_SHARD = 160, 4096


def parse_size(text: str | int) -> int:
    """Bytes from ``8GB`` (decimal units), ``1.5GiB`` (binary units) or a plain number of bytes.

    Example:
        >>> parse_size("2 MiB")
        2097152
    """
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS:
        raise InvalidValueError("expected a size such as 8GB, 512MiB or a number of bytes", option="max_memory", value=str(text))
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    """``1.23 GB`` (decimal units, as disks and ``--max-memory`` count).

    Example:
        >>> format_size(1_234_000_000)
        '1.23 GB'
    """
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def current_rss() -> int:
    """This process's resident memory now (bytes; 0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclasses.dataclass(frozen=True)
class StageMemory:
    """Predicted peak of one stage (bytes): the CPU terms, the device terms (CUDA only)."""

    cpu: dict[str, int]
    gpu: dict[str, int] | None

    @property
    def cpu_total(self) -> int:
        return sum(self.cpu.values())

    @property
    def gpu_total(self) -> int | None:
        return None if self.gpu is None else sum(self.gpu.values())


def _wide(entry: TensorPlan) -> int:
    return 8 if entry.dtype == torch.float64 else 4


def _inputs_read(plan: StagePlan, entry: TensorPlan) -> int:
    """How many tensors the executor reads for ``entry`` (copy: one; merge: its models and the base)."""
    if entry.action == "copy":
        return 1
    k = len(entry.models) if entry.models is not None else len(plan.models)
    return k + (1 if plan.base is not None else 0)


def _work_bytes(plan: StagePlan, entry: TensorPlan, block: int, dev_cpu: bool = True) -> tuple[int, int]:
    """(persistent, transient) working bytes of one merged key: the pool grows to the first, the second is freed after it."""
    if entry.action != "merge":
        return 0, 0
    n, wide = numel(entry.shape), _wide(entry)
    k = len(entry.models) if entry.models is not None else len(plan.models)
    blk = min(block, n)
    persistent = block * 8 + 2 * blk * wide  # the f64 measurement block, the kernel's acc/tmp blocks
    method = get_method(entry.method or "linear")
    if method.linear_form is not None:
        return persistent, 0
    if method.into is None:  # nuslerp: K aligned copies, the base, the result (all wide)
        return persistent, (k + 2) * n * wide
    if entry.out_dtype.itemsize != wide:
        persistent += n * wide  # the wide result, cast into the output buffer
    persistent += (k + 1) * blk * wide  # per-model task-vector / sphere blocks and the base block
    name = method.name
    if name.startswith(("ties", "dare", "breadcrumbs", "della")):  # the task-vector block loop's buffers
        consensus = name in ("ties", "dare_ties", "breadcrumbs_ties", "della")
        persistent += (4 if consensus else 2) * blk * wide  # sign election and disjoint mean (or the sum)
    if name.startswith(("ties", "breadcrumbs", "della")):
        persistent += n * wide  # |tau_i|, one model at a time
    if name.startswith(("ties", "breadcrumbs")):
        persistent += blk * (wide + 1)  # a block's |tau_i| and the entries it zeroes
        if n >= RADIX_MIN and dev_cpu:
            persistent += n * wide  # the selection's histogram keys (top bits of every |tau_i|)
    slots = draw_slots(-(-n // blk) if n else 0)  # blocks of draws kept per model (DARE, DELLA)
    if name.startswith("dare"):  # per model and slot the entries a block keeps (a copy on the device when not the CPU)
        persistent += slots * k * blk + (0 if dev_cpu else blk)
    if name.startswith("della"):  # per model and slot a float64 block of uniforms; the entries a block keeps
        persistent += slots * k * blk * 8 + blk
    if name == "model_stock":
        persistent += k * blk * 8  # the task vectors' float64 blocks for their Gram matrix
    # DARE and DELLA: a block of 32-bit draws, fresh from the generator; DELLA: the keep probabilities
    # of every model, and one model's int64 rank keys while it is ranked
    transient = 4 * blk if name.startswith(("dare", "della")) else 0
    if name.startswith("della"):
        transient += k * n * wide + 8 * n
    return persistent, transient


def _out_bytes(entry: TensorPlan) -> tuple[int, int]:
    """(pooled, fresh) output bytes of one key: a merged result lives in a pool, a cast copy or a rows split is fresh."""
    nbytes = numel(entry.shape) * entry.out_dtype.itemsize
    if entry.action == "copy":
        return 0, (nbytes if entry.out_dtype != entry.dtype else 0)
    return nbytes, (nbytes if entry.rows is not None else 0)


def stage_memory(plan: StagePlan, device: torch.device | str = "cpu", *, overlap: bool = True, prefetch: int = 1,
                 keys: Iterable[str] | None = None, baseline: int | None = None) -> StageMemory:  # fmt: skip
    """Predicted peak memory of one stage (or of the ``keys`` of one part of it), term by term.

    Example:
        >>> stage_memory(plan).cpu_total  # doctest: +SKIP
        812345678
    """
    dev = torch.device(device)
    wanted = None if keys is None else set(keys)
    entries = [t for t in plan.tensors if wanted is None or t.key in wanted]
    block = SCOPE_CHUNK_CUDA if dev.type == "cuda" else SCOPE_CHUNK
    reads = [_inputs_read(plan, t) * t.numel_bytes for t in entries]
    # a merged key's inputs are released once it is merged; a copied key's only after its write (the output may be its pages)
    held = [r if t.action == "copy" else 0 for r, t in zip(reads, entries, strict=True)]
    pairs = [a + b for a, b in zip(reads, [0, *held[:-1]], strict=True)] if overlap else reads
    outs = [_out_bytes(t) for t in entries]
    fresh = [f for _, f in outs]
    fresh_pairs = [a + b for a, b in zip(fresh, [0, *fresh[:-1]], strict=True)] if overlap else fresh
    pools = 2 if overlap else 1
    pooled = pools * max((p for p, _ in outs), default=0)
    works = [_work_bytes(plan, t, block, dev.type == "cpu") for t in entries]
    work = max((p for p, _ in works), default=0) + max((t for _, t in works), default=0)
    cpu = {"baseline": current_rss() if baseline is None else baseline}
    if plan.spec.permutation is not None:
        model = sum(t.numel_bytes for t in plan.tensors)
        cpu["whole_models"] = 2 * len(plan.models) * model  # the models and their permuted copies
    if dev.type == "cuda":
        largest = max((t.numel_bytes for t in plan.tensors), default=0)  # the ring is sized by the stage's largest
        members = len(plan.models) + (1 if plan.base is not None else 0)
        cpu["pinned_read_ring"] = (prefetch + 2) * members * largest
        cpu["host_results"] = pools * max((p + f for p, f in outs), default=0)
        gpu = {"inputs": max(reads, default=0), "output_buffers": pooled + max(fresh, default=0), "working": work}
        return StageMemory(cpu, gpu)
    cpu.update({"mapped_inputs": max(pairs, default=0), "output_buffers": pooled + max(fresh_pairs, default=0), "working": work})
    return StageMemory(cpu, None)


def output_bytes(plan: StagePlan) -> int:
    """Bytes a stage writes: tensor data, headers, and the files copied beside the model."""
    infos = plan.out_infos
    shards = plan_shards(infos, plan.max_shard_bytes)
    data = sum(i.nbytes for i in infos) + HEADER_PER_TENSOR * len(infos) + HEADER_PER_SHARD * len(shards)
    side = 0
    for _, src in plan.copy_files:
        with contextlib.suppress(OSError):
            side += src.stat().st_size if src.is_file() else 0
    return data + side


def read_bytes(plan: StagePlan) -> int:
    """Bytes a stage reads from its inputs (every tensor of every model it merges, the base, copied tensors once)."""
    if plan.spec.permutation is not None:
        return len(plan.models) * sum(t.numel_bytes for t in plan.tensors) + (0 if plan.base is None else sum(t.numel_bytes for t in plan.tensors))
    return sum(_inputs_read(plan, t) * t.numel_bytes for t in plan.tensors)


def _existing_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


def probe_read_speed(paths: Sequence[Path], nbytes: int = PROBE_READ_BYTES) -> float | None:
    """Bytes per second read from the middle of the largest input file (None: nothing to read).

    A file already in the page cache reads at memory speed: the probe then predicts a cached run.
    """
    files = [p for p in paths if p.is_file()]
    if not files:
        return None
    path = max(files, key=lambda p: p.stat().st_size)
    size = path.stat().st_size
    want = min(nbytes, size)
    if want < 1 << 16:
        return None
    start = max(0, (size - want) // 2)
    buf = bytearray(min(want, 8 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        t0, done = time.perf_counter(), 0
        while done < want:
            got = os.preadv(fd, [memoryview(buf)[: min(len(buf), want - done)]], start + done)
            if got <= 0:
                break
            done += got
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    return done / dt if dt > 0 and done else None


def probe_write_speed(output: Path, nbytes: int = PROBE_WRITE_BYTES) -> float | None:
    """Bytes per second written and fsynced next to ``output`` (a temporary named like the writer's, removed)."""
    folder = next((p for p in [output.parent, *output.parent.parents] if p.is_dir()), None)
    if folder is None:
        return None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{output.name}.{temp_tag()}.probe.", suffix=".wsa-tmp", dir=folder)
    except OSError:
        return None
    try:
        chunk = os.urandom(1 << 20) * (min(nbytes, 8 << 20) >> 20)
        t0, done = time.perf_counter(), 0
        while done < nbytes:
            done += os.write(fd, chunk[: nbytes - done])
        os.fsync(fd)
        dt = time.perf_counter() - t0
    except OSError:
        return None
    finally:
        os.close(fd)
        Path(name).unlink(missing_ok=True)
    return done / dt if dt > 0 else None


def _calibrate(plan: StagePlan, entry: TensorPlan, device: torch.device) -> float:
    """Seconds per value of merging ``entry``'s kind of key (method, K, base, dtypes) on ``device``."""
    from wsa_cli.buffers import Scratch
    from wsa_cli.merge.executor import merge_tensor, subset_options

    n = max(1, min(CALIBRATION_NUMEL, numel(entry.shape)))
    k = len(entry.models) if entry.models is not None else len(plan.models)
    opts, weights = subset_options(entry, plan.scope, plan.weights)  # as the executor merges a key of a subset of the models
    probe = dataclasses.replace(entry, shape=(n,), models=None, rows=None, row_source=None)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, generator=gen).to(entry.dtype) for _ in range(k)]
    base = torch.randn(n, generator=gen).to(entry.dtype) if plan.base is not None else None
    scratch, work = Scratch(), Scratch()
    best = float("inf")
    for _ in range(2):  # the first run grows the buffers, as the first key of a merge does
        t0 = time.perf_counter()
        merge_tensor(probe, xs, base, scope=opts, weights=weights, seed=plan.spec.seed, device=device, scratch=scratch, work=work,
                     align_base=plan.spec.scope.align_base)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best / n


def compute_seconds(plan: StagePlan, device: torch.device | str = "cpu") -> tuple[float, list[str]]:
    """Predicted merge arithmetic of a stage: each key's values times its (method, K)'s measured rate; and notes.

    A kind of key whose synthetic merge fails (a plug-in method that wants real weights) is left
    out of the estimate, with a note; the merge itself is not affected.
    """
    dev = torch.device(device)
    rates: dict[tuple[Any, ...], float | None] = {}
    total, notes = 0.0, []
    if sum(numel(t.shape) for t in plan.tensors if t.action == "merge") < CALIBRATION_MIN_NUMEL:
        return 0.0, []  # calibrating would cost about as much as the merge: its arithmetic is taken as nothing
    for t in plan.tensors:
        if t.action != "merge":
            continue
        kind = (t.method, None if t.models is None else len(t.models), t.dtype, t.out_dtype, t.align, t.layer, t.rescale)
        if kind not in rates:
            try:
                rates[kind] = _calibrate(plan, t, dev)
            except (RuntimeError, ValueError, TypeError, WsaError) as exc:
                rates[kind] = None
                notes.append(f"no compute estimate for method {t.method!r} (e.g. {t.key!r}): its synthetic merge failed ({exc})")
        rate = rates[kind]
        total += 0.0 if rate is None else rate * numel(t.shape)
    return total, notes


@dataclasses.dataclass(frozen=True)
class MergeCost:
    """The predicted cost of a whole merge (every stage): what ``--dry-run`` prints and JSON carries."""

    device: str
    peak_cpu_bytes: int
    peak_gpu_bytes: int | None
    terms: dict[str, int]  # the CPU (and ``gpu.*``) terms of the stage with the highest peak
    disk_bytes: int
    output_bytes: int
    temp_bytes: int
    read_bytes: int
    write_bytes: int
    read_bytes_per_s: float | None
    write_bytes_per_s: float | None
    compute_seconds: float
    seconds: float
    overlap: bool
    max_memory: int | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        d["seconds"] = round(self.seconds, 3)
        d["compute_seconds"] = round(self.compute_seconds, 3)
        for k in ("read_bytes_per_s", "write_bytes_per_s"):
            d[k] = None if d[k] is None else round(d[k])
        return d

    def line(self) -> str:
        """One line for people (stderr at the start of a merge, the dry run's caption)."""
        return cost_line(self.to_dict())


def cost_line(cost: dict[str, Any]) -> str:
    """The one-line summary of a cost dict (:meth:`MergeCost.to_dict`).

    Example:
        >>> cost_line({"peak_cpu_bytes": 2e9, "peak_gpu_bytes": None, "max_memory": None, "overlap": True, "disk_bytes": 1e9,
        ...            "output_bytes": 1e9, "temp_bytes": 0, "read_bytes": 2e9, "write_bytes": 1e9, "seconds": 3.0,
        ...            "read_bytes_per_s": 1e9})
        'predicted: peak memory 2.00 GB (CPU); disk 1.00 GB (output 1.00 GB + temporary 0 B); read 2.00 GB, write 1.00 GB; about 3.0 s (read probe 1.00 GB/s)'
    """
    gpu = f", GPU {format_size(cost['peak_gpu_bytes'])}" if cost.get("peak_gpu_bytes") is not None else ""
    speed = f"read probe {format_size(cost['read_bytes_per_s'])}/s" if cost.get("read_bytes_per_s") else "no read probe"
    ceiling = ""
    if cost.get("max_memory"):
        ceiling = f" (--max-memory {format_size(cost['max_memory'])}" + (", writes not overlapped)" if not cost["overlap"] else ")")
    return (f"predicted: peak memory {format_size(cost['peak_cpu_bytes'])} (CPU{gpu}){ceiling}; disk {format_size(cost['disk_bytes'])} "
            f"(output {format_size(cost['output_bytes'])} + temporary {format_size(cost['temp_bytes'])}); read {format_size(cost['read_bytes'])}, "
            f"write {format_size(cost['write_bytes'])}; about {cost['seconds']:.1f} s ({speed})")  # fmt: skip


def _peak(plans: Sequence[StagePlan], device: torch.device, overlap: bool, baseline: int) -> tuple[int, int | None, dict[str, int]]:
    best: tuple[int, int | None, dict[str, int]] = (0, None, {})
    for p in plans:
        mem = stage_memory(p, device, overlap=overlap, prefetch=1 if overlap else 0, baseline=baseline)
        if mem.cpu_total >= best[0]:
            terms = dict(mem.cpu) | ({f"gpu.{k}": v for k, v in mem.gpu.items()} if mem.gpu else {})
            best = (mem.cpu_total, mem.gpu_total, terms)
    return best


def predict_merge(plans: Sequence[StagePlan], device: torch.device | str = "cpu", *, max_memory: int | None = None,
                  force: bool = False, probe: bool = True) -> MergeCost:  # fmt: skip
    """Predict a planned merge's peak memory, disk, I/O and time; fit it under ``max_memory`` or refuse.

    Over the ceiling with write-behind overlap, the plan drops it (one output buffer, one key's
    inputs mapped: ``overlap=False``); still over, it raises :class:`InvalidValueError` naming
    the figure the merge needs (``--max-memory``: exit 2). ``probe``: measure read/write speed
    and compute rate (off: no time estimate).

    Example:
        >>> predict_merge(plan_recipe(load_recipe("recipes/average.yaml"))).peak_cpu_bytes  # doctest: +SKIP
        402653184
    """
    dev = torch.device(device)
    baseline = current_rss()
    overlap = True
    cpu, gpu, terms = _peak(plans, dev, True, baseline)
    notes: list[str] = []
    if max_memory is not None and max(cpu, gpu or 0) > max_memory:
        low_cpu, low_gpu, low_terms = _peak(plans, dev, False, baseline)
        if max(low_cpu, low_gpu or 0) > max_memory:
            what = "GPU" if (low_gpu or 0) > low_cpu else "CPU"
            need = max(low_cpu, low_gpu or 0)
            raise InvalidValueError(f"the merge needs at least {format_size(need)} of {what} memory ({format_size(max(cpu, gpu or 0))} "
                                    "with reads and writes overlapped), more than the ceiling; the largest tensors and the K "
                                    "inputs set that floor", option="max_memory", value=format_size(max_memory))  # fmt: skip
        overlap, cpu, gpu, terms = False, low_cpu, low_gpu, low_terms
        notes.append("writes are not overlapped with merging, to stay under --max-memory")
    outputs = [output_bytes(p) for p in plans]
    final_out = outputs[-1]
    temp = sum(outputs[:-1])  # intermediate stages live until the end of the run
    final = plans[-1].output
    if force and final.exists():
        temp += _existing_bytes(final)  # the old output is removed only after the new one is in place
    reads = sum(read_bytes(p) for p in plans)
    writes = sum(outputs)
    rbps = wbps = None
    compute = seconds = 0.0
    if probe and reads >= PROBE_MIN_BYTES:  # a smaller merge takes milliseconds: not worth a probe
        rbps = probe_read_speed([f for p in plans for f in p.input_paths()])
        wbps = probe_write_speed(final)
        for p in plans:
            c, more = compute_seconds(p, dev)
            compute += c
            notes += more
    if probe:
        seconds = compute + (reads / rbps if rbps else 0.0) + (writes / wbps if wbps else 0.0)
    return MergeCost(str(dev), cpu, gpu, terms, final_out + temp, final_out, temp, reads, writes, rbps, wbps, compute, seconds,
                     overlap, max_memory, tuple(notes))  # fmt: skip


__all__ = ["MergeCost", "StageMemory", "compute_seconds", "cost_line", "format_size", "output_bytes", "parse_size", "predict_merge",
           "probe_read_speed", "probe_write_speed", "read_bytes", "stage_memory"]  # fmt: skip
