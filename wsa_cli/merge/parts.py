"""One merge split into parts: each part writes whole output shards and a manifest; assembling checks them all.

A merge is elementwise per tensor, deterministic and writes its output shard by shard, so the
shards can be computed by different processes or machines (``wsa merge RECIPE --part i/N``), in
any order, and put together afterwards (``--assemble``). Parts are contiguous runs of output
shards balanced by bytes (:func:`split_parts`). A stage with a ``permutation:`` block needs every
model in memory before merging: it is never split (part 1 holds all shards, the others are empty,
and the plan says so). Only the final stage of a one-stage recipe is split.

Each part writes into ``OUTPUT.wsa-parts/`` next to the output: every shard complete and fsynced
under a temporary name, then renamed; last the manifest ``part-0000i-of-0000N.json`` (fsynced)
with the merge id, each shard's name, size, SHA-256 and keys, and the report records of its
tensors (scopes before and after, what was copied and why). A part whose manifest and shard
hashes verify is skipped when run again, so a crash costs one part. ``--assemble`` verifies every
manifest against the plan and the files, links the shards into the output (the same
:class:`~wsa_cli.io.SafetensorsWriter` commit as a single-process merge) and writes the index,
report and model card from the records: the result is byte-identical to ``wsa merge RECIPE``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from wsa_cli.errors import InvalidValueError, OutputError
from wsa_cli.io.base import TensorInfo
from wsa_cli.io.writer import SafetensorsWriter, ShardFile, plan_shards, remove_orphans, shard_names, temp_tag, writing
from wsa_cli.merge.executor import StageInputs, _summary, finish_stage, open_stage, stage_fingerprints, stage_identity, stream_tensors
from wsa_cli.merge.provenance import sha256_file
from wsa_cli.merge.plan import StagePlan
from wsa_cli.progress import ProgressFn
from wsa_cli.recipe.schema import Recipe

PART_FORMAT = "wsa-merge-part"
_MANIFEST = re.compile(r"^part-(\d{5})-of-(\d{5})\.json$")


@dataclasses.dataclass(frozen=True)
class Part:
    """Part ``index`` (1-based) of ``count``: the output shards it writes, their keys and bytes."""

    index: int
    count: int
    shards: tuple[int, ...]
    names: tuple[str, ...]  # the shards' file names
    keys: tuple[str, ...]
    nbytes: int

    @property
    def manifest_name(self) -> str:
        return f"part-{self.index:05d}-of-{self.count:05d}.json"

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.index, "parts": self.count, "shards": list(self.shards), "tensors": len(self.keys), "bytes": self.nbytes}


def parse_part(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``; 1 <= i <= N.

    Example:
        >>> parse_part("2/4")
        (2, 4)
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise InvalidValueError("expected I/N with 1 <= I <= N, e.g. 2/4", option="part", value=text)
    return int(m.group(1)), int(m.group(2))


def parts_folder(plan: StagePlan) -> Path:
    """Where the parts of ``plan``'s output wait to be assembled: ``OUTPUT.wsa-parts`` next to it."""
    return plan.output.with_name(plan.output.name + ".wsa-parts")


def check_splittable(plans: Sequence[StagePlan]) -> StagePlan:
    """The stage a merge in parts splits: the only one (a multi-stage recipe runs whole)."""
    if len(plans) != 1:
        raise InvalidValueError(f"the recipe has {len(plans)} stages; only a one-stage recipe can be split into parts "
                                "(run it without --part/--parts, or write each stage as its own recipe)", option="part")  # fmt: skip
    return plans[0]


