"""Permutation alignment experiment: barriers naive / wsa / permuted / permuted+wsa / permuted+fp, and align timing.

Part 1 (barriers). For each built-in task and width, train two models from different seeds
(``wsa_cli.tasks.train_model``), then measure the loss/accuracy barrier on the line between them
(``wsa interpolate``'s library, test split) under every mode side by side:

* ``naive``          the checkpoints as they are;
* ``wsa``            both rescaled onto their fused layer scopes;
* ``permuted``       B's hidden units put into A's order by weight matching (built-in task spec);
* ``permuted+wsa``   permuted, then scope-aligned;
* ``permuted+fp``    permuted, then moved toward the fused scopes by function-preserving scales only.

For digits-cnn the BatchNorm running statistics of every interpolated model are re-estimated on
the training data (``--no-recalibrate`` turns that off): interpolated running statistics are
meaningless, and without the repair every mode's barrier is dominated by them.

Part 2 (timing). ``wsa align`` (read two checkpoints, weight matching, apply, write the aligned
checkpoint and the permutations file) on random MLPs ``64 -> W -> ... -> 10`` of growing width W,
with the matching time, sweeps, time per sweep and the ratio to the smallest model printed side
by side.

Run small (about a minute on 2 CPU cores):

    .venv/bin/python bench/bench_align.py --widths-mlp 16,128 --widths-cnn 4,16 --epochs 10 --timing-widths 64,256,1024

Bigger (the lead's machine): ``--widths-mlp 16,512 --widths-cnn 8,64 --epochs 30 --pairs 3
--timing-widths 256,1024,4096 --device auto``. Numbers are printed as measured; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from wsa_cli.device import resolve_device
from wsa_cli.interpolate import ModeOptions, parse_alphas, resolve_evaluator, run_interpolation
from wsa_cli.io import save_safetensors
from wsa_cli.permute.align import AlignOptions, run_align
from wsa_cli.tasks import train_model

MODES = ["naive", "wsa", "permuted", "permuted+wsa", "permuted+fp"]


def barrier_rows(task: str, width: int, args: argparse.Namespace, tmp: Path) -> list[dict]:
    recal = task == "digits-cnn" and not args.no_recalibrate
    evaluator = resolve_evaluator(task, recalibrate_bn=recal)
    rows: list[dict] = []
    per_mode: dict[str, list[dict]] = {m: [] for m in MODES}
    for pair in range(args.pairs):
        paths = []
        for seed in (2 * pair + 1, 2 * pair + 2):
            state, metrics = train_model(task, seed=seed, epochs=args.epochs, width=width, optimizer=args.optimizer, device=args.device)
            p = tmp / f"{task}-w{width}-s{seed}.safetensors"
            save_safetensors(state, p, force=True)
            paths.append(p)
        t0 = time.perf_counter()
        res = run_interpolation(paths[0], paths[1], alphas=parse_alphas(args.alphas), modes=MODES,
                                options=ModeOptions(spec=Path(task), seed=0, device=resolve_device(args.device)),
                                evaluator=evaluator)  # fmt: skip
        took = time.perf_counter() - t0
        for curve in res.modes:
            s = curve.summary
            per_mode[curve.mode].append({**s, "seconds": took})
    for mode, runs in per_mode.items():
        def mean(key: str) -> float | None:
            vals = [r.get(key) for r in runs if r.get(key) is not None]
            return statistics.fmean(vals) if vals else None

        rows.append({
            "task": task, "width": width, "mode": mode, "bn_recal": recal,
            "loss_0": mean("loss_0"), "loss_1": mean("loss_1"), "loss_barrier": mean("loss_barrier"),
            "loss_barrier_inputs": mean("loss_barrier_inputs"), "acc_barrier": mean("acc_barrier"),
        })  # fmt: skip
    return rows


def timing_rows(widths: list[int], depth: int, args: argparse.Namespace, tmp: Path) -> list[dict]:
    from wsa_cli.permute.examples import MLP

    rows = []
    for w in widths:
        sizes = (64, *([w] * depth), 10)
        paths = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            p = tmp / f"mlp-{w}-{seed}.safetensors"
            save_safetensors(MLP(sizes).state_dict(), p, force=True)
            paths.append(p)
        out = tmp / f"mlp-{w}-aligned.safetensors"
        t0 = time.perf_counter()
        report = run_align(AlignOptions(paths[0], [paths[1]], "mlp", out, seed=0, device=resolve_device(args.device), force=True))
        total = time.perf_counter() - t0
        m = report.models[0]
        params = sum(a * b + a for a, b in zip(sizes[1:], sizes[:-1], strict=False))
        rows.append({"width": w, "params": params, "groups": len(report.groups), "sweeps": m["sweeps"],
                     "match_s": m["seconds"], "total_s": total, "s_per_sweep": m["seconds"] / max(m["sweeps"], 1)})  # fmt: skip
    base = rows[0]
    for r in rows:
        r["params_x"] = r["params"] / base["params"]
        r["total_x"] = r["total_s"] / base["total_s"]
    return rows


def fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n{title}")
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(fmt(r[c]).rjust(w) for c, w in zip(cols, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths-mlp", default="16,128", help="narrow,wide hidden widths for digits-mlp")
    ap.add_argument("--widths-cnn", default="4,16", help="narrow,wide first-conv channels for digits-cnn ('' to skip)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--pairs", type=int, default=1, help="independent seed pairs per setting (barriers are averaged)")
    ap.add_argument("--alphas", default="0:1:11")
    ap.add_argument("--no-recalibrate", action="store_true", help="do not re-estimate BatchNorm statistics (digits-cnn)")
    ap.add_argument("--timing-widths", default="64,256,1024", help="MLP widths for the wsa align timing ('' to skip)")
    ap.add_argument("--timing-depth", type=int, default=3, help="hidden layers of the timing MLPs")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows: list[dict] = []
        for task, spec in (("digits-mlp", args.widths_mlp), ("digits-cnn", args.widths_cnn)):
            for w in [int(x) for x in spec.split(",") if x.strip()]:
                t0 = time.perf_counter()
                rows += barrier_rows(task, w, args, tmp)
                print(f"{task} width {w}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        if rows:
            print_table(
                f"barriers between models from different seeds ({args.pairs} pair(s), {args.epochs} epochs, test split; "
                "loss_barrier vs the mode's own endpoints, loss_barrier_inputs vs the input checkpoints)",
                rows, ["task", "width", "mode", "bn_recal", "loss_0", "loss_1", "loss_barrier", "loss_barrier_inputs", "acc_barrier"],
            )
        widths = [int(x) for x in args.timing_widths.split(",") if x.strip()]
        if widths:
            trows = timing_rows(widths, args.timing_depth, args, tmp)
            print_table(
                f"wsa align timing: random MLP 64 -> W x{args.timing_depth} -> 10 (read, match, apply, write)",
                trows, ["width", "params", "params_x", "groups", "sweeps", "match_s", "s_per_sweep", "total_s", "total_x"],
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
