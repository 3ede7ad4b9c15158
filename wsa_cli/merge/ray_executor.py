"""The parts of a merge as Ray tasks (``wsa merge RECIPE --executor ray``): one task per part, then assemble here.

Each task plans the recipe again on its worker (the same headers, the same plan), computes its
part with :func:`wsa_cli.merge.parts.run_part` into the parts folder next to the output, and
reports progress to a small actor the driver polls. A task asks Ray for ``memory=`` its part's
predicted peak (:func:`wsa_cli.merge.cost.stage_memory` over the part's keys), so Ray never packs
more parts onto a node than fit; ``max_retries`` re-runs a part whose worker died (its temporary
files carry the dead worker's pid and are removed by the retry, which writes the same bytes).

Before any task runs, one probe task per alive node checks that every input file is readable
there (same size as here) and that the output's folder exists or can be created: inputs must be
on a shared file system or at the same path on every node. The error names the node and the file.

Ray is an optional extra: without it ``--executor ray`` fails with one line naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import InputNotFoundError, InvalidValueError, OutputError
from wsa_cli.merge.cost import stage_memory
from wsa_cli.merge.parts import Part, check_splittable, run_part, split_parts
from wsa_cli.merge.plan import StagePlan, plan_recipe
from wsa_cli.progress import ProgressFn
from wsa_cli.recipe.schema import Recipe, load_recipe

#: how often a part is re-run after its worker died (Ray's ``max_retries``)
MAX_RETRIES = 3
#: seconds between the driver's progress polls
POLL_S = 0.1


def import_ray() -> Any:
    """Ray, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise InvalidValueError("needs Ray, which is not installed; install the extra: pip install 'wsa[ray]'", option="executor",
                                value="ray") from None  # fmt: skip
    return ray


