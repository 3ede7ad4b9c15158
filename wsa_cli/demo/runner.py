"""``wsa demo``: the whole WSA story on small models (digits or MNIST-1D), in one output folder, in a few minutes.

Steps (each writes into ``out_dir``):

1. **train** five ``digits-mlp`` (or ``mnist1d-mlp``) models: SGD and Adam from one shared initialisation (seed 0),
   SGD from another seed (seed 1), and the SGD/Adam pair again with the WSA scope regularizer
   (``models/*.safetensors`` + ``*.metrics.json``);
2. **inspect**: compare the layer scopes of each pair with the ``wsa inspect`` library
   (``inspect.json``);
3. **merge** pairs with recipes built from ``recipes/average.yaml`` and
   ``recipes/permuted-wsa.yaml`` through the ``wsa merge`` library, with and without scope
   alignment, and evaluate the merged models (``recipes/*.yaml``, ``merged/*.safetensors``);
4. **interpolate**: loss/accuracy along the straight line between each pair with the
   ``wsa interpolate`` library, modes ``naive`` and ``wsa`` (and ``permuted``/``permuted+wsa``
   for the pair from different seeds), and the barrier of each (``interpolate/*.json``);
5. **explain**: ``summary.json`` and ``report.md``, the plain-words reading of the numbers.

``quick`` runs exactly the same steps with fewer epochs, a narrower model and fewer alphas.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wsa_cli.errors import InvalidValueError, OutputError
from wsa_cli.progress import ProgressFn
from wsa_cli.results import Result, Text, View
from wsa_cli.jsontext import to_json


#: (name, training seed, optimizer, WSA regularizer on?)
MODELS: tuple[tuple[str, int, str, bool], ...] = (
    ("sgd-seed0", 0, "sgd", False),
    ("adam-seed0", 0, "adam", False),
    ("sgd-seed1", 1, "sgd", False),
    ("sgd-seed0-wsa", 0, "sgd", True),
    ("adam-seed0-wsa", 0, "adam", True),
)

#: (pair name, model A, model B, what the pair shows)
PAIRS: tuple[tuple[str, str, str, str], ...] = (
    ("sgd-vs-adam", "sgd-seed0", "adam-seed0", "same init, different optimizer, no WSA"),
    ("sgd-vs-adam-wsa", "sgd-seed0-wsa", "adam-seed0-wsa", "same init, different optimizer, trained with WSA"),
    ("seed0-vs-seed1", "sgd-seed0", "sgd-seed1", "different inits (seeds), SGD, no WSA"),
)


#: The tasks the demo runs on, with their default regularizer coefficient.
DEMO_TASKS: dict[str, float] = {"digits-mlp": 0.1, "mnist1d-mlp": 0.01}


@dataclass
class DemoConfig:
    """Settings of one demo run; ``None`` picks the full or quick value."""

    out_dir: Path = Path("wsa-demo")
    quick: bool = False
    task: str = "digits-mlp"  # or mnist1d-mlp (MNIST-1D: where SGD and Adam from one init have a real barrier)
    width: int | None = None  # the task's default: 64 digits / 128 MNIST-1D (quick: 32)
    epochs: int | None = None  # the task's default: 20 digits / 60 MNIST-1D (quick: 4)
    alphas: int | None = None  # points on each interpolation line: 11 (quick: 5)
    wsa_coef: float | None = None  # 0.1 on digits, 0.01 on MNIST-1D
    device: str = "cpu"
    force: bool = False

    def resolved(self) -> DemoConfig:
        c = DemoConfig(**asdict(self))
        c.out_dir = Path(self.out_dir)
        if self.task not in DEMO_TASKS:
            raise InvalidValueError(f"the demo runs on {' or '.join(DEMO_TASKS)}", option="task", value=self.task)
        from wsa_cli.tasks import get_task

        spec = get_task(self.task)
        c.width = self.width or (32 if self.quick else spec.default_width)
        c.epochs = self.epochs if self.epochs is not None else (4 if self.quick else spec.default_epochs)
        c.alphas = self.alphas or (5 if self.quick else 11)
        c.wsa_coef = DEMO_TASKS[self.task] if self.wsa_coef is None else float(self.wsa_coef)
        if c.alphas < 3:
            raise InvalidValueError(f"must be >= 3 so that 0, 0.5 and 1 can be on the line, got {c.alphas}", option="alphas")
        return c


@dataclass
class DemoResult(Result):
    """Everything the report is written from (also saved as summary.json); shown as the report."""

    command = "demo"

    config: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    scopes: dict[str, dict[str, Any]] = field(default_factory=dict)
    merges: list[dict[str, Any]] = field(default_factory=list)
    barriers: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("warnings")
        d.pop("notes")
        return d

    def render(self) -> list[View]:
        from wsa_cli.demo.report import render_report

        return [Text(render_report(self))]


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a file, or an existing non-empty folder without ``force`` (checks only, creates nothing).

    Example:
        >>> check_out_dir(Path("demo-out"), force=False)  # doctest: +SKIP
    """
    if out.exists() and not out.is_dir():
        raise OutputError("demo output exists and is not a folder", path=out)
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputError("demo folder exists and is not empty; pass {opt:force} to overwrite the demo's files in it", path=out)