def split_parts(plan: StagePlan, count: int) -> tuple[list[Part], list[str]]:
    """Split the output's shards, in order, into ``count`` contiguous parts balanced by bytes; and notes.

    A part boundary falls at the shard where the running total crosses ``j / count`` of all bytes;
    with fewer shards than parts (or a permutation stage, never split) some parts are empty.

    Example:
        >>> parts, notes = split_parts(plan, 4)  # doctest: +SKIP
        >>> [p.shards for p in parts]  # doctest: +SKIP
        [(0, 1), (2,), (3, 4), (5,)]
    """
    if count < 1:
        raise InvalidValueError("the number of parts must be >= 1", option="parts", value=str(count))
    shards = plan_shards(plan.out_infos, plan.max_shard_bytes)
    sizes = [sum(i.nbytes for i in s) for s in shards]
    notes: list[str] = []
    if plan.spec.permutation is not None:
        bounds = [0, len(shards)] + [len(shards)] * (count - 1)
        if count > 1:
            notes.append(f"stage {plan.spec.name!r} has a permutation: block (whole models in memory): it is not split; "
                         f"part 1 writes every shard, parts 2..{count} are empty")  # fmt: skip
    else:
        total, run, bounds = sum(sizes), 0, [0]
        for j in range(1, count):
            target = total * j / count
            b = bounds[-1]
            while b < len(shards) and run + sizes[b] / 2 <= target:  # the shard goes where most of it lies
                run += sizes[b]
                b += 1
            bounds.append(b)
        bounds.append(len(shards))
        if len(shards) < count:
            notes.append(f"the output has {len(shards)} shard(s) for {count} parts: {count - len(shards)} part(s) are empty "
                         "(set output.shard_size for smaller shards)")  # fmt: skip
    names = shard_names(plan.output, len(shards))
    parts = []
    for j in range(count):
        idx = tuple(range(bounds[j], bounds[j + 1]))
        keys = tuple(i.key for s in idx for i in shards[s])
        parts.append(Part(j + 1, count, idx, tuple(names[s] for s in idx), keys, sum(sizes[s] for s in idx)))
    return parts, notes


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PartWriter:
    """The writer of one part: the part's shards, in plan order, each fsynced under a temporary name then renamed.

    Has the ``write(key, tensor)`` of :class:`~wsa_cli.io.SafetensorsWriter`, so the executor's
    stream feeds it unchanged; each shard's SHA-256 is computed while it is written.
    """

    def __init__(self, folder: Path, plan: StagePlan, part: Part, metadata: dict[str, str]) -> None:
        self.folder = folder
        shards = plan_shards(plan.out_infos, plan.max_shard_bytes)
        names = shard_names(plan.output, len(shards))
        self._todo: list[tuple[str, list[TensorInfo]]] = [(names[s], shards[s]) for s in part.shards]
        self._metadata = metadata
        self._open: ShardFile | None = None
        self._name = ""
        self.done: list[dict[str, Any]] = []

    def _next(self) -> None:
        name, infos = self._todo.pop(0)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{temp_tag()}.", suffix=".wsa-tmp", dir=self.folder)
        os.close(fd)
        self._open, self._name = ShardFile(Path(tmp), infos, self._metadata, hashed=True), name

    def _close_current(self) -> None:
        f = self._open
        assert f is not None and f.hash is not None
        f.close()  # fsynced
        final = self.folder / self._name
        os.replace(f.path, final)
        _fsync_dir(self.folder)
        self.done.append({"name": self._name, "bytes": final.stat().st_size, "sha256": f.hash.hexdigest(),
                          "keys": [i.key for i in f.infos]})  # fmt: skip
        self._open = None

    def write(self, key: str, tensor: torch.Tensor) -> None:
        with writing(self.folder):
            if self._open is not None and self._open.done:
                self._close_current()
            if self._open is None:
                if not self._todo:
                    raise RuntimeError(f"more tensors written than the part plans (at {key!r})")
                self._next()
            assert self._open is not None
            self._open.write(key, tensor)

    def finish(self) -> list[dict[str, Any]]:
        """Close the last shard; every shard of the part must be complete."""
        with writing(self.folder):
            if self._open is not None and self._open.done:
                self._close_current()
            while self._todo and not self._todo[0][1]:  # a model without tensors: one empty, valid file
                self._next()
                self._close_current()
        if self._open is not None or self._todo:
            raise RuntimeError("part finished before all its shards were written")
        return self.done

    def abort(self) -> None:
        if self._open is not None:
            self._open.abort()
            self._open.path.unlink(missing_ok=True)
            self._open = None


