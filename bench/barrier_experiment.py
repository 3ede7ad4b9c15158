"""Barrier experiment: does a function-preserving rescale raise the naive barrier, and does wsa undo it?

Trains two digits-mlp classifiers from different seeds (``wsa_cli.tasks.train_model``), then builds
more checkpoints: model B with its first hidden layer scaled up by ``c`` (``fc1.weight`` and
``fc1.bias`` times c) and the next layer scaled down (``fc2.weight`` divided by c). ReLU is
positively homogeneous, so B and every scaled B compute the same function (the script checks
it). The paths A -> B and A -> scaled B are then measured under the ``naive`` and ``wsa`` modes
with the built-in ``digits-mlp`` evaluator (test split), and every barrier definition is printed.

Run (small; a few seconds on a laptop CPU):

    .venv/bin/python bench/barrier_experiment.py --width 64 --epochs 20 --scales 2,4,8 --alphas 0:1:21

The numbers are printed as measured; nothing is asserted. Note that ``wsa`` changes the
endpoints (A's and B's layers are mapped onto the pair's fused scope, and biases are not layers
by default), so its ``loss_0``/``loss_1`` differ from naive's; ``loss_barrier_inputs`` measures
every mode against the line between the *input* checkpoints' losses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from wsa_cli.fusion.pipeline import ScopeOptions
from wsa_cli.interpolate import ModeOptions, parse_alphas, resolve_evaluator, run_interpolation
from wsa_cli.interpolate.report import mode_sparklines
from wsa_cli.scope.selection import LayerSelector
from wsa_cli.tasks import evaluate, train_model

COLUMNS = ("loss_0", "loss_1", "loss_barrier", "loss_barrier_alpha", "loss_barrier_mean", "loss_barrier_mid",
           "loss_barrier_inputs", "acc_barrier", "acc_barrier_alpha")  # fmt: skip


def scale_hidden(state: dict[str, torch.Tensor], c: float) -> dict[str, torch.Tensor]:
    """fc1 (weight, bias) * c and fc2.weight / c: the same function for a ReLU MLP."""
    out = dict(state)
    out["fc1.weight"] = state["fc1.weight"] * c
    out["fc1.bias"] = state["fc1.bias"] * c
    out["fc2.weight"] = state["fc2.weight"] / c
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--width", type=int, default=64, help="hidden width of digits-mlp")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", default="0,1", help="two training seeds, A,B")
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    ap.add_argument("--scales", default="4", help="comma-separated function-preserving factors c applied to B's fc1/fc2")
    ap.add_argument("--alphas", default="0:1:21")
    ap.add_argument("--rescale", default="affine", help="wsa rescale mode: affine, std, none")
    ap.add_argument("--include-bias", action="store_true", help="also align biases (--include '*.bias')")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    seed_a, seed_b = (int(s) for s in args.seeds.split(","))
    scales = [float(s) for s in args.scales.split(",")]
    t0 = time.perf_counter()
    a, _ = train_model("digits-mlp", seed=seed_a, epochs=args.epochs, width=args.width, optimizer=args.optimizer, device=args.device)
    b, _ = train_model("digits-mlp", seed=seed_b, epochs=args.epochs, width=args.width, optimizer=args.optimizer, device=args.device)
    print(f"# digits-mlp width {args.width}, {args.epochs} epochs ({args.optimizer}), seeds {seed_a},{seed_b}; "
          f"trained in {time.perf_counter() - t0:.1f} s; wsa: rescale={args.rescale}, biases aligned: {args.include_bias}")  # fmt: skip
    pairs: dict[str, dict[str, torch.Tensor]] = {"B": b}
    eb = evaluate("digits-mlp", b, args.device)
    for c in scales:
        scaled = scale_hidden(b, c)
        es = evaluate("digits-mlp", scaled, args.device)
        print(f"# B scaled by c={c:g}: loss {es['loss']:.6f} (B: {eb['loss']:.6f}), accuracy {es['accuracy']:.4f} "
              f"(B: {eb['accuracy']:.4f}); function preserved: {abs(eb['loss'] - es['loss']) < 1e-4}")
        pairs[f"B*{c:g}"] = scaled

    selector = LayerSelector(include=("*.bias",) if args.include_bias else ())
    opts = ModeOptions(scope=ScopeOptions(rescale=args.rescale, selector=selector), device=torch.device(args.device))
    evaluator = resolve_evaluator("digits-mlp")
    alphas = parse_alphas(args.alphas)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path_a = Path(tmp) / "A.safetensors"
        save_file({k: v.contiguous() for k, v in a.items()}, str(path_a))
        for name, sd in pairs.items():
            path = Path(tmp) / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
            t = time.perf_counter()
            results[name] = run_interpolation(path_a, path, alphas=alphas, modes=["naive", "wsa"], options=opts, evaluator=evaluator)
            print(f"# A -> {name}: {len(alphas)} alphas x 2 modes in {time.perf_counter() - t:.2f} s", file=sys.stderr)

    print()
    print(f"{'pair':<10}{'mode':<7}" + "".join(f"{c:>21}" for c in COLUMNS) + "  loss vs alpha")
    for name, res in results.items():
        sparks = mode_sparklines(res)
        for curve in res.modes:
            s = curve.summary
            cells = "".join(f"{'-' if s[c] is None else format(s[c], '.4f'):>21}" for c in COLUMNS)
            print(f"{'A->' + name:<10}{curve.mode:<7}{cells}  {sparks[curve.mode]}")
    print()
    print("loss along the path: " + ", ".join(f"{m} A->{n}" for n in results for m in ("naive", "wsa")))
    for i, alpha in enumerate(alphas):
        vals = [curve.rows[i]["loss"] for res in results.values() for curve in res.modes]
        print(f"  {alpha:5.3f} " + " ".join(f"{v:9.4f}" for v in vals))
    print()
    base = results["B"].modes[0].summary["loss_barrier"]
    for name, res in results.items():
        naive, wsa = (m.summary["loss_barrier"] for m in res.modes)
        print(f"A->{name:<7} loss_barrier  naive {naive:.4f} ({naive / base:.2f}x the unscaled naive)   "
              f"wsa {wsa:.4f} ({wsa / base:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
