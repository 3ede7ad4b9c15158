"""Does training with the WSA scope regularizer help? An experiment, not a timed test.

Part A -- linear-mode barrier between two independently trained models, with and without the
regularizer (coefficient ``--wsa-coef``, target ``init``: the scopes of the seed-0
initialisation, the same for every seed). Pairs are trained from different seeds (different
inits), and, as a second setting, from one shared init with SGD vs Adam. Barriers come from the
``wsa interpolate`` library (:mod:`wsa_cli.interpolate`) with the built-in task evaluator, for the ``naive``
path and the ``wsa`` path (both endpoints rescaled onto their fused scope first).

Part B -- federated learning on label-skewed Dirichlet shards: FedAvg vs FedAvg + WSA (the
server's fused scopes as the clients' regularizer target), and the server-side alignment step
(clients rescaled onto the fused scopes before averaging) with and without the regularizer,
several seeds, final global test accuracy as mean +- standard deviation.

Every number is measured in this run; the closing lines say, per comparison, whether the
regularizer helped, and by how much relative to the seed-to-seed spread.

Run small:   .venv/bin/python bench/experiment_training.py --quick
Run fuller:  .venv/bin/python bench/experiment_training.py --seeds 5 --rounds 20
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsa_cli.fed import FedConfig, run_fedsim  # noqa: E402
from wsa_cli.interpolate.evaluators import resolve_evaluator  # noqa: E402
from wsa_cli.interpolate.run import run_interpolation  # noqa: E402
from wsa_cli.io import save_safetensors  # noqa: E402
from wsa_cli.tasks import get_task, train_model  # noqa: E402


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: list[float], digits: int = 3) -> str:
    m, s = mean_sd(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def verdict(name: str, base: list[float], treated: list[float], *, higher_is_better: bool) -> str:
    """One honest line from *paired* differences (same seed = same init, data split and batch order)."""
    diffs = [t - b for b, t in zip(base, treated, strict=True)]
    diff, sd = mean_sd(diffs)
    se = sd / math.sqrt(len(diffs)) if len(diffs) > 1 else float("inf")
    better = diff > 0 if higher_is_better else diff < 0
    if diff == 0 or abs(diff) <= 2 * se:
        word = "no clear difference"
    else:
        word = "WSA helped" if better else "WSA did NOT help (worse)"
    return (f"  {name}: {word}: {statistics.fmean(base):.3f} -> {statistics.fmean(treated):.3f} "
            f"(paired diff {diff:+.3f}, 2 s.e. {2 * se:.3f}, n={len(diffs)})")  # fmt: skip


def part_a(args: argparse.Namespace, workdir: Path) -> list[str]:
    spec = get_task(args.task)
    width = args.width or spec.default_width
    evaluator = resolve_evaluator(args.task, recalibrate_bn=args.task == "digits-cnn")
    alphas = [i / (args.alphas - 1) for i in range(args.alphas)]
    settings = [("different seeds, sgd", "seeds"), ("shared init, sgd vs adam", "optim")]
    print(f"\nPart A: barrier between two {args.task} models (width {width}, {args.epochs} epochs, "
          f"{args.seeds} pairs, {len(alphas)} alphas); WSA target = init scopes")  # fmt: skip
    header = f"{'setting':28s} {'wsa_coef':>8s} {'endpoint acc':>15s} {'loss barrier':>15s} {'acc barrier':>15s} " \
             f"{'loss barrier (wsa path)':>24s} {'mid acc':>15s}"  # fmt: skip
    print(header)
    print("-" * len(header))
    verdicts = []
    for label, kind in settings:
        per_coef: dict[float, dict[str, list[float]]] = {}
        for coef in (0.0, args.wsa_coef):
            rows: dict[str, list[float]] = {"end": [], "lb": [], "ab": [], "lbw": [], "mid": []}
            for s in range(args.seeds):
                if kind == "seeds":
                    runs = [dict(seed=2 * s, optimizer="sgd"), dict(seed=2 * s + 1, optimizer="sgd")]
                    init = None
                else:
                    runs = [dict(seed=2 * s, optimizer="sgd"), dict(seed=2 * s + 1, optimizer="adam")]
                    init = spec.build_model(width, seed=1000 + s).state_dict()
                paths = []
                for i, run in enumerate(runs):
                    sd, m = train_model(args.task, epochs=args.epochs, width=width, wsa_coef=coef, init_state=init, **run)
                    p = workdir / f"{kind}-{coef:g}-{s}-{i}.safetensors"
                    save_safetensors(sd, p, force=True)
                    paths.append(p)
                    rows["end"].append(m["test_accuracy"])
                res = run_interpolation(paths[0], paths[1], alphas=alphas, modes=["naive", "wsa"], evaluator=evaluator)
                naive, wsa = res.modes[0], res.modes[1]
                rows["lb"].append(naive.summary["loss_barrier"])
                rows["ab"].append(naive.summary["acc_barrier"])
                rows["lbw"].append(wsa.summary["loss_barrier"])
                mid = min(range(len(alphas)), key=lambda j: abs(alphas[j] - 0.5))
                rows["mid"].append(naive.rows[mid]["accuracy"])
            per_coef[coef] = rows
            print(f"{label:28s} {coef:8g} {fmt(rows['end']):>15s} {fmt(rows['lb']):>15s} {fmt(rows['ab']):>15s} "
                  f"{fmt(rows['lbw']):>24s} {fmt(rows['mid']):>15s}", flush=True)  # fmt: skip
        base, reg = per_coef[0.0], per_coef[args.wsa_coef]
        verdicts.append(verdict(f"A/{label}: loss barrier (naive path)", base["lb"], reg["lb"], higher_is_better=False))
        verdicts.append(verdict(f"A/{label}: midpoint accuracy", base["mid"], reg["mid"], higher_is_better=True))
        verdicts.append(verdict(f"A/{label}: endpoint accuracy", base["end"], reg["end"], higher_is_better=True))
    return verdicts


def part_b(args: argparse.Namespace) -> list[str]:
    base = FedConfig(
        task=args.task, clients=args.clients, rounds=args.rounds, local_epochs=args.local_epochs,
        split="dirichlet", dirichlet_alpha=args.dirichlet_alpha, width=args.width,
    )  # fmt: skip
    variants = [("FedAvg", dict(wsa_coef=0.0))]
    variants += [(f"FedAvg + WSA {c:g}", dict(wsa_coef=c)) for c in args.fed_wsa_coef]
    variants += [("FedAvg + align only", dict(wsa_coef=0.0, align_before_average=True))]
    variants += [(f"FedAvg + WSA {args.fed_wsa_coef[0]:g} + align", dict(wsa_coef=args.fed_wsa_coef[0], align_before_average=True))]
    print(f"\nPart B: federated {args.task}, {args.clients} clients, Dirichlet alpha {args.dirichlet_alpha:g}, "
          f"{args.rounds} rounds x {args.local_epochs} local epochs, {args.seeds} seeds")  # fmt: skip
    header = f"{'variant':30s} {'final acc':>15s} {'best acc':>15s} {'mean acc, last 3 rounds':>24s} {'client scope KL':>16s}"
    print(header)
    print("-" * len(header))
    finals: dict[str, list[float]] = {}
    for name, overrides in variants:
        final, best, last3, kl = [], [], [], []
        for seed in range(args.seeds):
            res = run_fedsim(replace(base, seed=seed, **overrides))
            accs = [r.test_accuracy for r in res.rounds]
            final.append(accs[-1])
            best.append(max(accs))
            last3.append(statistics.fmean(accs[-3:]))
            kl.append(res.rounds[-1].client_scope_kl)
        finals[name] = final
        print(f"{name:30s} {fmt(final):>15s} {fmt(best):>15s} {fmt(last3):>24s} {statistics.fmean(kl):16.2e}", flush=True)
    return [
        verdict(f"B/{name}: final accuracy vs FedAvg", finals["FedAvg"], finals[name], higher_is_better=True)
        for name, _ in variants[1:]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="digits-mlp")
    ap.add_argument("--seeds", type=int, default=3, help="pairs (part A) and federated seeds (part B)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--wsa-coef", type=float, default=0.1, help="regularizer coefficient in part A")
    ap.add_argument("--alphas", type=int, default=11)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--dirichlet-alpha", type=float, default=0.3)
    ap.add_argument("--fed-wsa-coef", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 5 epochs, 4 rounds: checks the script works")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.rounds, args.alphas = 2, 5, 4, 5
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    t0 = time.perf_counter()
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_a:
            verdicts += part_a(args, Path(tmp))
        if not args.skip_b:
            verdicts += part_b(args)
    print("\nVerdicts (paired by seed; 'no clear difference' when the mean difference is within 2 standard errors):")
    print("\n".join(verdicts))
    print(f"\n(total {time.perf_counter() - t0:.0f} s; values are mean ± sample standard deviation over seeds)")


if __name__ == "__main__":
    main()