def _write_json_synced(path: Path, doc: dict[str, Any]) -> None:
    data = (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{temp_tag()}.", suffix=".wsa-tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A part's manifest, or None when missing or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == PART_FORMAT else None


def verify_part(folder: Path, part: Part, merge_id: str, *, hashes: bool = True) -> tuple[dict[str, Any] | None, str]:
    """The manifest of ``part`` if it belongs to this merge and its shards verify; else None and why.

    Checked: the merge id (same recipe, same inputs), the part's shards and keys as planned, each
    shard's size and (``hashes``) SHA-256.
    """
    doc = read_manifest(folder / part.manifest_name)
    if doc is None:
        return None, "no manifest"
    if doc.get("merge_id") != merge_id:
        return None, "manifest of another merge (recipe or inputs changed)"
    shards = doc.get("shards", [])
    if [s.get("name") for s in shards] != list(part.names) or [k for s in shards for k in s.get("keys", [])] != list(part.keys):
        return None, "manifest does not match the plan's shards"
    for s in doc["shards"]:
        f = folder / s["name"]
        try:
            size = f.stat().st_size
        except OSError:
            return None, f"{s['name']} is missing"
        if size != s["bytes"]:
            return None, f"{s['name']} has {size} bytes, the manifest says {s['bytes']}"
        if hashes and sha256_file(f) != s["sha256"]:
            return None, f"{s['name']}: SHA-256 differs from the manifest"
    return doc, "verified"


def run_part(
    plan: StagePlan,
    recipe: Recipe,
    part: Part,
    *,
    device: torch.device,
    progress: ProgressFn | None = None,
    overlap: bool = True,
    on_inputs: Callable[[StageInputs], None] | None = None,
    fingerprints: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compute part ``part`` of a one-stage merge into the parts folder (skipped if already there and verified).

    Returns the part's manifest, with ``"skipped": True`` when an earlier run's verified.
    ``fingerprints``: the inputs' fingerprints when the caller has them (one run of several parts
    takes them once; with ``provenance: sha256`` each is a full read of every input).
    """
    folder = parts_folder(plan)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        remove_orphans(folder)
    if fingerprints is None:
        fingerprints = stage_fingerprints(plan)
    _, merge_id = stage_identity(plan, recipe, fingerprints)
    doc, _why = verify_part(folder, part, merge_id)
    if doc is not None:
        if progress is not None:
            progress(len(part.keys), f"part {part.index}/{part.count} verified, skipped")
        return {**doc, "skipped": True}
    (folder / part.manifest_name).unlink(missing_ok=True)
    with open_stage(plan, recipe, device, fingerprints=fingerprints) as inputs:
        if on_inputs is not None:
            on_inputs(inputs)
        writer = PartWriter(folder, plan, part, inputs.metadata)
        try:
            records = stream_tensors(plan, inputs, writer.write, keys=part.keys, device=device, progress=progress, overlap=overlap)
            shards = writer.finish()
        except BaseException:
            writer.abort()
            raise
        doc = {"format": PART_FORMAT, "version": 1, "merge_id": inputs.merge_id, "recipe_sha256": recipe.sha256, "stage": plan.spec.name,
               "part": part.index, "parts": part.count, "shards": shards, "fingerprints": inputs.fingerprints,
               "fp_reports": inputs.fp_reports, "records": records}  # fmt: skip
    _write_json_synced(folder / part.manifest_name, doc)
    return {**doc, "skipped": False}


def find_part_count(plan: StagePlan) -> int:
    """N of the manifests in the parts folder (``--assemble`` without a count); one N only."""
    folder = parts_folder(plan)
    counts = {int(m.group(2)) for p in (folder.iterdir() if folder.is_dir() else []) if (m := _MANIFEST.match(p.name))}
    if not counts:
        raise OutputError("no part manifests to assemble (run the parts first: wsa merge RECIPE --part I/N)", path=folder)
    if len(counts) > 1:
        raise OutputError(f"manifests of several splits ({', '.join(map(str, sorted(counts)))} parts); remove the stale ones", path=folder)
    return counts.pop()


def assemble(plan: StagePlan, recipe: Recipe, count: int, *, force: bool = False, verified: Sequence[int] = (),
             fingerprints: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Check every part's manifest and shards, then commit the output with its index, report and card.

    ``verified``: parts this process has just written or verified (not hashed again). Refuses
    (exit 7, naming the part) a missing or failing part. The parts folder is removed after the commit.
    ``fingerprints``: as in :func:`run_part`.
    """
    folder = parts_folder(plan)
    parts, _ = split_parts(plan, count)
    if fingerprints is None:
        fingerprints = stage_fingerprints(plan)
    metadata, merge_id = stage_identity(plan, recipe, fingerprints)
    docs = []
    for p in parts:
        doc, why = verify_part(folder, p, merge_id, hashes=p.index not in verified)
        if doc is None:
            raise OutputError(f"part {p.index}/{count} cannot be assembled: {why} (run: wsa merge {recipe.path.name} --part {p.index}/{count})",
                              path=folder / p.manifest_name)  # fmt: skip
        docs.append(doc)
    by_key = {r["key"]: r for d in docs for r in d["records"]}
    records = [by_key[t.key] for t in plan.tensors]
    shard_files = [folder / s["name"] for d in docs for s in d["shards"]]
    with SafetensorsWriter(plan.output, plan.out_infos, metadata=metadata, max_shard_bytes=plan.max_shard_bytes, force=force,
                           replace_own_only=True) as writer:  # fmt: skip
        for i, f in enumerate(shard_files):
            writer.adopt(i, f)
        summary = finish_stage(plan, recipe, records, None, writer, fingerprints=fingerprints, merge_id=merge_id,
                               fp_reports=docs[0].get("fp_reports") or [])  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    summary["parts"] = count
    return summary


def part_summary(plan: StagePlan, part: Part, doc: dict[str, Any]) -> dict[str, Any]:
    """What ``--part i/N`` prints: the stage summary of the part's tensors, where its manifest is, whether it was skipped."""
    summary = _summary(plan, doc["records"], [s["name"] for s in doc["shards"]])
    manifest = parts_folder(plan) / part.manifest_name
    summary.update({"output": str(parts_folder(plan)), "report": str(manifest),
                    "part": {**part.to_dict(), "skipped": bool(doc.get("skipped")), "manifest": str(manifest)}})  # fmt: skip
    return summary


@dataclasses.dataclass(frozen=True)
class Split:
    """How a merge runs in parts (the options behind ``--part``, ``--parts``, ``--assemble``, ``--executor``).

    ``part=(i, N)``: compute part i of N here and stop. ``parts=N``: all N parts, one after another
    here (``executor="local"``: resumable) or as Ray tasks (``"ray"``, cluster at ``address``),
    then assemble. ``assemble``: only assemble the parts already written.
    """

    part: tuple[int, int] | None = None
    parts: int | None = None
    assemble: bool = False
    executor: str = "local"
    address: str | None = None

    def count(self, plan: StagePlan) -> int | None:
        """N: given, or (Ray without ``parts``) one part per output shard; None: assemble finds it."""
        if self.part is not None:
            return self.part[1]
        if self.parts is not None:
            return self.parts
        if self.executor == "ray":
            return len(plan_shards(plan.out_infos, plan.max_shard_bytes))
        return None


EXECUTORS = ("local", "ray")


def plan_split(plans: Sequence[StagePlan], split: Split) -> list[str]:
    """Check that the split can run (one stage, options that go together) and return what a person should know."""
    if split.executor not in EXECUTORS:
        raise InvalidValueError(f"expected one of {', '.join(EXECUTORS)}", option="executor", value=split.executor)
    if split.part is not None and (split.assemble or split.parts is not None or split.executor != "local"):
        raise InvalidValueError("--part I/N computes one part here; it does not go with --parts, --assemble or --executor ray", option="part")
    if split.assemble and split.executor != "local":
        raise InvalidValueError("--assemble runs here; it does not go with --executor ray", option="executor", value=split.executor)
    plan = check_splittable(plans)
    n = split.count(plan)
    if n is None:
        return []
    return split_parts(plan, n)[1]


def run_split(recipe: Recipe, plans: Sequence[StagePlan], split: Split, *, device: torch.device, force: bool = False,
              progress: ProgressFn | None = None, cost: Any = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run a merge as ``split`` says; return the stage summaries (one: the part's, or the assembled output's).

    ``cost``: the :class:`~wsa_cli.merge.cost.MergeCost` (its ``overlap`` is honoured; Ray tasks
    get ``memory=`` from the per-part prediction).
    """
    plan = check_splittable(plans)
    overlap = True if cost is None else cost.overlap
    if split.assemble:
        n = split.parts if split.parts is not None else find_part_count(plan)
        return [assemble(plan, recipe, n, force=force)]
    n = split.count(plan)
    assert n is not None
    parts, _ = split_parts(plan, n)
    if split.part is not None:
        part = parts[split.part[0] - 1]
        doc = run_part(plan, recipe, part, device=device, progress=progress, overlap=overlap)
        return [part_summary(plan, part, doc)]
    if split.executor == "ray":
        from wsa_cli.merge.ray_executor import run_parts_on_ray

        ran = run_parts_on_ray(recipe, plan, parts, device=device, address=split.address, progress=progress, overlap=overlap, force=force)
        summary = assemble(plan, recipe, n, force=force)
        summary["ray"] = ran
        summary["parts_skipped"] = [r["part"] for r in ran if r["skipped"]]
        return [summary]
    skipped = []
    fingerprints = stage_fingerprints(plan)  # once for every part and the assembly of this run
    for part in parts:
        if run_part(plan, recipe, part, device=device, progress=progress, overlap=overlap, fingerprints=fingerprints)["skipped"]:
            skipped.append(part.index)
    summary = assemble(plan, recipe, n, force=force, verified=[p.index for p in parts], fingerprints=fingerprints)
    summary["parts_skipped"] = skipped
    if skipped:
        summary["warnings"].append(f"resumed: part(s) {', '.join(map(str, skipped))} of {n} were already written and verified, not recomputed")
    return [summary]


__all__ = ["EXECUTORS", "PART_FORMAT", "Part", "PartWriter", "Split", "assemble", "check_splittable", "find_part_count", "parse_part", "part_summary",
           "parts_folder", "plan_split", "read_manifest", "run_part", "run_split", "split_parts", "verify_part"]  # fmt: skip