def _check_node(paths: Sequence[tuple[str, int]], out_dir: str) -> list[str]:
    """On one node: the input files it cannot read (or sees with another size), and the output folder if it cannot write there."""
    bad = []
    for path, size in paths:
        try:
            st = os.stat(path)
            if not os.access(path, os.R_OK):
                bad.append(f"{path} (not readable)")
            elif size >= 0 and st.st_size != size:
                bad.append(f"{path} ({st.st_size} bytes there, {size} here)")
        except OSError as exc:
            bad.append(f"{path} ({exc.strerror or exc})")
    existing = next((p for p in [Path(out_dir), *Path(out_dir).parents] if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        bad.append(f"{out_dir} (output folder not writable)")
    return bad


def check_nodes(ray: Any, plan: StagePlan) -> None:
    """Every alive node must read every input (same size) and write the output's folder; else name node and file."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    files = []
    for p in plan.input_paths():
        for f in [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()):
            files.append((str(f.resolve()), f.stat().st_size))
    out_dir = str(plan.output.resolve().parent)
    probe = ray.remote(num_cpus=0)(_check_node)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [(n, probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(files, out_dir)) for n in nodes]
    for node, ref in refs:
        bad = ray.get(ref)
        if bad:
            name = f"{node.get('NodeManagerAddress', '?')} (node {node['NodeID'][:12]})"
            raise InputNotFoundError(f"Ray node {name} cannot see {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                                     + "; inputs must be on a shared file system or at the same path on every node", path=bad[0].split(" (")[0])  # fmt: skip


def _part_task(recipe_path: str, recipe_sha256: str, index: int, count: int, device: str, force: bool, overlap: bool, threads: int,
               reporter: Any) -> dict[str, Any]:  # fmt: skip
    """Ray task: plan the recipe on this worker and compute part ``index`` of ``count``; return where and whether skipped.

    ``threads``: the driver's compute threads. Float64 scope sums are split across threads, so
    the report's scopes (and, rarely, a rounding of the output) depend on the count: the same
    count as the driver keeps the bytes those of the single-process merge.
    """
    import ray

    from wsa_cli.device import resolve_device
    from wsa_cli.threads import choose_threads, compute_threads

    recipe = load_recipe(recipe_path)
    if recipe.sha256 != recipe_sha256:
        raise OutputError("the recipe changed since the merge started (its SHA-256 differs on this worker)", path=recipe_path)
    plan = check_splittable(plan_recipe(recipe, force=force))
    part = split_parts(plan, count)[0][index - 1]
    node, pid = ray.util.get_node_ip_address(), os.getpid()
    reporter.report.remote(index, pid, node, 0, "started")

    def progress(n: int, label: str = "") -> None:
        reporter.report.remote(index, pid, node, n, label)

    with compute_threads(choose_threads("merge", device=device, requested=threads)):
        doc = run_part(plan, recipe, part, device=resolve_device(device), progress=progress, overlap=overlap)
    return {"part": index, "node": node, "pid": pid, "skipped": doc["skipped"], "shards": [s["name"] for s in doc["shards"]],
            "peak_rss": _peak_rss()}  # fmt: skip


def _peak_rss() -> int:
    """This worker process's peak resident memory so far (bytes; 0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


class _Reporter:
    """The actor parts report progress to; the driver takes what arrived since its last poll."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, str, int, str]] = []

    def report(self, part: int, pid: int, node: str, n: int, label: str) -> None:
        self.events.append((part, pid, node, n, label))

    def take(self) -> list[tuple[int, int, str, int, str]]:
        events, self.events = self.events, []
        return events


def _result(ray: Any, ref: Any, index: int, count: int) -> dict[str, Any]:
    """A finished part's result; a wsa error raised in the task comes back as itself (its message, its exit code)."""
    from wsa_cli.errors import WsaError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, WsaError):
            raise cause from None
        raise
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
        raise OutputError(f"part {index}/{count} lost its worker {MAX_RETRIES + 1} times ({type(exc).__name__}); its finished shards "
                          "are kept: run the merge again to resume") from None  # fmt: skip


def part_memory(plan: StagePlan, part: Part, device: torch.device, overlap: bool) -> int:
    """The ``memory=`` a part's task asks Ray for: its predicted peak (at least 1 MiB)."""
    return max(1 << 20, stage_memory(plan, device, overlap=overlap, keys=part.keys).cpu_total)


def run_parts_on_ray(
    recipe: Recipe,
    plan: StagePlan,
    parts: Sequence[Part],
    *,
    device: torch.device,
    address: str | None = None,
    progress: ProgressFn | None = None,
    overlap: bool = True,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Run every part as a Ray task (connecting to ``address``, or the running/local cluster) and wait for all.

    Returns, per part, where it ran, whether it was skipped (already written and verified), how
    many times it started (a retry after a lost worker starts it again), the ``memory=`` it asked
    for and its worker's peak resident memory (a worker that ran several parts: the peak of all). The driver's ``progress``
    gets each part's keys as they are merged, labelled ``part I/N pid P on NODE: key``.
    """
    ray = import_ray()
    if not recipe.path.is_file():
        raise InvalidValueError("--executor ray needs a recipe file the workers can read", option="executor", value="ray")
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False) if address else ray.init(log_to_driver=False, include_dashboard=False)
        started_here = True
    try:
        check_nodes(ray, plan)
        reporter = ray.remote(num_cpus=0)(_Reporter).remote()
        threads = torch.get_num_threads()  # the merge's compute threads here (merge_recipe set them): the parts use the same
        task = ray.remote(_part_task)
        refs = {}
        asked: dict[int, int] = {}
        for p in parts:
            opts = {"memory": part_memory(plan, p, device, overlap), "max_retries": MAX_RETRIES, "num_cpus": 1}
            if device.type == "cuda":
                opts["num_gpus"] = 1
            asked[p.index] = opts["memory"]
            refs[task.options(**opts).remote(str(recipe.path.resolve()), recipe.sha256, p.index, p.count, str(device), force, overlap,
                                               threads, reporter)] = p.index  # fmt: skip
        starts: dict[int, int] = {}
        done: dict[int, dict[str, Any]] = {}
        pending = list(refs)

        def drain() -> None:
            for part, pid, node, n, label in ray.get(reporter.take.remote()):
                if label == "started":
                    starts[part] = starts.get(part, 0) + 1
                if progress is not None:
                    progress(n, f"part {part}/{len(parts)} pid {pid} on {node}: {label}")

        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            drain()
            for ref in ready:
                done[refs[ref]] = _result(ray, ref, refs[ref], len(parts))
        drain()
        return [{**done[p.index], "starts": starts.get(p.index, 0), "memory": asked[p.index]} for p in parts]
    finally:
        if started_here:
            ray.shutdown()


__all__ = ["MAX_RETRIES", "check_nodes", "import_ray", "part_memory", "run_parts_on_ray"]
