"""``wsa fedsim`` as a library call: the same federation run once per WSA coefficient, side by side.

Optionally each run's final global model and fused scope file are written to a folder, checked
before any training (never over an existing file without ``force``).

Example:
    >>> result = run_comparison(FedConfig(rounds=2, clients=3), coefs=[0.0, 0.1])  # doctest: +SKIP
    >>> [r.config.wsa_coef for r in result.runs]  # doctest: +SKIP
    [0.0, 0.1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wsa_cli.errors import InvalidValueError
from wsa_cli.fed.simulation import FedConfig, FedResult, check_config, per_round, run_fedsim
from wsa_cli.progress import ProgressFn, announce_total
from wsa_cli.results import Result, Table, View

ENGINES = ("builtin", "flower")
CSV_COLUMNS = ("wsa_coef", "round", "test_accuracy", "test_loss", "client_scope_kl", "global_scope_kl",
               "mean_client_accuracy", "seconds")  # fmt: skip


@dataclass
class FedsimResult(Result):
    """One federated run per WSA coefficient (0 = plain FedAvg), and the files written."""

    command = "fedsim"

    runs: list[FedResult]
    outputs: list[tuple[Path, Path]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [r.to_dict() for r in self.runs]}

    def rows(self) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
        return CSV_COLUMNS, [{"wsa_coef": r.config.wsa_coef, **rr.to_dict()} for r in self.runs for rr in r.rounds]

    def render(self) -> list[View]:
        first = self.runs[0].config
        cols = ["round"] + [("FedAvg" if r.config.wsa_coef == 0 else f"+WSA {r.config.wsa_coef:g}") + " acc" for r in self.runs]
        rows = [[0] + [r.initial_accuracy for r in self.runs]]
        rows += [[i + 1] + [r.rounds[i].test_accuracy for r in self.runs] for i in range(first.rounds)]
        m = per_round(first)
        who = f"{first.clients} clients" if m == first.clients else f"{m} of {first.clients} clients per round"
        tgt = "" if first.target == "fused" else f", fixed target {first.target}"
        return [Table(f"wsa fedsim {first.task}: {who}, {first.split}{tgt}", cols, rows,
                      caption="global test accuracy after each round (round 0 = initial model)")]  # fmt: skip


def output_paths(out_dir: str | Path, coef: float) -> tuple[Path, Path]:
    """Where a run's final global model and fused scope file go.

    Example:
        >>> output_paths("runs", 0.1)
        (PosixPath('runs/global-wsa0.1.safetensors'), PosixPath('runs/scopes-wsa0.1.json'))
    """
    d = Path(out_dir)
    return d / f"global-wsa{coef:g}.safetensors", d / f"scopes-wsa{coef:g}.json"


def run_comparison(
    base: FedConfig,
    coefs: Sequence[float] = (0.0,),
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    engine: str = "builtin",
) -> FedsimResult:
    """Run ``base`` once per WSA coefficient; write each run's global model and scopes to ``out_dir``.

    ``engine``: ``builtin`` (in-process, default) or ``flower`` (Flower's Ray simulation engine,
    :mod:`wsa_cli.fed.flower.engine`; needs the ``flower`` extra).
    """
    from wsa_cli.io.writer import atomic_write_text, check_output, save_safetensors

    coefs = list(coefs) or [0.0]
    if len(set(coefs)) != len(coefs):
        raise InvalidValueError(f"values repeat: {coefs}", option="wsa_coef")
    outputs: list[tuple[Path, Path]] = []
    if out_dir is not None:
        if not Path(out_dir).is_dir():
            raise InvalidValueError("not an existing folder", option="out_dir", value=str(out_dir))
        for c in coefs:
            pair = output_paths(out_dir, c)
            for p in pair:
                check_output(p, force=force)
            outputs.append(pair)
    if engine not in ENGINES:
        raise InvalidValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}", option="engine")
    run = run_fedsim
    if engine == "flower":
        from wsa_cli.fed.flower import require_flower

        require_flower()
        from wsa_cli.fed.flower.engine import run_fedsim_flower as run
    check_config(base)
    announce_total(progress, len(coefs) * base.rounds * per_round(base))
    runs = [run(replace(base, wsa_coef=c), progress=progress) for c in coefs]
    notes = []
    for res, (ckpt, scopes) in zip(runs, outputs, strict=False):  # no outputs without out_dir
        save_safetensors(res.final_state, ckpt, metadata={"wsa.task": base.task, "wsa.fedsim_wsa_coef": f"{res.config.wsa_coef:g}"}, force=force)
        atomic_write_text(scopes, res.final_scopes.to_json())
        notes.append(f"wrote {ckpt} and {scopes}")
    alpha = f" alpha={base.dirichlet_alpha:g}" if base.split == "dirichlet" else ""
    notes.append(f"client sizes {runs[0].client_sizes}; split {base.split}{alpha}" + ("; engine flower" if engine == "flower" else ""))
    return FedsimResult(runs, outputs, notes=notes)
