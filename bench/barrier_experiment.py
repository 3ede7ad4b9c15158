"""Barrier experiment: does a function-preserving rescale raise the naive barrier, and does wsa undo it?

Trains two digits-mlp classifiers from different seeds (contract C1 ``train_model``), then builds
a third checkpoint: model B with its first hidden layer scaled up by ``c`` (``fc1.weight`` and
``fc1.bias`` times c) and the next layer scaled down (``fc2.weight`` divided by c). ReLU is
positively homogeneous, so B and the scaled B compute the same function (the script checks it).
The interpolation A -> B and A -> scaled B is then measured under the ``naive`` and ``wsa`` modes
with the built-in ``digits-mlp`` evaluator, and every barrier definition is printed side by side.

Run (small, ~20 s on a laptop CPU):

    .venv/bin/python bench/barrier_experiment.py --width 64 --epochs 20 --scale 4 --alphas 0:1:21

The numbers are printed as measured; nothing is asserted.
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


def scale_hidden(state: dict[str, torch.Tensor], c: float) -> dict[str, torch.Tensor]:
    """fc1 (weight, bias) * c and fc2.weight / c: the same function for a ReLU MLP."""
    out = dict(state)
    out["fc1.weight"] = state["fc1.weight"] * c
    out["fc1.bias"] = state["fc1.bias"] * c
    out["fc2.weight"] = state["fc2.weight"] / c
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64, help="hidden width of digits-mlp")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", default="0,1", help="two training seeds, A,B")
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    ap.add_argument("--scale", type=float, default=4.0, help="function-preserving factor c applied to B's fc1/fc2")
    ap.add_argument("--alphas", default="0:1:21")
    ap.add_argument("--rescale", default="affine", help="wsa rescale mode: affine, std, none")
    ap.add_argument("--include-bias", action="store_true", help="also align biases (--include '*.bias')")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    seed_a, seed_b = (int(s) for s in args.seeds.split(","))
    t0 = time.perf_counter()
    a, _ = train_model("digits-mlp", seed=seed_a, epochs=args.epochs, width=args.width, optimizer=args.optimizer, device=args.device)
    b, _ = train_model("digits-mlp", seed=seed_b, epochs=args.epochs, width=args.width, optimizer=args.optimizer, device=args.device)
    b_scaled = scale_hidden(b, args.scale)
    t_train = time.perf_counter() - t0

    # the rescale must not change what B computes
    eb, ebs = evaluate("digits-mlp", b, args.device), evaluate("digits-mlp", b_scaled, args.device)
    print(f"# digits-mlp width {args.width}, {args.epochs} epochs ({args.optimizer}), seeds {seed_a},{seed_b}; "
          f"trained in {t_train:.1f} s")
    print(f"# B: loss {eb['loss']:.6f} acc {eb['accuracy']:.4f};  B scaled by c={args.scale:g}: "
          f"loss {ebs['loss']:.6f} acc {ebs['accuracy']:.4f}  (function preserved: {abs(eb['loss'] - ebs['loss']) < 1e-4})")

    selector = LayerSelector(include=("*.bias",) if args.include_bias else ())
    opts = ModeOptions(scope=ScopeOptions(rescale=args.rescale, selector=selector), device=torch.device(args.device))
    evaluator = resolve_evaluator("digits-mlp")
    alphas = parse_alphas(args.alphas)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, sd in (("A", a), ("B", b), ("B_scaled", b_scaled)):
            paths[name] = Path(tmp) / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in sd.items()}, str(paths[name]))
        for pair in ("B", "B_scaled"):
            t = time.perf_counter()
            results[pair] = run_interpolation(paths["A"], paths[pair], alphas=alphas, modes=["naive", "wsa"], options=opts, evaluator=evaluator)
            print(f"# A -> {pair}: {len(alphas)} alphas x 2 modes in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    cols = ("loss_0", "loss_1", "loss_barrier", "loss_barrier_alpha", "loss_barrier_mean", "loss_barrier_mid",
            "loss_barrier_inputs", "acc_barrier", "acc_barrier_alpha")
    print()
    print(f"{'pair':<12}{'mode':<7}" + "".join(f"{c:>20}" for c in cols) + "  loss vs alpha")
    for pair, res in results.items():
        sparks = mode_sparklines(res)
        for curve in res.modes:
            s = curve.summary
            cells = "".join(f"{'-' if s[c] is None else format(s[c], '.4f'):>20}" for c in cols)
            print(f"{'A->' + pair:<12}{curve.mode:<7}{cells}  {sparks[curve.mode]}")
    print()
    print("loss along the path (alpha: naive A->B, wsa A->B, naive A->B_scaled, wsa A->B_scaled)")
    for i, alpha in enumerate(alphas):
        vals = [res.modes[j].rows[i]["loss"] for res in results.values() for j in range(2)]
        print(f"  {alpha:5.3f} " + " ".join(f"{v:10.4f}" for v in vals))
    naive_b = results["B"].modes[0].summary["loss_barrier"]
    naive_s = results["B_scaled"].modes[0].summary["loss_barrier"]
    wsa_s = results["B_scaled"].modes[1].summary["loss_barrier"]
    print()
    print(f"naive barrier A->B {naive_b:.4f}; A->B_scaled {naive_s:.4f} (ratio {naive_s / naive_b:.2f}); "
          f"wsa A->B_scaled {wsa_s:.4f} (ratio to naive A->B {wsa_s / naive_b:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
