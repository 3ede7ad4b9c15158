"""The one place that decides how many CPU threads a run computes with, and how idle ones wait.

A merge streams tensors: one read-ahead thread maps the next keys, one write-behind thread and
one flush thread write the output, and the arithmetic runs on torch's intra-op thread pool (one
thread per core by default). Measured on a 2-core machine (``bench/bench_threads.py``; the tables
are in docs/merge.md), two things matter:

* how idle OpenMP threads wait. Spinning threads fight the I/O threads and anything else the
  machine runs: with two other CPU-bound processes, one TIES merge of 2 x 0.5 GB took 49 s
  instead of 6 s in one run of five. With ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep) the
  slowest of five runs was 6.9 s. The command line sets it before torch is imported unless the
  user set a policy (:func:`prefer_passive_waiting`); library users keep their process's setting.
* how many compute threads. Methods that are a weighted sum (those with a closed linear form:
  linear, task arithmetic, copy) are bound by memory, not arithmetic: one compute thread was as
  fast or faster (0.85 s vs 1.69 s median under load, 0.74 s vs 0.92 s on a lightly loaded
  machine). Methods that select, sort or draw masks per tensor (TIES, DARE, DELLA, SLERP, ...)
  gained from both cores (4.25 s vs 5.47 s lightly loaded), so they keep torch's count.

So the policy, in order:

* ``--threads N`` (the library's ``threads=N``) wins; then ``OMP_NUM_THREADS`` if the user set it;
* memory-bound streaming work (a merge whose every method has a linear form; ``inspect``): one
  compute thread on machines with up to 4 usable cores, else half the cores, at most 4 (the
  larger counts are a reasoned default: only 2-core machines have measured it);
* training and evaluating a small model (``train``, at most :data:`SMALL_MODEL_PARAMS`
  parameters, on the CPU): one thread. A matrix multiply of the built-in models' size takes
  microseconds, so the thread pool costs more in hand-offs than it saves, and on a busy machine
  the threads wait on each other: a 4-epoch digits-mlp training took 0.1 s on one thread and
  1.2 s on two with the machine loaded (:func:`small_model_threads`);
* everything else keeps torch's setting.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from wsa_cli.errors import InvalidValueError

#: work that streams tensors through a few elementwise kernels (memory-bound)
STREAMING_WORK = ("merge", "inspect")
#: the merge's I/O threads: read-ahead, write-behind, flush
MERGE_IO_THREADS = 3
#: at most this many compute threads for streaming work, whatever the core count
MAX_STREAMING_THREADS = 4
#: models with at most this many parameters train and evaluate on one CPU thread
SMALL_MODEL_PARAMS = 5_000_000


@dataclass(frozen=True)
class ThreadPlan:
    """How a run uses the CPU: ``compute`` intra-op threads, ``io`` I/O threads, and why."""

    work: str
    compute: int
    io: int
    cores: int
    source: str  # "--threads", "OMP_NUM_THREADS", "policy" or "torch default"
    wait_policy: str  # OMP_WAIT_POLICY as the process sees it ("default" when unset)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (reports, ``--dry-run`` JSON)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for people, e.g. ``1 compute + 3 I/O threads on 2 cores (policy; OpenMP waits: PASSIVE)``."""
        io = f" + {self.io} I/O" if self.io else ""
        return f"{self.compute} compute{io} threads on {self.cores} cores ({self.source}; OpenMP waits: {self.wait_policy})"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, else the core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(value: int | None) -> int | None:
    """Validate a requested thread count (``None`` = let the policy decide)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidValueError("expected a whole number of threads >= 1", option="threads", value=str(value))
    return value


def choose_threads(
    work: str, *, device: str = "cpu", requested: int | None = None, cores: int | None = None, memory_bound: bool = True,
    params: int | None = None,
) -> ThreadPlan:
    """The thread plan for ``work`` (``merge``, ``inspect``, ``train``, ...) on ``device`` (see the module doc).

    ``memory_bound``: the work is a few elementwise kernels per value (a merge whose methods all
    have a linear form); ``False`` for methods that select, sort or draw per tensor. ``params``:
    the size of the model that ``train`` work trains or evaluates.

    Example:
        >>> choose_threads("merge", cores=2, requested=None).compute
        1
        >>> choose_threads("merge", cores=2, requested=2).source
        '--threads'
    """
    n = cores or usable_cores()
    io = MERGE_IO_THREADS if work == "merge" else 0
    wait = os.environ.get("OMP_WAIT_POLICY", "default")
    if check_threads(requested) is not None:
        return ThreadPlan(work, requested, io, n, "--threads", wait)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return ThreadPlan(work, int(env), io, n, "OMP_NUM_THREADS", wait)
    if work in STREAMING_WORK and memory_bound and str(device).startswith("cpu"):
        compute = 1 if n <= 4 else min(MAX_STREAMING_THREADS, n // 2)
        return ThreadPlan(work, compute, io, n, "policy", wait)
    if work == "train" and params is not None and params <= SMALL_MODEL_PARAMS and str(device).startswith("cpu"):
        return ThreadPlan(work, 1, io, n, "policy", wait)
    import torch

    return ThreadPlan(work, torch.get_num_threads(), io, n, "torch default", wait)


@contextmanager
def compute_threads(plan: ThreadPlan) -> Iterator[None]:
    """Within the block, torch computes on ``plan.compute`` intra-op threads; the previous count is restored after."""
    import torch

    prev = torch.get_num_threads()
    if prev != plan.compute:
        torch.set_num_threads(plan.compute)
    try:
        yield
    finally:
        if torch.get_num_threads() != prev:
            torch.set_num_threads(prev)


def small_model_threads(device: Any, n_params: int) -> Any:
    """A block that trains or evaluates a model of ``n_params`` parameters on ``device`` with the ``train`` thread plan.

    Example:
        >>> with small_model_threads("cpu", 10_000):
        ...     import torch; torch.get_num_threads()
        1
    """
    return compute_threads(choose_threads("train", device=str(device), params=n_params))


def prefer_passive_waiting() -> None:
    """Let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy.

    Only effective before torch (and its OpenMP runtime) is loaded, so the command line calls it
    first thing; it does nothing once torch is imported.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


__all__ = [
    "SMALL_MODEL_PARAMS", "ThreadPlan", "check_threads", "choose_threads", "compute_threads", "prefer_passive_waiting",
    "small_model_threads", "usable_cores",
]  # fmt: skip