def prepare_out_dir(out: Path, force: bool) -> None:
    """Refuse an existing non-empty folder without ``force``; never delete anything in it."""
    from wsa_cli.io.writer import writing

    check_out_dir(out, force)
    with writing(out):  # e.g. a read-only place: exit 7, not an internal error
        for sub in ("models", "recipes", "merged", "interpolate"):
            (out / sub).mkdir(parents=True, exist_ok=True)


def run_demo(cfg: DemoConfig, progress: ProgressFn | None = None) -> DemoResult:
    """Run every step; ``progress(n, label)`` gets one call per finished piece of work.

    Example:
        >>> res = run_demo(DemoConfig(out_dir=Path("demo"), quick=True))  # doctest: +SKIP
        >>> res.barriers[0]["mode"]  # doctest: +SKIP
        'naive'
    """
    cfg = cfg.resolved()
    say = progress or (lambda n, label: None)
    t0 = time.perf_counter()
    out = cfg.out_dir
    prepare_out_dir(out, cfg.force)
    result = DemoResult(config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()})
    paths = _train(cfg, result, say)
    _inspect(cfg, result, paths, say)
    _merge(cfg, result, paths, say)
    _interpolate(cfg, result, paths, say)
    result.seconds = time.perf_counter() - t0
    from wsa_cli.demo.report import render_report
    from wsa_cli.io.writer import atomic_write_text

    atomic_write_text(out / "report.md", render_report(result))
    result.files += ["report.md", "summary.json"]
    atomic_write_text(out / "summary.json", to_json(result))
    say(1, "done")
    return result


def total_steps() -> int:
    """How many progress calls a run makes (for a progress bar)."""
    return len(MODELS) + len(PAIRS) + 5 + len(PAIRS) + 1


def _train(cfg: DemoConfig, result: DemoResult, say: ProgressFn) -> dict[str, Path]:
    from wsa_cli.tasks.checkpoint import TrainConfig, train_to_file

    paths: dict[str, Path] = {}
    for name, seed, opt, wsa in MODELS:
        tc = TrainConfig(
            task=cfg.task, seed=seed, optimizer=opt, epochs=cfg.epochs, width=cfg.width,
            wsa_coef=cfg.wsa_coef if wsa else 0.0, wsa_target="init" if wsa else None, device=cfg.device,
        )  # fmt: skip
        path, metrics = train_to_file(tc, cfg.out_dir / "models" / f"{name}.safetensors", force=True)
        paths[name] = path
        result.models[name] = {
            "path": _relpath(path, cfg.out_dir), "seed": seed, "optimizer": opt, "wsa_coef": tc.wsa_coef,
            "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"], "epochs": metrics["epochs"],
        }  # fmt: skip
        result.files += [f"models/{name}.safetensors", f"models/{name}.metrics.json"]
        say(1, f"trained {name} ({opt}, seed {seed}{', WSA' if wsa else ''}): test accuracy {metrics['test_accuracy']:.3f}")
    return paths


def _inspect(cfg: DemoConfig, result: DemoResult, paths: dict[str, Path], say: ProgressFn) -> None:
    from wsa_cli.io import open_checkpoint
    from wsa_cli.io.writer import atomic_write_text
    from wsa_cli.inspection.report import compare_reports, inspect_checkpoint

    reports = {}
    for name, path in paths.items():
        with open_checkpoint(path) as reader:
            reports[name] = inspect_checkpoint(reader, device=cfg.device)
    dump = {}
    for pair, a, b, what in PAIRS:
        cmp = compare_reports([reports[a], reports[b]])
        layers = [
            {"key": c.key, "std_a": c.scopes[0].std, "std_b": c.scopes[1].std, "mean_a": c.scopes[0].mean,
             "mean_b": c.scopes[1].mean, "std_ratio": c.std_ratio, "kl_to_fused": c.max_kl}
            for c in cmp.layers
        ]  # fmt: skip
        ratios = [row["std_ratio"] for row in layers if row["std_ratio"] is not None]
        result.scopes[pair] = {
            "a": a, "b": b, "what": what, "layers": layers,
            "max_std_ratio": max(ratios) if ratios else None,
            "max_kl_to_fused": max(row["kl_to_fused"] for row in layers),
        }  # fmt: skip
        dump[pair] = {"a": a, "b": b, "layers": [c.to_dict() for c in cmp.layers], "mismatches": cmp.mismatches}
        say(1, f"compared scopes of {a} and {b}: largest std ratio {result.scopes[pair]['max_std_ratio']:.2f}")
    atomic_write_text(cfg.out_dir / "inspect.json", to_json(dump))
    result.files.append("inspect.json")


def _merge(cfg: DemoConfig, result: DemoResult, paths: dict[str, Path], say: ProgressFn) -> None:
    from wsa_cli.demo.recipes import write_demo_recipe
    from wsa_cli.merge.executor import merge_recipe
    from wsa_cli.tasks.evaluate import evaluate
    from wsa_cli.io import open_checkpoint

    plan = [
        ("average-sgd-adam-plain", "average.yaml", ("sgd-seed0", "adam-seed0"), False, "plain average (scope alignment off)"),
        ("average-sgd-adam-aligned", "average.yaml", ("sgd-seed0", "adam-seed0"), True, "scope-aligned average (WSA merge)"),
        ("average-sgd-adam-wsa-trained", "average.yaml", ("sgd-seed0-wsa", "adam-seed0-wsa"), True,
         "scope-aligned average of the WSA-trained pair"),
        ("average-seeds-plain", "average.yaml", ("sgd-seed0", "sgd-seed1"), False, "plain average of different seeds"),
        ("permuted-wsa-seeds", "permuted-wsa.yaml", ("sgd-seed0", "sgd-seed1"), True,
         "weight matching, then scope-aligned average, of different seeds"),
    ]  # fmt: skip
    for name, template, (a, b), align, what in plan:
        merged = cfg.out_dir / "merged" / f"{name}.safetensors"
        recipe_path, source = write_demo_recipe(
            template, [paths[a], paths[b]], merged, cfg.out_dir / "recipes" / f"{name}.yaml", align=align, spec=cfg.task
        )
        merge_recipe(recipe_path, device=cfg.device, force=True)
        with open_checkpoint(merged) as reader:
            state = {k: reader.get(k) for k in reader}
        acc = evaluate(cfg.task, state, cfg.device)
        result.merges.append({
            "name": name, "what": what, "a": a, "b": b, "template": source, "align": align,
            "recipe": _relpath(recipe_path, cfg.out_dir), "output": _relpath(merged, cfg.out_dir),
            "accuracy": acc["accuracy"], "loss": acc["loss"],
            "accuracy_a": result.models[a]["test_accuracy"], "accuracy_b": result.models[b]["test_accuracy"],
        })  # fmt: skip
        result.files += [f"recipes/{name}.yaml", f"merged/{name}.safetensors"]
        say(1, f"merged {a} + {b} ({what}): test accuracy {acc['accuracy']:.3f}")


def _interpolate(cfg: DemoConfig, result: DemoResult, paths: dict[str, Path], say: ProgressFn) -> None:
    import torch

    from wsa_cli.device import resolve_device
    from wsa_cli.interpolate.evaluators import resolve_evaluator
    from wsa_cli.interpolate.modes import MODES, ModeOptions
    from wsa_cli.interpolate.run import run_interpolation
    from wsa_cli.io.writer import atomic_write_text

    n = int(cfg.alphas or 11)
    alphas = [i / (n - 1) for i in range(n)]
    evaluator = resolve_evaluator(cfg.task)
    opts = ModeOptions(spec=Path(cfg.task), device=resolve_device(cfg.device))
    permuted = [m for m in ("permuted", "permuted+wsa") if m in MODES]
    for pair, a, b, what in PAIRS:
        modes = ["naive", "wsa"] + (permuted if pair == "seed0-vs-seed1" else [])
        with torch.no_grad():
            res = run_interpolation(paths[a], paths[b], alphas=alphas, modes=modes, options=opts, evaluator=evaluator)
        atomic_write_text(cfg.out_dir / "interpolate" / f"{pair}.json", to_json(res))
        result.files.append(f"interpolate/{pair}.json")
        mid = min(range(len(alphas)), key=lambda j: abs(alphas[j] - 0.5))
        for curve in res.modes:
            s = curve.summary
            result.barriers.append({
                "pair": pair, "what": what, "a": a, "b": b, "mode": curve.mode,
                "loss_barrier": s.get("loss_barrier"), "acc_barrier": s.get("acc_barrier"),
                "mid_accuracy": curve.rows[mid].get("accuracy"), "mid_loss": curve.rows[mid].get("loss"),
            })  # fmt: skip
        best = ", ".join(f"{c.mode} {c.summary.get('loss_barrier', float('nan')):.3f}" for c in res.modes)
        say(1, f"interpolated {a} -> {b}: loss barrier {best}")


def _relpath(p: Path, base: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)


